"""Convolutional classifier; the default is the documents' MNIST network."""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl.models.activations import activation_layer
from jdl.models.conv import conv


def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, odd edges dropped (same values as `nn.max_pool`, VALID).

    The elementwise maximum of the four stride-2 slices: XLA:CPU's gradient of
    `reduce_window` (`select_and_scatter`) costs more than both convolutions of the
    documents' CNN, and that of a reshape + max over the windows 2.7x this one's.
    """
    x = x_BxHxWxC
    rows, cols = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    corners = [x[:, i:rows:2, j:cols:2] for i in (0, 1) for j in (0, 1)]
    return functools.reduce(jnp.maximum, corners)


# Non-decreasing activations commute with max pooling: max(f(a), f(b)) = f(max(a, b)).
POOL_FIRST_ACTIVATIONS = frozenset({"relu", "leaky_relu", "tanh", "sigmoid"})


def activate_and_pool(x_BxHxWxC: jax.Array, activation: str, pool: bool) -> jax.Array:
    """The activation, then 2x2 max pooling if `pool`.

    A non-decreasing activation runs after the pooling instead: the same values and
    gradients, on a quarter of the elements.
    """
    activate = activation_layer(activation)
    if not pool:
        return activate(x_BxHxWxC)
    if activation in POOL_FIRST_ACTIVATIONS:
        return activate(max_pool_2x2(x_BxHxWxC))
    return max_pool_2x2(activate(x_BxHxWxC))


class CNN(nn.Module):
    """Conv(3x3, valid) -> [BN] -> activation -> MaxPool 2x2, per width; Flatten -> Dense.

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
    conv_impl: str = "auto"  # "im2col" (the default on CPU), "onednn" or "xla" (elsewhere)
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x_BxHxWxC, *, train: bool = False):
        x = x_BxHxWxC
        for index, width in enumerate(self.widths):
            pool = min(x.shape[1:3]) - 2 >= 2  # the 3x3 valid convolution's output is >= 2x2
            # Max pooling commutes with the bias as with the activation (not with batch norm's
            # scale): it then runs inside the layer, before the bias, so the full-size map is
            # never biased or stored (the documents' CNN step 9-10 % faster on CPU).
            pool_in_conv = (
                pool and not self.batch_norm and self.activation in POOL_FIRST_ACTIVATIONS
            )
            x = conv(
                self.conv_impl,
                width,
                (3, 3),
                padding="VALID",
                use_bias=not self.batch_norm,
                dtype=self.dtype,
                before_bias=max_pool_2x2 if pool_in_conv else None,
                name=f"Conv_{index}",
            )(x)
            if self.batch_norm:
                x = nn.BatchNorm(
                    use_running_average=not train, axis_name=self.axis_name, dtype=self.dtype
                )(x)
            x = activate_and_pool(x, self.activation, pool=pool and not pool_in_conv)
        x_BxD = x.reshape((x.shape[0], -1))
        if self.dense_size:
            x_BxD = activation_layer(self.activation)(
                nn.Dense(self.dense_size, dtype=self.dtype)(x_BxD)
            )
        if self.dropout_rate > 0:
            x_BxD = nn.Dropout(self.dropout_rate, deterministic=not train)(x_BxD)
        # Parameters stay float32; logits return to float32 for a stable loss.
        return nn.Dense(self.num_outputs, dtype=self.dtype)(x_BxD).astype(jnp.float32)
