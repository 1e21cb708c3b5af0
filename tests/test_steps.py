"""Classification steps: eager == jit, learning, masking, the sigmoid path, a golden step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl.models import build_model
from jdl.optimizers import make_optimizer
from jdl.state import create_train_state
from jdl.steps import eval_step, summarize, train_step
from jdl.steps.metrics import merge

SGD = {"optimizer": "sgd", "learning_rate": 0.1}
# Compiled once per input shape; tests that are not about eager execution use it for speed.
jitted_train_step = jax.jit(train_step, static_argnames="label_smoothing")
jitted_eval_step = jax.jit(eval_step)


def make_state(model_config, num_outputs, input_shape, optimizer=SGD, seed=0):
    model = build_model(model_config, num_outputs)
    return create_train_state(
        model, make_optimizer(optimizer, total_steps=100), input_shape, jax.random.key(seed)
    )


def small_mlp_state():
    """A 5-8-3 MLP classifier trained with plain SGD."""
    return make_state({"name": "mlp", "hidden_sizes": [8]}, 3, (5,))


def linear_state(kernel):
    """A state whose model is one bias-free linear map: logits = inputs @ kernel."""
    kernel = jnp.asarray(kernel, jnp.float32)
    state = make_state({"name": "mlp", "hidden_sizes": []}, kernel.shape[1], kernel.shape[:1])
    return state.replace(params={"Dense_0": {"kernel": kernel, "bias": jnp.zeros(kernel.shape[1])}})


def random_batch(num_examples, input_shape, num_classes, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(num_examples, *input_shape)).astype(np.float32),
        "label": rng.integers(0, num_classes, size=num_examples),
    }


def gaussian_blobs(num_examples, seed) -> dict:
    """Two well-separated classes in 4-D: centres at -1.5 and +1.5 on every axis."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=num_examples)
    centres = np.where(labels[:, None] == 1, 1.5, -1.5)
    features = centres + rng.normal(size=(num_examples, 4))
    return {"features": features.astype(np.float32), "label": labels}


def run_steps(step, state, batch, num_steps, rng=None):
    rng = jax.random.key(42) if rng is None else rng
    for _ in range(num_steps):
        state, metrics = step(state, batch, rng)
    return state, metrics


def assert_trees_close(actual, expected, **tolerance):
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **tolerance), actual, expected)


def test_eager_and_jitted_train_steps_give_the_same_parameters():
    # Dropout and batch norm both in: the dropout key and the running statistics must agree.
    model_config = {"name": "mlp", "hidden_sizes": [16], "dropout_rate": 0.3, "batch_norm": True}
    state = make_state(model_config, 3, (5,))
    batch = random_batch(8, (5,), 3)
    eager, eager_metrics = run_steps(train_step, state, batch, num_steps=3)
    jitted, jitted_metrics = run_steps(jitted_train_step, state, batch, num_steps=3)
    assert int(jitted.step) == int(eager.step) == 3
    assert_trees_close(
        (jitted.params, jitted.batch_stats, jitted_metrics),
        (eager.params, eager.batch_stats, eager_metrics),
        rtol=1e-5,
        atol=1e-6,
    )


def test_dropout_mask_is_fresh_at_every_step_and_reproducible_for_a_given_step():
    # A learning rate of 0 keeps the parameters, so only the step counter changes.
    state = make_state(
        {"name": "mlp", "hidden_sizes": [32], "dropout_rate": 0.5},
        3,
        (5,),
        optimizer={"optimizer": "sgd", "learning_rate": 0.0},
    )
    batch, rng = random_batch(8, (5,), 3), jax.random.key(0)
    next_state, first = jitted_train_step(state, batch, rng)
    _, rerun = jitted_train_step(state, batch, rng)
    _, second = jitted_train_step(next_state, batch, rng)
    assert float(rerun["loss"]) == float(first["loss"])
    assert float(second["loss"]) != float(first["loss"])


def test_train_step_updates_batch_statistics():
    state = make_state({"name": "mlp", "hidden_sizes": [4], "batch_norm": True}, 2, (3,))
    new_state, _ = jitted_train_step(state, random_batch(8, (3,), 2), jax.random.key(0))
    assert not np.allclose(
        new_state.batch_stats["BatchNorm_0"]["mean"], state.batch_stats["BatchNorm_0"]["mean"]
    )


