"""Optimizers and schedules: each optimizer descends, each schedule follows its formula,
weight decay skips biases and scales, clipping bounds the update, bad names are rejected."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl.optimizers import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule

TARGET = {"w": jnp.array([[1.0, -2.0, 3.0], [0.5, -1.0, 2.0]]), "b": jnp.array([-1.0, 1.0, 2.0])}


def quadratic(params) -> jax.Array:
    return sum(
        jnp.sum((p - t) ** 2)
        for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(TARGET), strict=True)
    )


def assert_trees_close(actual, expected, rtol=1e-6):
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol), actual, expected)


def apply_updates(tx: optax.GradientTransformation, params, grads_sequence):
    """Params after one optimizer update per gradient pytree of `grads_sequence`."""
    opt_state = tx.init(params)
    for grads in grads_sequence:
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params


def minimise(tx: optax.GradientTransformation, params, num_steps: int):
    def body(carry, _):
        params, opt_state = carry
        updates, opt_state = tx.update(jax.grad(quadratic)(params), opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=num_steps)
    return params


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_reduces_a_quadratic_loss(name):
    start = jax.tree.map(jnp.zeros_like, TARGET)
    tx = make_optimizer({"optimizer": name, "learning_rate": 0.1}, total_steps=100)
    # Adagrad, the slowest here, ends near 0.11 of the starting loss; the others near 0.
    assert quadratic(minimise(tx, start, num_steps=100)) < 0.2 * quadratic(start)


def test_sgd_step_is_params_minus_learning_rate_times_gradient():
    params = {"w": jnp.array([[1.0, -2.0], [3.0, 4.0]]), "b": jnp.array([0.5, -0.5])}
    grads = {"w": jnp.array([[0.3, 0.1], [-2.0, 5.0]]), "b": jnp.array([1.0, -4.0])}
    tx = make_optimizer({"optimizer": "sgd", "learning_rate": 0.1}, total_steps=10)
    assert_trees_close(
        apply_updates(tx, params, [grads]), jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    )


def test_momentum_adds_the_decayed_previous_gradient():
    params = {"w": jnp.zeros((2,))}
    g1, g2 = {"w": jnp.array([1.0, -1.0])}, {"w": jnp.array([2.0, 3.0])}
    tx = make_optimizer(
        {"optimizer": "momentum", "learning_rate": 0.1, "momentum": 0.5}, total_steps=10
    )
    # Step 1 moves by -0.1 g1; step 2 by -0.1 (g2 + 0.5 g1).
    expected = -0.1 * g1["w"] - 0.1 * (g2["w"] + 0.5 * g1["w"])
    np.testing.assert_allclose(apply_updates(tx, params, [g1, g2])["w"], expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("config", "total_steps", "expected_lr_by_step"),
    [
        pytest.param({"schedule": "constant"}, 100, {0: 0.1, 50: 0.1, 100: 0.1}, id="constant"),
        # 0.1 * (1 + cos(pi * t / 100)) / 2
        pytest.param({"schedule": "cosine"}, 100, {0: 0.1, 50: 0.05, 100: 0.0}, id="cosine"),
        # Linear 0 -> 0.1 over 10 steps, then cosine over the remaining 100 steps.
        pytest.param(
            {"schedule": "warmup_cosine", "warmup_steps": 10},
            110,
            {0: 0.0, 5: 0.05, 10: 0.1, 60: 0.05, 110: 0.0},
            id="warmup_cosine",
        ),
        # 0.1 * 0.5 ** (t / 10)
        pytest.param(
            {"schedule": "exponential", "decay_every": 10, "decay_rate": 0.5},
            100,
            {0: 0.1, 5: 0.1 * 0.5**0.5, 10: 0.05, 20: 0.025},
            id="exponential",
        ),
        # 0.1 * 0.5 ** floor(t / 10): a staircase.
        pytest.param(
            {"schedule": "step", "decay_every": 10, "decay_rate": 0.5},
            100,
            {0: 0.1, 9: 0.1, 10: 0.05, 19: 0.05, 20: 0.025},
            id="step",
        ),
    ],
)
def test_schedule_gives_the_expected_learning_rate(config, total_steps, expected_lr_by_step):
    schedule = make_schedule({"learning_rate": 0.1, **config}, total_steps)
    steps = list(expected_lr_by_step)
    np.testing.assert_allclose(
        [float(schedule(step)) for step in steps],
        list(expected_lr_by_step.values()),
        rtol=1e-5,
        atol=1e-7,
    )


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_listed_schedule_is_built(name):
    # The unknown-schedule error offers SCHEDULES as the valid names: each must work.
    config = {"learning_rate": 0.1, "schedule": name, "decay_every": 10, "decay_rate": 0.5}
    assert float(make_schedule(config, total_steps=100)(0)) >= 0.0


def adamw_in_numpy(params, grads_sequence, lr, weight_decay, b1=0.9, b2=0.999, eps=1e-8):
    """Loshchilov & Hutter's AdamW in float64: the moments see only the gradient; the
    decay lr * weight_decay * param is added outside them, to kernels (ndim > 1) only."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for t, grads in enumerate(grads_sequence, start=1):
        for k, p in params.items():
            g = np.asarray(grads[k], np.float64)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g**2
            direction = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            decay = weight_decay * p if p.ndim > 1 else 0.0
            params[k] = p - lr * (direction + decay)
    return params


