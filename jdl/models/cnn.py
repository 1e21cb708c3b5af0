"""Convolutional classifier; the default is the documents' MNIST network."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl.models.activations import activation_layer


def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, odd edges dropped (same values as `nn.max_pool`, VALID).

    Written as reshape + max because XLA:CPU's gradient of `reduce_window`
    (`select_and_scatter`) costs more than both convolutions of the documents' CNN.
    """
    b, h, w, c = x_BxHxWxC.shape
    x = x_BxHxWxC[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


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
