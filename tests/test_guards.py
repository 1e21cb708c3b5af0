"""Nothing trains silently wrong: bad labels, shapes, metric names and config keys are named."""

import dataclasses
import math

import jax
import numpy as np
import pytest
from loop_helpers import small_config

from experiments import adding_problem, digits_dcgan
from jdl import train_and_evaluate
from jdl.config import validate_config
from jdl.data import from_arrays, load_dataset
from jdl.data.embedded import load_embedded
from jdl.metrics import metric_mode
from jdl.models import build_model
from jdl.optimizers import make_optimizer
from jdl.state import create_train_state
from jdl.steps import train_step
from jdl.tasks import make_task

X = np.random.default_rng(0).random((64, 8, 8, 1), np.float32)
Y = np.arange(64) % 4


def one_step(images, labels, num_outputs=4):
    """Metrics of one train step of a small MLP built for 8x8x1 images."""
    model = build_model({"name": "mlp", "hidden_sizes": (8,)}, num_outputs)
    tx = make_optimizer({"optimizer": "sgd", "learning_rate": 0.1}, 10)
    state = create_train_state(model, tx, (8, 8, 1), jax.random.key(0))
    step = jax.jit(train_step)  # one compilation is quicker than op-by-op dispatch
    _, metrics = step(state, {"image": images, "label": labels}, jax.random.key(1))
    return metrics


@pytest.mark.parametrize(
    ("num_outputs", "bad_label"), [(4, 4), (4, -1), (1, 2)], ids=["past", "negative", "binary"]
)
def test_a_label_outside_the_classes_makes_the_step_loss_nan(num_outputs, bad_label):
    labels = np.array([0, 1, bad_label, 1])
    metrics = one_step(X[:4], labels, num_outputs)
    assert math.isnan(float(metrics["loss"]))
    assert math.isfinite(float(one_step(X[:4], labels % 2, num_outputs)["loss"]))


def test_an_input_shape_the_model_was_not_built_for_is_named_with_both_shapes():
    with pytest.raises(
        ValueError, match=r"shape \(8, 8, 3\) but the model was built for \(8, 8, 1\)"
    ):
        one_step(np.zeros((2, 8, 8, 3), np.float32), Y[:2])


def tiny_run(workdir, dataset=None, **overrides):
    """Two steps of a one-layer MLP on 64 feature vectors: the loop at its cheapest."""
    dataset = dataset or features_dataset()
    config = small_config(model={"name": "mlp", "hidden_sizes": (8,)}, num_steps=2, **overrides)
    return train_and_evaluate(config, workdir, dataset=dataset)


def features_dataset():
    x = X.reshape(len(X), -1)
    return from_arrays(x, Y, x, Y, batch_size=16, eval_batch_size=16, seed=0)


def test_the_loop_names_a_label_outside_the_dataset_classes(tmp_path):
    dataset = features_dataset()
    dataset.info = dataclasses.replace(dataset.info, num_classes=3)  # a dataset that lies
    with pytest.raises(ValueError, match=r"Label 3 .* outside \[0, 3\): the model has 3 classes"):
        tiny_run(tmp_path, dataset)


def test_a_best_metric_evaluation_does_not_produce_is_an_error_listing_those_it_does(tmp_path):
    with pytest.raises(ValueError, match=r"'eval/acuracy' is not produced.*'eval/accuracy'"):
        tiny_run(tmp_path, best_metric="eval/acuracy", best_mode="max")
    with pytest.raises(ValueError, match=r"'eval/fid' is not produced.*'eval/loss'"):
        tiny_run(tmp_path, best_metric="eval/fid")  # a metric jdl knows, not this task's
    assert not (tmp_path / "checkpoints").exists()  # refused before training, not after it


@pytest.mark.parametrize(
    ("metric", "mode"),
    [
        ("eval/perplexity", "min"),
        ("eval/nll", "min"),
        ("eval/mae", "min"),
        ("eval/fid", "min"),
        ("eval/accuracy", "max"),
        ("eval/inception_score", "max"),
    ],
)
def test_the_best_metric_direction_comes_from_the_table(metric, mode):
    assert metric_mode(metric) == mode
    assert metric_mode(metric, "auto") == mode


