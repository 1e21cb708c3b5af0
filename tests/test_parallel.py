"""Compile modes on 8 fake CPU devices: jit == sharded == pmap, K-step and epoch calls
equal their per-step loops, evaluation counts every example once, bad setups are rejected."""

import functools

import jax
import numpy as np
import pytest

from jdl.models import build_model
from jdl.optimizers import make_optimizer
from jdl.parallel import MODES, Strategy
from jdl.state import create_train_state
from jdl.steps import eval_step, summarize, train_step

GLOBAL_BATCH = 16
NUM_CLASSES = 3
NUM_STEPS = 3
# Dropout-free, so every mode draws no randomness and must agree to float rounding.
MODEL_CONFIGS = {
    "mlp": ({"name": "mlp", "hidden_sizes": [16]}, (6,)),
    "batch_norm_cnn": ({"name": "cnn", "widths": [4], "batch_norm": True}, (6, 6, 1)),
}
NUM_EPOCHS = 2
EPOCH_SEED = 9
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def initial_state(model_name: str):
    model_config, input_shape = MODEL_CONFIGS[model_name]
    tx = make_optimizer({"optimizer": "momentum", "learning_rate": 0.1}, total_steps=100)
    return create_train_state(
        build_model(model_config, NUM_CLASSES), tx, input_shape, jax.random.key(0)
    )


def host_batches(model_name: str, num_batches: int, batch_size: int = GLOBAL_BATCH) -> list:
    _, input_shape = MODEL_CONFIGS[model_name]
    rng = np.random.default_rng(1)
    return [
        {
            "image": rng.normal(size=(batch_size, *input_shape)).astype(np.float32),
            "label": rng.integers(0, NUM_CLASSES, size=batch_size),
        }
        for _ in range(num_batches)
    ]


def stack(batches: list) -> dict:
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def sum_metrics(metrics_list: list) -> dict:
    return jax.tree.map(lambda *xs: sum(xs), *metrics_list)


def assert_trees_close(actual, expected):
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **TOLERANCE), actual, expected)


def host_result(state, metrics) -> dict:
    return jax.device_get(
        {"params": state.params, "batch_stats": state.batch_stats, "metrics": metrics}
    )


def train_per_step(
    mode: str, model_name: str, batches: list, rng: jax.Array, train_fn=train_step
) -> dict:
    """Params, batch statistics and summed metrics after one single-step call per batch."""
    strategy = Strategy(mode)
    step = strategy.compile_train(train_fn)
    state = strategy.put_replicated(initial_state(model_name))
    rng = strategy.put_replicated(rng)
    all_metrics = []
    for batch in batches:
        state, metrics = step(state, strategy.put_batch(batch), rng)
        all_metrics.append(metrics)
    return host_result(state, sum_metrics(all_metrics))


@functools.cache
def per_step_training(mode: str, model_name: str) -> dict:
    return train_per_step(mode, model_name, host_batches(model_name, NUM_STEPS), jax.random.key(5))


@pytest.mark.parametrize("model_name", sorted(MODEL_CONFIGS))
@pytest.mark.parametrize("mode", ["sharded", "pmap"])
def test_data_parallel_modes_train_like_jit(mode, model_name):
    result, reference = per_step_training(mode, model_name), per_step_training("jit", model_name)
    # Under pmap the batch statistics are averaged across devices, as for one big batch.
    assert_trees_close(result, reference)
    assert reference["metrics"]["count"] == NUM_STEPS * GLOBAL_BATCH


@pytest.mark.parametrize("mode", MODES)
def test_microbatched_steps_train_like_whole_batches_in_every_mode(mode):
    # Under pmap each device splits its 2 examples; sharded and jit split the global 16.
    microbatched = functools.partial(train_step, microbatches=2)
    batches = host_batches("mlp", NUM_STEPS)
    result = train_per_step(mode, "mlp", batches, jax.random.key(5), microbatched)
    assert_trees_close(result, per_step_training("jit", "mlp"))


@pytest.mark.parametrize("model_name", sorted(MODEL_CONFIGS))
def test_reference_training_moves_every_parameter_and_statistic(model_name):
    initial = initial_state(model_name)
    trained = per_step_training("jit", model_name)
    assert bool(trained["batch_stats"]) == ("batch_norm" in model_name)
    before = jax.tree.leaves((initial.params, initial.batch_stats))
    after = jax.tree.leaves((trained["params"], trained["batch_stats"]))
    for old, new in zip(before, after, strict=True):
        assert not np.allclose(old, new)


@pytest.mark.parametrize("mode", MODES)
def test_k_steps_in_one_call_equal_k_single_steps(mode):
    strategy = Strategy(mode)
    steps = strategy.compile_train_steps(train_step)
    state = strategy.put_replicated(initial_state("mlp"))
    batches = strategy.put_batch(stack(host_batches("mlp", NUM_STEPS)), stacked=True)
    state, metrics = steps(state, batches, strategy.put_replicated(jax.random.key(5)))
    assert int(state.step) == NUM_STEPS
    assert_trees_close(host_result(state, metrics), per_step_training("jit", "mlp"))