@pytest.mark.parametrize("num_outputs", [1, 2], ids=["sigmoid", "softmax"])
def test_training_separates_gaussian_blobs(num_outputs):
    state = make_state({"name": "mlp", "hidden_sizes": [8]}, num_outputs, (4,))
    train, test = gaussian_blobs(64, seed=0), gaussian_blobs(256, seed=1)
    initial_loss = summarize(jitted_eval_step(state, test))["loss"]
    state, _ = run_steps(jitted_train_step, state, train, num_steps=200)
    final = summarize(jitted_eval_step(state, test))
    assert final["loss"] < 0.5 * initial_loss
    assert final["accuracy"] > 0.95


@pytest.mark.parametrize(
    ("kernel", "inputs", "labels", "expected_correct", "expected_loss"),
    [
        # One logit equal to the input: class 1 iff it is positive; loss softplus(-/+ logit).
        pytest.param(
            [[1.0]],
            [[2.0], [-1.0], [0.5], [-3.0]],
            [1, 1, 0, 0],
            2.0,
            np.log1p(np.exp(-2.0))
            + np.log1p(np.exp(1.0))
            + np.log1p(np.exp(0.5))
            + np.log1p(np.exp(-3.0)),
            id="sigmoid",
        ),
        # Logits equal to the inputs: class is the arg-max; loss -log softmax[label].
        pytest.param(
            np.eye(3),
            [[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 3.0, 1.0]],
            [0, 1, 1],
            2.0,
            -np.log(np.exp(2.0) / (np.exp(2.0) + 2.0))
            - np.log(1.0 / (2.0 + np.e))
            - np.log(np.exp(3.0) / (1.0 + np.exp(3.0) + np.e)),
            id="softmax",
        ),
    ],
)
def test_eval_step_sums_loss_and_correct_predictions(
    kernel, inputs, labels, expected_correct, expected_loss
):
    batch = {"features": np.array(inputs, np.float32), "label": np.array(labels)}
    metrics = jitted_eval_step(linear_state(kernel), batch)
    assert float(metrics["count"]) == len(labels)
    assert float(metrics["accuracy"]) == expected_correct
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)


def pad_with_garbage(batch, num_padding) -> dict:
    """The batch plus `num_padding` huge, wrongly labelled examples that `mask` switches off."""
    num_real = len(batch["label"])
    return {
        "image": np.concatenate([batch["image"], np.full_like(batch["image"][:num_padding], 1e4)]),
        "label": np.concatenate([batch["label"], np.full(num_padding, 2)]),
        "mask": np.concatenate([np.ones(num_real), np.zeros(num_padding)]).astype(np.float32),
    }


def test_masked_examples_do_not_affect_eval_metrics():
    state = small_mlp_state()
    batch = random_batch(6, (5,), 3)
    padded = jitted_eval_step(state, pad_with_garbage(batch, 4))
    assert float(padded["count"]) == 6
    assert summarize(padded) == pytest.approx(summarize(jitted_eval_step(state, batch)), rel=1e-6)


def test_masked_examples_do_not_affect_the_update():
    state = small_mlp_state()
    batch = random_batch(6, (5,), 3)
    rng = jax.random.key(0)
    unpadded, unpadded_metrics = jitted_train_step(state, batch, rng)
    padded, padded_metrics = jitted_train_step(state, pad_with_garbage(batch, 4), rng)
    assert_trees_close(padded.params, unpadded.params, rtol=1e-5, atol=1e-7)
    assert summarize(padded_metrics) == pytest.approx(summarize(unpadded_metrics), rel=1e-6)


def test_merged_metrics_of_two_halves_summarize_like_the_whole_batch():
    state = small_mlp_state()
    batch = random_batch(10, (5,), 3)
    halves = [jax.tree.map(lambda x, i=i: x[i * 5 : (i + 1) * 5], batch) for i in range(2)]
    merged = merge(
        merge(None, jitted_eval_step(state, halves[0])), jitted_eval_step(state, halves[1])
    )
    assert float(merged["count"]) == 10
    assert summarize(merged) == pytest.approx(summarize(jitted_eval_step(state, batch)), rel=1e-5)


