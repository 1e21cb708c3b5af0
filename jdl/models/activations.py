"""Activations by name, plus PReLU, whose negative slope is learned."""

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp


class PReLU(nn.Module):
    """Leaky ReLU with one learned slope per feature (He et al. 2015)."""

    init_slope: float = 0.25

    @nn.compact
    def __call__(self, x):
        slope = self.param("slope", nn.initializers.constant(self.init_slope), (x.shape[-1],))
        return jnp.where(x >= 0, x, slope * x)


ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "tanh": nn.tanh,
    "sigmoid": nn.sigmoid,
    "leaky_relu": nn.leaky_relu,
    "gelu": nn.gelu,
}


def activation_layer(name: str) -> Callable:
    """A callable layer for `name`; `prelu` returns a fresh module with its own slope."""
    if name == "prelu":
        return PReLU()
    if name not in ACTIVATIONS:
        valid = sorted([*ACTIVATIONS, "prelu"])
        raise ValueError(f"Unknown activation {name!r}; valid activations: {valid}")
    return ACTIVATIONS[name]