@pytest.mark.parametrize("mode", MODES)
def test_a_k_step_call_runs_only_its_first_num_steps_batches(mode):
    # An epoch's tail: NUM_STEPS batches padded to K = NUM_STEPS + 2 with NaN images, which
    # would poison the parameters if they were trained on.
    strategy = Strategy(mode)
    steps = strategy.compile_train_steps(train_step)
    (poison,) = host_batches("mlp", 1)
    poison = {**poison, "image": np.full_like(poison["image"], np.nan)}
    padded = stack([*host_batches("mlp", NUM_STEPS), poison, poison])
    state = strategy.put_replicated(initial_state("mlp"))
    rng = strategy.put_replicated(jax.random.key(5))
    state, metrics = steps(state, strategy.put_batch(padded, True), rng, num_steps=NUM_STEPS)
    assert int(state.step) == NUM_STEPS
    assert_trees_close(host_result(state, metrics), per_step_training("jit", "mlp"))


def epoch_data(num_examples: int = 40) -> dict:
    """Resident data for epochs of two global batches of 16; the last 8 examples are dropped."""
    (batch,) = host_batches("mlp", 1, batch_size=num_examples)
    return batch


@functools.cache
def per_step_epochs() -> dict:
    """NUM_EPOCHS epochs as single jit steps over the batches that `epoch_steps` draws.

    It splits its key into a shuffle key and a step key, and shuffles epoch e with the
    permutation drawn from fold_in(shuffle key, e); the last partial batch is dropped.
    """
    data = epoch_data()
    num_examples = len(data["label"])
    shuffle_rng, step_rng = jax.random.split(jax.random.key(EPOCH_SEED))
    batches = []
    for epoch in range(NUM_EPOCHS):
        order = jax.random.permutation(jax.random.fold_in(shuffle_rng, epoch), num_examples)
        for start in range(0, num_examples - GLOBAL_BATCH + 1, GLOBAL_BATCH):
            indices = np.asarray(order[start : start + GLOBAL_BATCH])
            batches.append(jax.tree.map(lambda x, indices=indices: x[indices], data))
    return train_per_step("jit", "mlp", batches, step_rng)


@pytest.mark.parametrize("mode", MODES)
def test_epoch_in_one_call_equals_the_per_step_loop_over_its_shuffle(mode):
    strategy = Strategy(mode)
    run_epoch = strategy.compile_train_epoch(train_step, batch_size=GLOBAL_BATCH)
    state = strategy.put_replicated(initial_state("mlp"))
    data = strategy.put_replicated(epoch_data())
    rng = strategy.put_replicated(jax.random.key(EPOCH_SEED))
    epoch_metrics = []
    # Several epochs: each must draw its own permutation (epoch = step // steps_per_epoch).
    for _ in range(NUM_EPOCHS):
        state, metrics = run_epoch(state, data, rng)
        epoch_metrics.append(metrics)
    assert int(state.step) == 2 * NUM_EPOCHS
    assert [float(m["count"]) for m in epoch_metrics] == [2.0 * GLOBAL_BATCH] * NUM_EPOCHS
    assert_trees_close(host_result(state, sum_metrics(epoch_metrics)), per_step_epochs())


def padded_eval_batch(num_real: int) -> dict:
    """A global batch of 16 whose last examples are padding (mask 0)."""
    (batch,) = host_batches("mlp", 1)
    mask = (np.arange(GLOBAL_BATCH) < num_real).astype(np.float32)
    return {**batch, "mask": mask}


@pytest.mark.parametrize("mode", MODES)
def test_eval_counts_every_real_example_once(mode):
    strategy = Strategy(mode)
    state = initial_state("mlp")
    batch = padded_eval_batch(num_real=11)
    metrics = strategy.compile_eval(eval_step)(
        strategy.put_replicated(state), strategy.put_batch(batch)
    )
    assert float(metrics["count"]) == 11
    expected = summarize(eval_step(state, batch))
    assert summarize(metrics) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_train_call_donates_the_old_state(mode):
    strategy = Strategy(mode)
    step = strategy.compile_train(train_step)
    old_state = strategy.put_replicated(initial_state("mlp"))
    (batch,) = host_batches("mlp", 1)
    step(old_state, strategy.put_batch(batch), strategy.put_replicated(jax.random.key(0)))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old_state.params))


def test_unknown_mode_raises_listing_valid_modes():
    with pytest.raises(ValueError, match=r"valid modes: \['jit', 'sharded', 'pmap'\]"):
        Strategy("tpu")


@pytest.mark.parametrize("mode", ["sharded", "pmap"])
def test_global_batch_must_split_evenly_over_devices(mode):
    strategy = Strategy(mode)
    strategy.check_batch_size(GLOBAL_BATCH)
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        strategy.check_batch_size(12)
    with pytest.raises(ValueError, match="not divisible"):
        strategy.compile_train_epoch(train_step, batch_size=12)


def test_jit_mode_uses_one_device_and_accepts_any_batch_size():
    strategy = Strategy("jit")
    assert strategy.num_devices == 1
    strategy.check_batch_size(7)
