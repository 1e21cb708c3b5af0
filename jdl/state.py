"""The training state: one pytree that a step consumes and returns."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """Step counter, parameters, optimizer state and batch-norm statistics ({} if none).

    `model` and `tx` are static: they define the computation, not its values,
    so a checkpoint holds only the four array fields. So is `input_shape`, one example's
    shape that the parameters were built for (None: unknown), which the steps check.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any
    model: nn.Module = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    input_shape: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

    def apply_gradients(self, grads, batch_stats) -> "TrainState":
        """One optimizer update; also stores the batch statistics of the forward pass."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            opt_state=opt_state,
            batch_stats=batch_stats,
        )

    @property
    def variables(self) -> dict:
        """The Flax variable collections for `model.apply`."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}


# On CPU, LLVM's default -O3 spends about a second on the initialisers' code (truncated
# normals: about 0.35 s each for the documents' CNN) of a program that runs once; -O2
# compiles it 3x faster to the same values, bit for bit.
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 2}


def _initial_values(
    model: nn.Module, tx: optax.GradientTransformation, input_shape: Sequence[int], rng: jax.Array
) -> tuple[dict, optax.OptState]:
    """`model.init` on a dummy batch of one example of `input_shape`, and `tx.init` of its
    parameters: one compiled program, not one per initialiser and optimizer-state shape."""

    def init(key):
        variables = model.init(key, jnp.zeros((1, *input_shape)), train=False)
        return variables, tx.init(variables["params"])

    options = _INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(init, compiler_options=options)(rng)


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, input_shape: Sequence[int], rng: jax.Array
) -> TrainState:
    """Initialises `model` on a dummy batch of one example of `input_shape`."""
    variables, opt_state = _initial_values(model, tx, input_shape, rng)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        opt_state=opt_state,
        batch_stats=variables.get("batch_stats", {}),
        model=model,
        tx=tx,
        input_shape=tuple(input_shape),
    )


def count_params(params) -> int:
    """Number of scalar parameters in a pytree."""
    return sum(x.size for x in jax.tree_util.tree_leaves(params))


@struct.dataclass
class GANState:
    """A generator and a discriminator, each a TrainState with its own optimizer.

    `step` counts GAN iterations (one or more discriminator updates, then one generator
    update); each network's own `step` counts its updates. `latent_dim` is static.
    """

    step: jax.Array
    generator: TrainState
    discriminator: TrainState
    latent_dim: int = struct.field(pytree_node=False)

    @property
    def params(self) -> dict:
        """Both networks' parameters, for counting and inspection."""
        return {"generator": self.generator.params, "discriminator": self.discriminator.params}


def create_gan_state(
    generator: nn.Module,
    discriminator: nn.Module,
    g_tx: optax.GradientTransformation,
    d_tx: optax.GradientTransformation,
    latent_dim: int,
    image_shape: Sequence[int],
    rng: jax.Array,
) -> GANState:
    """Both networks initialised from independent keys of `rng`."""
    g_rng, d_rng = jax.random.split(rng)
    return GANState(
        step=jnp.zeros((), jnp.int32),
        generator=create_train_state(generator, g_tx, (latent_dim,), g_rng),
        discriminator=create_train_state(discriminator, d_tx, image_shape, d_rng),
        latent_dim=latent_dim,
    )
