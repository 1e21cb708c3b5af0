"""DCGAN generator and discriminator (Radford et al., 2016), sized to the image.

The documents' generator is z -> Dense -> reshape 7x7x256 -> transposed convolutions
128 -> 64 -> image channels (tanh); their discriminator is strided convolutions
64 -> 128 -> 256 (leaky ReLU) -> one logit. Here the first map is the image divided by 4
(7x7 for 28x28, 8x8 for 32x32, 2x2 for 8x8) and the two stride-2 layers bring it back to
full size, so the same modules serve MNIST, CIFAR-10 and the 8x8 digits. Batch norm sits
after every generator layer but the output, as in DCGAN. DCGAN also normalises the
discriminator's inner layers; that is an option here (`batch_norm=True`), off by default:
real and fake batches pass D separately, and normalising each by its own statistics hides
exactly the batch-level differences D should see first (measured on digits: against a
frozen generator, D's loss fell from 1.55 to 0.02 in 40 Adam steps without batch norm and
only to 1.34 with it).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl.models.conv import conv, conv_transpose

LEAKY_SLOPE = 0.2  # DCGAN's leaky ReLU slope
BN_MOMENTUM = 0.9  # running statistics follow a short GAN run closely enough to sample from
KERNEL = (5, 5)
UPSAMPLING = 4  # two stride-2 transposed convolutions


def first_map_size(image_shape: Sequence[int]) -> tuple[int, int]:
    """(height, width) of the generator's first feature map; raises unless divisible by 4."""
    height, width = image_shape[:2]
    if height % UPSAMPLING or width % UPSAMPLING:
        raise ValueError(
            f"DCGAN needs image height and width divisible by {UPSAMPLING}; got {height}x{width}"
        )
    return height // UPSAMPLING, width // UPSAMPLING


def _batch_norm(train: bool, axis_name: str | None) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, axis_name=axis_name)


class Generator(nn.Module):
    """z [B, latent] -> images [B, H, W, C] in [-1, 1].

    `widths` are the first map's channels and those of the two upsampling layers;
    `hidden_size` > 0 adds the documents' Dense(1024)-style hidden layer before it.
    """

    image_shape: Sequence[int] = (28, 28, 1)
    widths: Sequence[int] = (256, 128, 64)
    hidden_size: int = 0
    conv_impl: str = "auto"  # "im2col" (patch matmuls; the default on CPU), "onednn" or "xla"
    axis_name: str | None = None

    @nn.compact
    def __call__(self, z_BxL: jax.Array, *, train: bool = False) -> jax.Array:
        if len(self.widths) != 3:
            raise ValueError(f"Generator widths must have 3 entries; got {list(self.widths)}")
        height, width = first_map_size(self.image_shape)
        x = z_BxL
        if self.hidden_size:
            x = nn.Dense(self.hidden_size, use_bias=False)(x)
            x = nn.leaky_relu(_batch_norm(train, self.axis_name)(x), LEAKY_SLOPE)
        x = nn.Dense(height * width * self.widths[0], use_bias=False)(x)
        x = nn.leaky_relu(_batch_norm(train, self.axis_name)(x), LEAKY_SLOPE)
        x = x.reshape(x.shape[0], height, width, self.widths[0])
        # Stride 1 at the first map, then stride 2 twice: the last layer writes full-size images.
        layers = ((self.widths[1], 1), (self.widths[2], 2), (self.image_shape[2], 2))
        for i, (features, stride) in enumerate(layers):
            last = i == len(layers) - 1
            x = conv_transpose(
                self.conv_impl,
                features,
                KERNEL,
                strides=(stride, stride),
                padding="SAME",
                use_bias=last,
                name=f"ConvTranspose_{i}",
            )(x)
            if not last:
                x = nn.leaky_relu(_batch_norm(train, self.axis_name)(x), LEAKY_SLOPE)
        return jnp.tanh(x)


class Discriminator(nn.Module):
    """Images [B, H, W, C] in [-1, 1] -> one real-vs-fake logit per image [B]."""

    widths: Sequence[int] = (64, 128, 256)
    batch_norm: bool = False
    conv_impl: str = "auto"  # "im2col" (patch matmuls; the default on CPU), "onednn" or "xla"
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
        x = x_BxHxWxC
        for i, width in enumerate(self.widths):
            normalize = self.batch_norm and i > 0
            x = conv(
                self.conv_impl,
                width,
                KERNEL,
                strides=(2, 2),
                padding="SAME",
                use_bias=not normalize,
                name=f"Conv_{i}",
            )(x)
            if normalize:
                x = _batch_norm(train, self.axis_name)(x)
            x = nn.leaky_relu(x, LEAKY_SLOPE)
        logits_Bx1 = nn.Dense(1)(x.reshape(x.shape[0], -1))
        return logits_Bx1[:, 0]
