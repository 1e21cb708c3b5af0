"""Convolutional classifier; the default is the documents' MNIST network."""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl.models.activations import activation_layer


def _pool_windows(x_BxHxWxC: jax.Array) -> list[jax.Array]:
    """The four corners of every 2x2 window, row-major, each B x H/2 x W/2 x C (edges dropped)."""
    h2, w2 = x_BxHxWxC.shape[1] // 2 * 2, x_BxHxWxC.shape[2] // 2 * 2
    return [x_BxHxWxC[:, i:h2:2, j:w2:2] for i in (0, 1) for j in (0, 1)]


@jax.custom_vjp
def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, odd edges dropped: `nn.max_pool` (VALID) with a cheap gradient.

    Forward and gradient equal `nn.max_pool`'s (a tie sends the gradient to the first
    maximum, row-major, as XLA's `select_and_scatter` does), but the gradient is four
    masks and one interleave, all elementwise: XLA:CPU's `select_and_scatter` costs more
    than both convolutions of the documents' CNN, and the automatic gradient of a
    reshape + max costs ~10 % of its training step more than this one (benchmarks/README.md).
    """
    return functools.reduce(jnp.maximum, _pool_windows(x_BxHxWxC))


def _max_pool_fwd(x_BxHxWxC):
    y = max_pool_2x2(x_BxHxWxC)
    return y, (x_BxHxWxC, y)


def _max_pool_bwd(residuals, g_BxhxwxC):
    x, y = residuals
    taken = jnp.zeros(y.shape, bool)
    grads = []
    for corner in _pool_windows(x):
        chosen = (corner == y) & ~taken
        taken = taken | chosen
        grads.append(jnp.where(chosen, g_BxhxwxC, 0).astype(x.dtype))
    b, h, w, c = y.shape
    rows = [jnp.stack(grads[:2], axis=3), jnp.stack(grads[2:], axis=3)]  # B x h x w x 2 x C
    g = jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, c)
    return (jnp.pad(g, ((0, 0), (0, x.shape[1] - 2 * h), (0, x.shape[2] - 2 * w), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


class CNN(nn.Module):
    """Conv(3x3, valid) -> activation -> [BN] -> MaxPool 2x2, per width; Flatten -> Dense.

    With the defaults this is exactly Conv32 -> pool -> Conv64 -> pool -> Dense(10).
    A block skips its pooling when the feature map is already smaller than 2x2,
    so small inputs such as 8x8 digits run through the same network.
    """

    widths: Sequence[int] = (32, 64)
    num_outputs: int = 10
    activation: str = "relu"
    batch_norm: bool = False
    dropout_rate: float = 0.0
    dense_size: int | None = None
    dtype: str = "float32"  # computation dtype; "bfloat16" for mixed precision
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x_BxHxWxC, *, train: bool = False):
        x = x_BxHxWxC
        for width in self.widths:
            x = nn.Conv(
                width, (3, 3), padding="VALID", use_bias=not self.batch_norm, dtype=self.dtype
            )(x)
            if self.batch_norm:
                x = nn.BatchNorm(
                    use_running_average=not train, axis_name=self.axis_name, dtype=self.dtype
                )(x)
            x = activation_layer(self.activation)(x)
            if min(x.shape[1:3]) >= 2:
                x = max_pool_2x2(x)
        x_BxD = x.reshape((x.shape[0], -1))
        if self.dense_size:
            x_BxD = activation_layer(self.activation)(
                nn.Dense(self.dense_size, dtype=self.dtype)(x_BxD)
            )
        if self.dropout_rate > 0:
            x_BxD = nn.Dropout(self.dropout_rate, deterministic=not train)(x_BxD)
        # Parameters stay float32; logits return to float32 for a stable loss.
        return nn.Dense(self.num_outputs, dtype=self.dtype)(x_BxD).astype(jnp.float32)