def test_an_explicit_best_mode_wins_and_an_unknown_name_asks_for_one():
    assert metric_mode("eval/loss_ratio", "max") == "max"
    assert metric_mode("eval/accuracy", "min") == "min"
    with pytest.raises(ValueError, match="set best_mode to 'min' or 'max'"):
        metric_mode("eval/loss_ratio")
    with pytest.raises(ValueError, match="set best_mode"):
        validate_config(small_config(best_metric="eval/loss_ratio"))


def gan_config(**overrides):
    """The digits DCGAN at its narrowest, without the FID classifier (so not ranked by FID)."""
    c = digits_dcgan.get_config()
    c.model.generator.widths = (8, 8, 8)
    c.model.discriminator.widths = (8, 8, 8)
    c.task.latent_dim = 4
    c.task.classifier_steps = 0
    c.best_metric = "eval/g_loss"
    for key, value in overrides.items():
        c[key] = value
    return validate_config(c)


def digits():
    return load_embedded("digits", batch_size=64, eval_batch_size=128, seed=0)


def test_the_gan_optimizer_honours_weight_decay_and_clipping():
    from jdl.tasks.gan import gan_optimizer

    params = {
        "Dense_0": {"kernel": np.full((2, 2), 3.0, np.float32), "bias": np.ones(2, np.float32)}
    }
    config = gan_config(optimizer="adamw", weight_decay=0.1, learning_rate=1.0)
    tx = gan_optimizer(config, num_updates=10, beta1=0.5)
    zero_grads = jax.tree_util.tree_map(np.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    # A zero gradient leaves only the decoupled decay, -lr * weight_decay * kernel; none on biases.
    np.testing.assert_allclose(updates["Dense_0"]["kernel"], np.full((2, 2), -0.3), rtol=1e-6)
    np.testing.assert_allclose(updates["Dense_0"]["bias"], np.zeros(2))
    grads = jax.tree_util.tree_map(lambda p: np.full_like(p, 1e6), params)

    def largest_first_update(grad_clip_norm):
        tx = gan_optimizer(gan_config(grad_clip_norm=grad_clip_norm), num_updates=10, beta1=0.5)
        updates, _ = tx.update(grads, tx.init(params), params)
        return max(float(np.abs(u).max()) for u in jax.tree_util.tree_leaves(updates))

    # Adam's first step moves by the learning rate (2e-4) whatever the gradient's size, unless
    # clipping shrinks the gradient towards Adam's eps (1e-8).
    assert largest_first_update(0.0) == pytest.approx(2e-4, rel=1e-3)
    assert largest_first_update(1e-9) < 0.1 * 2e-4


def test_a_key_the_task_does_not_read_is_an_error_naming_key_and_task():
    with pytest.raises(ValueError, match=r"optimizer='sgd' has no effect on the 'gan' task"):
        make_task(gan_config(optimizer="sgd"), digits())
    with pytest.raises(ValueError, match=r"Unknown field\(s\) \['label_smoothing'\]"):
        make_task(gan_config(task={**gan_config().task, "label_smoothing": 0.1}), digits())
    config = validate_config(adding_problem.get_config())
    config.label_smoothing = 0.1
    dataset = load_dataset(
        "adding_problem",
        batch_size=8,
        eval_batch_size=8,
        seed=0,
        seq_len=5,
        num_train=16,
        num_eval=8,
    )
    with pytest.raises(ValueError, match=r"label_smoothing=0.1 has no effect on the 'regression'"):
        make_task(config, dataset)


def test_augment_shift_on_inputs_that_are_not_images_is_a_config_error():
    with pytest.raises(ValueError, match=r"augment_shift=2 translates images.*'features'"):
        make_task(validate_config(small_config(augment_shift=2)), features_dataset())
