"""Pure train and eval steps for a GAN held in a `GANState`.

A batch is a dict with `image` in [0, 1] (jdl's image range; mapped to the generator's
tanh range [-1, 1] here) and, for evaluation, an optional float `mask`. Under pmap
(`axis_name` given) gradients are averaged, batch norm and metrics are combined across
devices, and each device takes its slice of one global draw of latent noise, so that
jit, sharded and pmap see the same noise and give the same parameters.
"""

import jax
import jax.numpy as jnp
from jax import lax

from jdl import losses
from jdl.state import GANState, TrainState
from jdl.steps.classification import bind_axis

EVAL_NOISE_SEED = 1234  # eval fakes: noise fixed by step and batch, so an eval is reproducible


def to_tanh_range(images: jax.Array) -> jax.Array:
    """[0, 1] images -> [-1, 1]."""
    return images * 2.0 - 1.0


def from_tanh_range(images: jax.Array) -> jax.Array:
    """[-1, 1] generator output -> [0, 1] images."""
    return (images + 1.0) / 2.0


def latent_noise(rng: jax.Array, batch_size: int, latent_dim: int, axis_name=None) -> jax.Array:
    """Standard normal z [B, latent] for this device's `batch_size` examples.

    Under a mapped axis every device draws the global batch's noise and keeps its slice,
    so the examples get the same noise as in one unmapped global batch.
    """
    if axis_name is None:
        return jax.random.normal(rng, (batch_size, latent_dim))
    num_devices = lax.axis_size(axis_name)
    z = jax.random.normal(rng, (num_devices * batch_size, latent_dim))
    return lax.dynamic_slice_in_dim(z, lax.axis_index(axis_name) * batch_size, batch_size)


def generate(state: TrainState, z: jax.Array, *, train: bool, axis_name=None):
    """Generator images in [-1, 1] and (in training) its updated batch statistics."""
    model = bind_axis(state.model, axis_name)
    if not train:
        return model.apply(state.variables, z, train=False), state.batch_stats
    images, updates = model.apply(state.variables, z, train=True, mutable=["batch_stats"])
    return images, updates.get("batch_stats", {})


def discriminate(state: TrainState, params, batch_stats, images, *, train: bool, axis_name=None):
    """Discriminator logits [B] and its batch statistics after this forward pass."""
    model = bind_axis(state.model, axis_name)
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    if not train:
        return model.apply(variables, images, train=False), batch_stats
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return logits, updates.get("batch_stats", {})


def gan_metrics(d_loss_B, g_loss_B, real_logits_B, fake_logits_B, weights_B) -> dict:
    """Summable metrics: losses, D(x) and D(G(z)) as probabilities, and the count."""
    return {
        "d_loss": jnp.sum(d_loss_B * weights_B),
        "g_loss": jnp.sum(g_loss_B * weights_B),
        "d_real": jnp.sum(jax.nn.sigmoid(real_logits_B) * weights_B),
        "d_fake": jnp.sum(jax.nn.sigmoid(fake_logits_B) * weights_B),
        "count": jnp.sum(weights_B),
    }


def _pmean(tree, axis_name):
    return tree if axis_name is None else lax.pmean(tree, axis_name)


def discriminator_update(
    state: GANState, real, rng, *, loss: str, real_label: float, axis_name=None
) -> tuple[GANState, jax.Array, jax.Array, jax.Array]:
    """One discriminator step on real images and fresh fakes.

    Returns the new state, the per-example loss and the real and fake logits. The
    generator's batch statistics from drawing the fakes are not kept: its own step owns them.
    """
    gen, disc = state.generator, state.discriminator
    z = latent_noise(rng, real.shape[0], state.latent_dim, axis_name)
    fake, _ = generate(gen, z, train=True, axis_name=axis_name)
    fake = lax.stop_gradient(fake)

    def loss_fn(params):
        # Real and fake batches pass separately (as in DCGAN), each normalised by itself.
        real_logits, stats = discriminate(
            disc, params, disc.batch_stats, real, train=True, axis_name=axis_name
        )
        fake_logits, stats = discriminate(
            disc, params, stats, fake, train=True, axis_name=axis_name
        )
        loss_B = losses.gan_discriminator_loss(real_logits, fake_logits, loss, real_label)
        return jnp.mean(loss_B), (loss_B, real_logits, fake_logits, stats)

    grads, (loss_B, real_logits, fake_logits, stats) = jax.grad(loss_fn, has_aux=True)(disc.params)
    disc = disc.apply_gradients(_pmean(grads, axis_name), stats)
    return state.replace(discriminator=disc), loss_B, real_logits, fake_logits


