"""Microbatched steps: the slices' summed gradient is the whole batch's update."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from loop_helpers import small_config

from jdl import train_and_evaluate
from jdl.config import validate_config
from jdl.models import build_model
from jdl.optimizers import make_optimizer
from jdl.state import create_train_state
from jdl.steps import train_step
from jdl.steps.distillation import distillation_train_step
from jdl.steps.microbatch import split, unsplit

BATCH = 12
NUM_CLASSES = 4
IMAGE_SHAPE = (10, 10, 1)


def cnn_state(batch_norm=False, seed=0):
    model = build_model({"name": "cnn", "widths": [4, 8], "batch_norm": batch_norm}, NUM_CLASSES)
    tx = make_optimizer({"optimizer": "adam", "learning_rate": 0.01}, total_steps=10)
    return create_train_state(model, tx, IMAGE_SHAPE, jax.random.key(seed))


def masked_batch(seed=0) -> dict:
    """Random images; the last three examples are padding (mask 0)."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(BATCH, *IMAGE_SHAPE)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, size=BATCH),
        "mask": np.array([1.0] * (BATCH - 3) + [0.0] * 3, np.float32),
    }


def train(step, state, num_steps=3):
    batch = masked_batch()
    compiled = jax.jit(step)
    for _ in range(num_steps):
        state, metrics = compiled(state, batch, jax.random.key(1))
    return jax.device_get((state.params, metrics))


def assert_trees_close(actual, expected):
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6), actual, expected
    )


def test_split_deals_examples_round_robin_and_unsplit_restores_the_order():
    x = jnp.arange(12).reshape(12, 1)
    slices = split({"x": x}, 3)["x"]
    np.testing.assert_array_equal(slices[1, :, 0], [1, 4, 7, 10])
    np.testing.assert_array_equal(unsplit(slices), x)


@pytest.mark.parametrize("microbatches", [2, 3])
def test_microbatches_give_the_whole_batch_update_and_metrics(microbatches):
    # The padding falls unevenly (two of three examples in one slice of two), so slices
    # normalised by their own weight would give a different update.
    step = functools.partial(train_step, label_smoothing=0.1)
    whole_params, whole_metrics = train(step, cnn_state())
    params, metrics = train(functools.partial(step, microbatches=microbatches), cnn_state())
    assert_trees_close(params, whole_params)
    assert_trees_close(metrics, whole_metrics)
    assert float(metrics["count"]) == BATCH - 3


def test_microbatched_distillation_matches_the_whole_batch():
    teacher_state = cnn_state(seed=3)
    step = functools.partial(
        distillation_train_step,
        teacher=teacher_state.model,
        teacher_variables=teacher_state.variables,
        temperature=2.0,
        alpha=0.5,
    )
    whole_params, _ = train(step, cnn_state())
    params, _ = train(functools.partial(step, microbatches=4), cnn_state())
    assert_trees_close(params, whole_params)


def test_microbatches_reject_batch_norm_and_uneven_slices_before_any_work():
    batch = masked_batch()
    with pytest.raises(ValueError, match="without batch norm"):
        train_step(cnn_state(batch_norm=True), batch, jax.random.key(0), microbatches=2)
    with pytest.raises(ValueError, match="does not split into 5 equal"):
        train_step(cnn_state(), batch, jax.random.key(0), microbatches=5)
    with pytest.raises(ValueError, match="microbatches must be >= 1"):
        train_step(cnn_state(), batch, jax.random.key(0), microbatches=0)


def test_config_rejects_microbatches_that_do_not_divide_the_batch():
    with pytest.raises(ValueError, match="does not split into microbatches=3"):
        validate_config({"batch_size": 128, "microbatches": 3})
    with pytest.raises(ValueError, match="microbatches must be >= 1"):
        validate_config({"microbatches": 0})


def test_a_run_with_batch_norm_and_microbatches_is_refused_before_it_starts(tmp_path):
    config = small_config(microbatches=2)
    config.model.batch_norm = True
    with pytest.raises(ValueError, match="without batch norm"):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()