def test_summarize_divides_sums_by_count_and_drops_count():
    sums = {"loss": jnp.array(3.0), "accuracy": jnp.array(4.0), "count": jnp.array(8.0)}
    assert summarize(sums) == {"loss": 0.375, "accuracy": 0.5}


def test_batch_without_an_input_key_raises_listing_the_keys():
    state = small_mlp_state()
    with pytest.raises(KeyError, match="'image', 'features'"):
        jitted_eval_step(state, {"pixels": np.zeros((2, 5)), "label": np.zeros(2, int)})


def test_label_smoothing_changes_the_update_but_reports_the_plain_loss():
    state = small_mlp_state()
    batch, rng = random_batch(8, (5,), 3), jax.random.key(0)
    plain, plain_metrics = jitted_train_step(state, batch, rng)
    smoothed, smoothed_metrics = jitted_train_step(state, batch, rng, label_smoothing=0.2)
    # Reported losses are the unsmoothed cross-entropy, comparable with eval losses.
    np.testing.assert_allclose(smoothed_metrics["loss"], plain_metrics["loss"], rtol=1e-6)
    assert not np.allclose(smoothed.params["Dense_0"]["kernel"], plain.params["Dense_0"]["kernel"])


def mlp_loss_and_grads_in_numpy(params, x, labels, weights):
    """Forward and backward of a one-hidden-layer ReLU MLP with weighted softmax cross-entropy."""
    w1, b1 = params["Dense_0"]["kernel"], params["Dense_0"]["bias"]
    w2, b2 = params["Dense_1"]["kernel"], params["Dense_1"]["bias"]
    h_pre = x @ w1 + b1
    h = np.maximum(h_pre, 0.0)
    logits = h @ w2 + b2
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    nll = -np.log(probs[np.arange(len(labels)), labels])
    total = weights.sum()
    d_logits = (probs - np.eye(probs.shape[1])[labels]) * weights[:, None] / total
    d_h_pre = (d_logits @ w2.T) * (h_pre > 0)
    grads = {
        "Dense_0": {"kernel": x.T @ d_h_pre, "bias": d_h_pre.sum(axis=0)},
        "Dense_1": {"kernel": h.T @ d_logits, "bias": d_logits.sum(axis=0)},
    }
    return (nll * weights).sum() / total, grads


def test_two_momentum_steps_match_numpy():
    """An 8-16-3 MLP, a batch with 4 of 16 examples masked out, two heavy-ball steps
    (trace <- g + 0.9 trace, params <- params - 0.05 trace), against NumPy in float64."""
    lr, momentum = 0.05, 0.9
    optimizer = {"optimizer": "momentum", "learning_rate": lr, "momentum": momentum}
    state = make_state({"name": "mlp", "hidden_sizes": [16]}, 3, (8,), optimizer, seed=7)
    batch = random_batch(16, (8,), 3, seed=3)
    batch["mask"] = (np.arange(16) < 12).astype(np.float32)
    params = jax.tree.map(lambda p: np.asarray(p, np.float64), state.params)
    args = (batch["image"].astype(np.float64), batch["label"], batch["mask"].astype(np.float64))
    trace = jax.tree.map(np.zeros_like, params)
    for step in range(2):
        loss, grads = mlp_loss_and_grads_in_numpy(params, *args)
        new_state, metrics = jitted_train_step(state, batch, jax.random.key(0))
        assert summarize(metrics)["loss"] == pytest.approx(loss, rel=1e-5)
        # The first step's update is -lr * gradient: jdl's gradients, read back.
        if step == 0:
            step_grads = jax.tree.map(
                lambda new, old: (old - new) / lr, new_state.params, state.params
            )
            assert_trees_close(step_grads, grads, rtol=1e-4, atol=1e-6)
        trace = jax.tree.map(lambda g, t: g + momentum * t, grads, trace)
        params = jax.tree.map(lambda p, t: p - lr * t, params, trace)
        assert_trees_close(new_state.params, params, rtol=1e-5, atol=1e-6)
        state = new_state