def generator_update(
    state: GANState, batch_size: int, rng, *, loss: str, axis_name=None
) -> tuple[GANState, jax.Array, jax.Array]:
    """One generator step against the current discriminator; returns the loss and D(G(z)) logits.

    The discriminator runs in training mode (batch statistics of the fake batch, as in its
    own step) but keeps its parameters and running statistics.
    """
    gen, disc = state.generator, state.discriminator
    z = latent_noise(rng, batch_size, state.latent_dim, axis_name)

    def loss_fn(params):
        fake, g_stats = generate(gen.replace(params=params), z, train=True, axis_name=axis_name)
        fake_logits, _ = discriminate(
            disc, disc.params, disc.batch_stats, fake, train=True, axis_name=axis_name
        )
        loss_B = losses.gan_generator_loss(fake_logits, loss)
        return jnp.mean(loss_B), (loss_B, fake_logits, g_stats)

    grads, (loss_B, fake_logits, g_stats) = jax.grad(loss_fn, has_aux=True)(gen.params)
    gen = gen.apply_gradients(_pmean(grads, axis_name), g_stats)
    return state.replace(generator=gen), loss_B, fake_logits


def gan_train_step(
    state: GANState,
    batch: dict,
    rng: jax.Array,
    *,
    axis_name: str | None = None,
    loss: str = "non_saturating",
    label_smoothing: float = 0.0,
    d_steps: int = 1,
) -> tuple[GANState, dict]:
    """`d_steps` discriminator updates (same real batch, fresh fakes), then a generator update.

    `label_smoothing` s > 0 trains D towards 1 - s on real images (one-sided smoothing,
    Salimans et al., 2016). Metrics: the last D update's loss, D(x) and D(G(z)) (the fakes
    D was trained on), and the generator's loss.
    """
    if d_steps < 1:
        raise ValueError(f"d_steps must be at least 1; got {d_steps}")
    rng = jax.random.fold_in(rng, state.step)
    real = to_tanh_range(batch["image"])
    for i in range(d_steps):
        state, d_loss_B, real_logits, fake_logits = discriminator_update(
            state,
            real,
            jax.random.fold_in(rng, i),
            loss=loss,
            real_label=1.0 - label_smoothing,
            axis_name=axis_name,
        )
    state, g_loss_B, _ = generator_update(
        state, real.shape[0], jax.random.fold_in(rng, d_steps), loss=loss, axis_name=axis_name
    )
    weights_B = jnp.ones(real.shape[0], jnp.float32)
    metrics = gan_metrics(d_loss_B, g_loss_B, real_logits, fake_logits, weights_B)
    if axis_name is not None:
        metrics = lax.psum(metrics, axis_name)
    return state.replace(step=state.step + 1), metrics


def _pixel_digest(images: jax.Array, axis_name=None) -> jax.Array:
    """A uint32 fingerprint of the global batch: the sum of its pixels as 8-bit integers,
    wrapping. Integer sums are exact in any order, so jit, sharded and pmap agree."""
    digest = jnp.sum(jnp.round(images * 255.0).astype(jnp.uint32), dtype=jnp.uint32)
    return digest if axis_name is None else lax.psum(digest, axis_name)


def gan_eval_step(
    state: GANState, batch: dict, *, axis_name: str | None = None, loss: str = "non_saturating"
) -> dict:
    """D's losses and probabilities on the real eval images and on as many fresh fakes.

    Both networks run in inference mode (running batch statistics). The fakes come from a
    key fixed by the state's step and the batch's pixels: each eval batch gets fakes of its
    own, and evaluating a state twice gives the same numbers.
    """
    real = to_tanh_range(batch["image"])
    weights_B = batch.get("mask", jnp.ones(real.shape[0], jnp.float32)).astype(jnp.float32)
    rng = jax.random.fold_in(jax.random.key(EVAL_NOISE_SEED), state.step)
    rng = jax.random.fold_in(rng, _pixel_digest(batch["image"], axis_name))
    z = latent_noise(rng, real.shape[0], state.latent_dim, axis_name)
    fake, _ = generate(state.generator, z, train=False)
    disc = state.discriminator
    real_logits, _ = discriminate(disc, disc.params, disc.batch_stats, real, train=False)
    fake_logits, _ = discriminate(disc, disc.params, disc.batch_stats, fake, train=False)
    metrics = gan_metrics(
        losses.gan_discriminator_loss(real_logits, fake_logits, loss),
        losses.gan_generator_loss(fake_logits, loss),
        real_logits,
        fake_logits,
        weights_B,
    )
    if axis_name is not None:
        metrics = lax.psum(metrics, axis_name)
    return metrics
