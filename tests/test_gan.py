"""DCGAN modules, GAN losses and steps: sizes, exact parameter counts, learning, compile modes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl import losses
from jdl.data.embedded import digits_splits
from jdl.models.gan import Discriminator, Generator
from jdl.parallel import Strategy
from jdl.state import count_params, create_gan_state
from jdl.steps.gan import discriminator_update, gan_eval_step, gan_train_step

LATENT = 16
SMALL_G = (32, 16, 8)
SMALL_D = (8, 16, 32)
DIGIT_SHAPE = (8, 8, 1)
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
NUM_STEPS = 2  # per compile mode
BATCH = 16
D_STEPS = 2


@functools.cache
def small_state(d_batch_norm: bool = True):
    """Small networks for 8x8 digits, on the host (so that donating a device copy is safe).

    Batch norm in both networks: under pmap its statistics must span all devices.
    """
    tx = optax.adam(2e-3, b1=0.5)
    state = create_gan_state(
        Generator(image_shape=DIGIT_SHAPE, widths=SMALL_G),
        Discriminator(widths=SMALL_D, batch_norm=d_batch_norm),
        tx,
        tx,
        LATENT,
        DIGIT_SHAPE,
        jax.random.key(0),
    )
    return jax.device_get(state)


@functools.cache
def digit_images() -> np.ndarray:
    return digits_splits()[0]


def digit_batch(index: int, batch_size: int = 32) -> dict:
    images = digit_images()
    start = (index * batch_size) % (len(images) - batch_size)
    return {"image": images[start : start + batch_size]}


def full_size_counts(image_shape):
    """Parameter counts of the default networks, from shapes only (nothing is computed)."""
    latent = 100
    generator, discriminator = Generator(image_shape=image_shape), Discriminator()
    g = jax.eval_shape(generator.init, jax.random.key(0), jnp.zeros((1, latent)))
    d = jax.eval_shape(discriminator.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
    images = jax.eval_shape(generator.apply, g, jnp.zeros((2, latent)))
    logits = jax.eval_shape(discriminator.apply, d, jnp.zeros((2, *image_shape)))
    assert images.shape == (2, *image_shape) and logits.shape == (2,)
    return count_params(g["params"]), count_params(d["params"])


def expected_counts(image_shape, latent=100):
    """The DCGAN arithmetic: 5x5 kernels, bias-free layers before batch norm (scale + bias)."""
    h, w, c = image_shape
    first = (h // 4) * (w // 4) * 256
    final_map = -(-h // 8) * -(-w // 8)  # after three stride-2 SAME convolutions
    generator = [
        latent * first + 2 * first,  # Dense to the first map, batch norm
        25 * 256 * 128 + 2 * 128,  # transposed conv 128, batch norm
        25 * 128 * 64 + 2 * 64,  # transposed conv 64, batch norm
        25 * 64 * c + c,  # transposed conv to the image, with bias
    ]
    discriminator = [
        25 * c * 64 + 64,  # convolutions with biases (no batch norm by default)
        25 * 64 * 128 + 128,
        25 * 128 * 256 + 256,
        final_map * 256 + 1,  # the logit
    ]
    return sum(generator), sum(discriminator)


@pytest.mark.parametrize(
    "image_shape, counts",
    [((28, 28, 1), (2_305_473, 1_030_145)), ((32, 32, 3), (2_700_355, 1_033_345)),
     ((8, 8, 1), (1_130_433, 1_026_305))],
)  # fmt: skip
def test_exact_parameter_counts_for_each_image_size(image_shape, counts):
    assert full_size_counts(image_shape) == counts == expected_counts(image_shape)


def test_generator_rejects_sizes_it_cannot_reach():
    generator = Generator(image_shape=(30, 30, 1))
    with pytest.raises(ValueError, match="divisible by 4; got 30x30"):
        generator.init(jax.random.key(0), jnp.zeros((1, 4)))


def test_generator_images_lie_in_tanh_range_and_gan_params_hold_both_networks():
    state = small_state()
    assert set(state.params) == {"generator", "discriminator"}
    z = jax.random.normal(jax.random.key(1), (5, LATENT)) * 10
    images = state.generator.model.apply(state.generator.variables, z)
    assert images.shape == (5, *DIGIT_SHAPE)
    assert float(jnp.max(jnp.abs(images))) <= 1.0


def test_gan_losses_are_stable_and_follow_their_definitions():
    big = jnp.array([1e4, -1e4, 0.0])
    d = losses.gan_discriminator_loss(big, -big, "non_saturating")
    np.testing.assert_allclose(d, [0.0, 2e4, 2 * np.log(2)], rtol=1e-6)
    g = losses.gan_generator_loss(jnp.array([-1e4, 0.0]), "non_saturating")
    np.testing.assert_allclose(g, [1e4, np.log(2)], rtol=1e-6)
    # One-sided smoothing: the best real logit is log(0.9 / 0.1), not infinity.
    logits = jnp.linspace(-5, 5, 10001)
    smoothed = losses.gan_discriminator_loss(
        logits, jnp.full_like(logits, -50.0), "non_saturating", 0.9
    )
    assert float(logits[jnp.argmin(smoothed)]) == pytest.approx(np.log(9), abs=1e-3)
    hinge = losses.gan_discriminator_loss(jnp.array([2.0, 0.5]), jnp.array([-3.0, 0.0]), "hinge")
    np.testing.assert_allclose(hinge, [0.0, 1.5])
    np.testing.assert_allclose(losses.gan_generator_loss(jnp.array([2.0]), "hinge"), [-2.0])
    with pytest.raises(ValueError, match="valid losses"):
        losses.gan_generator_loss(big, "wasserstein")


def test_training_changes_both_networks_and_reports_its_metrics():
    trained, initial = train_in_mode("jit"), small_state()
    for net in ("generator", "discriminator"):
        old = jax.tree.leaves((initial.params[net], getattr(initial, net).batch_stats))
        new = jax.tree.leaves(trained["variables"][net])
        assert all(not np.allclose(a, b) for a, b in zip(old, new, strict=True)), net
    metrics = trained["metrics"]
    assert set(metrics) == {"d_loss", "g_loss", "d_real", "d_fake", "count"}
    assert float(metrics["count"]) == NUM_STEPS * BATCH


def test_d_steps_must_be_positive():
    with pytest.raises(ValueError, match="d_steps"):
        gan_train_step(small_state(), digit_batch(0), jax.random.key(3), d_steps=0)


def test_with_the_generator_frozen_the_discriminator_loss_falls():
    update = jax.jit(functools.partial(discriminator_update, loss="non_saturating", real_label=1.0))
    state = small_state(d_batch_norm=False)  # (with it, see jdl/models/gan.py)
    losses_per_step = []
    for i in range(15):
        real = digit_batch(i)["image"] * 2 - 1
        state, loss_B, _, _ = update(state, real, jax.random.key(i))
        losses_per_step.append(float(jnp.mean(loss_B)))
    jax.tree.map(
        np.testing.assert_array_equal, state.generator, small_state(d_batch_norm=False).generator
    )
    assert np.mean(losses_per_step[-3:]) < 0.5 * losses_per_step[0]


def test_both_losses_stay_finite_for_50_steps_on_digits_with_two_d_steps_per_g_step():
    strategy, step = compiled_step("jit")
    state, rng = strategy.put_replicated(small_state()), jax.random.key(0)
    for i in range(50):
        state, metrics = step(state, digit_batch(i, batch_size=BATCH), rng)
        assert np.isfinite(float(metrics["d_loss"])) and np.isfinite(float(metrics["g_loss"]))
    steps = (int(state.step), int(state.generator.step), int(state.discriminator.step))
    assert steps == (50, 50, 50 * D_STEPS)


def test_eval_step_is_deterministic_and_skips_padding():
    state = small_state()
    batch = digit_batch(1, batch_size=16)
    mask = (np.arange(16) < 10).astype(np.float32)
    metrics = jax.jit(gan_eval_step)(state, {**batch, "mask": mask})
    again = jax.jit(gan_eval_step)(state, {**batch, "mask": mask})
    assert float(metrics["count"]) == 10
    assert jax.tree.map(float, metrics) == jax.tree.map(float, again)
    real_only = jax.jit(gan_eval_step)(state, {"image": batch["image"][:10]})
    assert float(real_only["d_real"]) == pytest.approx(float(metrics["d_real"]), rel=1e-5)
    # d_real sums D's probabilities on the 10 real images, scaled to [-1, 1].
    disc = state.discriminator
    logits = disc.model.apply(disc.variables, batch["image"][:10] * 2 - 1, train=False)
    expected = np.sum(1 / (1 + np.exp(-np.asarray(logits, np.float64))))
    assert float(metrics["d_real"]) == pytest.approx(expected, rel=1e-5)


def test_each_eval_batch_is_scored_on_fakes_of_its_own():
    state = small_state()
    first, second = digit_batch(1, batch_size=16), digit_batch(2, batch_size=16)
    fakes_first = jax.jit(gan_eval_step)(state, first)["d_fake"]
    fakes_second = jax.jit(gan_eval_step)(state, second)["d_fake"]
    # The same state scores both, so D(G(z)) can differ only through the noise z.
    assert abs(float(fakes_first) - float(fakes_second)) > 1e-4


@functools.cache
def compiled_step(mode: str):
    """The strategy and its compiled train step: two D steps per G step, label smoothing."""
    strategy = Strategy(mode)
    return strategy, strategy.compile_train(gan_train_step, d_steps=D_STEPS, label_smoothing=0.1)


@functools.cache
def train_in_mode(mode: str) -> dict:
    strategy, step = compiled_step(mode)
    state = strategy.put_replicated(small_state())
    rng = strategy.put_replicated(jax.random.key(4))
    totals = []
    for i in range(NUM_STEPS):
        state, metrics = step(state, strategy.put_batch(digit_batch(i, batch_size=BATCH)), rng)
        totals.append(metrics)
    variables = {
        net: (getattr(state, net).params, getattr(state, net).batch_stats)
        for net in ("generator", "discriminator")
    }
    steps = (state.step, state.generator.step, state.discriminator.step)
    return jax.device_get(
        {
            "variables": variables,
            "metrics": jax.tree.map(lambda *xs: sum(xs), *totals),
            "steps": steps,
        }
    )


@pytest.mark.parametrize("mode", ["sharded", "pmap"])
def test_data_parallel_modes_train_like_jit(mode):
    reference = train_in_mode("jit")
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, **TOLERANCE), train_in_mode(mode), reference
    )


@pytest.mark.parametrize("mode", ["sharded", "pmap"])
def test_eval_in_data_parallel_modes_counts_real_examples_once(mode):
    strategy = Strategy(mode)
    state = small_state()
    batch = {**digit_batch(2, batch_size=16), "mask": (np.arange(16) < 11).astype(np.float32)}
    metrics = strategy.compile_eval(gan_eval_step)(
        strategy.put_replicated(state), strategy.put_batch(batch)
    )
    expected = jax.jit(gan_eval_step)(state, batch)
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, **TOLERANCE),
        jax.device_get(metrics),
        jax.device_get(expected),
    )


def test_k_steps_in_one_call_equal_k_single_steps():
    strategy = Strategy("jit")
    steps = strategy.compile_train_steps(gan_train_step, d_steps=D_STEPS, label_smoothing=0.1)
    batches = [digit_batch(i, batch_size=BATCH) for i in range(NUM_STEPS)]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *batches)
    state, metrics = steps(
        strategy.put_replicated(small_state()),
        strategy.put_batch(stacked, stacked=True),
        strategy.put_replicated(jax.random.key(4)),
    )
    reference = train_in_mode("jit")
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, **TOLERANCE),
        jax.device_get(metrics),
        reference["metrics"],
    )
    variables = {
        net: (getattr(state, net).params, getattr(state, net).batch_stats)
        for net in ("generator", "discriminator")
    }
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, **TOLERANCE),
        jax.device_get(variables),
        reference["variables"],
    )
