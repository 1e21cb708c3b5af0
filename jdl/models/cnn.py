"""Convolutional classifier; the default is the documents' MNIST network."""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl.models.activations import activation_layer

CONV_IMPLS = ("auto", "im2col", "xla")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def image_patches(x_BxHxWxC: jax.Array, kernel_size: tuple[int, int]) -> jax.Array:
    """Every kh x kw window of a VALID, stride-1 convolution: [B, H', W', kh * kw * C].

    The last axis runs over (row offset, column offset, channel), the order of a flattened
    [kh, kw, C, F] kernel. Slices joined along the channels; the gradient is
    `sum_of_windows`, written out because XLA:CPU runs autodiff's own (nine padded
    slices, each written to memory, then added) about 2.5 ms per CNN step slower.
    """
    kh, kw = kernel_size
    _, h, w, _ = x_BxHxWxC.shape
    out_h, out_w = h - kh + 1, w - kw + 1
    windows = [x_BxHxWxC[:, i : i + out_h, j : j + out_w] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(windows, axis=-1)


def sum_of_windows(patches_BxHxWxK: jax.Array, kernel_size: tuple[int, int]) -> jax.Array:
    """The transpose of `image_patches` (col2im): each window added back where it came from.

    One row offset at a time: its kw column windows are padded along the width and added,
    then the kh row sums are padded along the height and added.
    """
    kh, kw = kernel_size
    b, out_h, out_w, k = patches_BxHxWxK.shape
    windows = patches_BxHxWxK.reshape(b, out_h, out_w, kh, kw, k // (kh * kw))

    def pad(x, axis, before, after):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (before, after)
        return jnp.pad(x, widths)

    rows = [
        sum(pad(windows[:, :, :, i, j], 2, j, kw - 1 - j) for j in range(kw)) for i in range(kh)
    ]
    return sum(pad(row, 1, i, kh - 1 - i) for i, row in enumerate(rows))


image_patches.defvjp(
    lambda x, kernel_size: (image_patches(x, kernel_size), None),
    lambda kernel_size, _, g: (sum_of_windows(g, kernel_size),),
)


class Im2ColConv(nn.Module):
    """A VALID, stride-1 convolution computed as one matmul over `image_patches` (im2col).

    Same parameters (kernel [kh, kw, C, F], lecun-normal; bias [F], zeros) and outputs as
    `nn.Conv(features, kernel_size, padding="VALID")`. For XLA:CPU: its own convolutions
    run ~15x slower inside a loop body (`lax.scan`: K steps or an epoch per call) and its
    weight gradients at a fraction of matmul speed; matmuls have neither problem. GPUs and
    TPUs run native convolutions better. Reverse mode only: the patches' gradient is a
    `custom_vjp`, so `jax.jvp` / `jax.jacfwd` through it fail; use `conv_impl="xla"` there.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    use_bias: bool = True
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BxHxWxC):
        kh, kw = self.kernel_size
        channels = x_BxHxWxC.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (kh, kw, channels, self.features)
        )
        patches_BxHxWxK = image_patches(x_BxHxWxC.astype(self.dtype), self.kernel_size)
        y = patches_BxHxWxK @ kernel.reshape(kh * kw * channels, self.features).astype(self.dtype)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(
                self.dtype
            )
        return y


def conv_layer(conv_impl: str, features: int, use_bias: bool, dtype: str, name: str):
    """A 3x3 VALID convolution: `Im2ColConv` on CPU ("auto") or when asked, else `nn.Conv`."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"Unknown conv_impl {conv_impl!r}; valid: {list(CONV_IMPLS)}")
    if conv_impl == "im2col" or (conv_impl == "auto" and jax.default_backend() == "cpu"):
        return Im2ColConv(features, (3, 3), use_bias, dtype, name=name)
    return nn.Conv(features, (3, 3), padding="VALID", use_bias=use_bias, dtype=dtype, name=name)


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
    conv_impl: str = "auto"  # "im2col" (the default on CPU) or "xla" (elsewhere)
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x_BxHxWxC, *, train: bool = False):
        x = x_BxHxWxC
        for index, width in enumerate(self.widths):
            x = conv_layer(
                self.conv_impl, width, not self.batch_norm, self.dtype, name=f"Conv_{index}"
            )(x)
            if self.batch_norm:
                x = nn.BatchNorm(
                    use_running_average=not train, axis_name=self.axis_name, dtype=self.dtype
                )(x)
            x = activate_and_pool(x, self.activation, pool=min(x.shape[1:3]) >= 2)
        x_BxD = x.reshape((x.shape[0], -1))
        if self.dense_size:
            x_BxD = activation_layer(self.activation)(
                nn.Dense(self.dense_size, dtype=self.dtype)(x_BxD)
            )
        if self.dropout_rate > 0:
            x_BxD = nn.Dropout(self.dropout_rate, deterministic=not train)(x_BxD)
        # Parameters stay float32; logits return to float32 for a stable loss.
        return nn.Dense(self.num_outputs, dtype=self.dtype)(x_BxD).astype(jnp.float32)