def test_adamw_takes_the_decoupled_decay_outside_the_adam_moments():
    params = {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.array([1.0, -1.0])}
    grads_sequence = [
        {"kernel": jnp.array([[0.3, -0.1], [2.0, 0.0]]), "bias": jnp.array([1.0, -4.0])},
        {"kernel": jnp.array([[-0.2, 0.5], [1.0, 1.0]]), "bias": jnp.array([0.5, 2.0])},
    ]
    config = {"optimizer": "adamw", "learning_rate": 0.1, "weight_decay": 0.5}
    actual = apply_updates(make_optimizer(config, total_steps=10), params, grads_sequence)
    expected = adamw_in_numpy(params, grads_sequence, lr=0.1, weight_decay=0.5)
    assert_trees_close(actual, expected, rtol=1e-5)


def test_optimizer_steps_with_the_scheduled_learning_rate():
    config = {
        "optimizer": "sgd",
        "learning_rate": 0.1,
        "schedule": "step",
        "decay_every": 2,
        "decay_rate": 0.5,
    }
    tx = make_optimizer(config, total_steps=10)
    unit_grads = [{"w": jnp.ones(())}] * 5
    # Learning rates 0.1, 0.1, 0.05, 0.05, 0.025 applied to a gradient of 1.
    np.testing.assert_allclose(
        apply_updates(tx, {"w": jnp.zeros(())}, unit_grads)["w"], -0.325, rtol=1e-6
    )


@pytest.mark.parametrize("name", ["sgd", "momentum", "adamw"])
def test_weight_decay_shrinks_kernels_but_not_biases_or_batch_norm_scales(name):
    params = {
        "Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))},
        "BatchNorm_0": {"scale": jnp.ones((2,)), "bias": jnp.ones((2,))},
    }
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    config = {"optimizer": name, "learning_rate": 0.1, "weight_decay": 0.5}
    new = apply_updates(make_optimizer(config, total_steps=10), params, [zero_grads])
    # Decoupled decay with zero gradients: kernel <- kernel - lr * wd * kernel = 0.95.
    np.testing.assert_allclose(new["Dense_0"]["kernel"], 0.95, rtol=1e-6)
    for unchanged in (new["Dense_0"]["bias"], *new["BatchNorm_0"].values()):
        np.testing.assert_array_equal(unchanged, 1.0)


@pytest.mark.parametrize(
    ("grad_norm", "expected_update_norm"), [(10.0, 1.0), (0.5, 0.5)], ids=["clipped", "kept"]
)
def test_clipping_bounds_the_global_update_norm(grad_norm, expected_update_norm):
    direction = {"w": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}  # norm 5
    grads = jax.tree.map(lambda g: g * grad_norm / 5.0, direction)
    config = {"optimizer": "sgd", "learning_rate": 1.0, "grad_clip_norm": 1.0}
    update = apply_updates(
        make_optimizer(config, total_steps=10), jax.tree.map(jnp.zeros_like, grads), [grads]
    )
    np.testing.assert_allclose(optax.global_norm(update), expected_update_norm, rtol=1e-6)
    # Clipping rescales; it never turns the update.
    assert_trees_close(update, jax.tree.map(lambda g: -g * expected_update_norm / grad_norm, grads))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"optimizer": "lamb"},
            "valid optimizers: ['adagrad', 'adam', 'adamw', 'momentum', "
            "'nesterov', 'rmsprop', 'sgd']",
        ),
        (
            {"optimizer": "sgd", "schedule": "linear"},
            "valid schedules: ['constant', 'cosine', 'warmup_cosine', 'exponential', 'step']",
        ),
    ],
    ids=["optimizer", "schedule"],
)
def test_unknown_optimizer_or_schedule_raises_listing_valid_names(config, message):
    with pytest.raises(ValueError, match="Unknown") as error:
        make_optimizer({"learning_rate": 0.1, **config}, total_steps=10)
    assert message in str(error.value)
