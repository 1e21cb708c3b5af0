"""The documents' DCGAN for `benchmarks.train_speed`: jdl's state and step, and PyTorch's copy.

Both train the 28x28x1 DCGAN of `experiments.dcgan` (generator Dense -> 7x7x256 ->
transposed 5x5 convolutions 128 (stride 1) -> 64 -> 1 (stride 2), batch norm and leaky
ReLU; discriminator 5x5 stride-2 convolutions 64 -> 128 -> 256 -> one logit) with Adam
2e-4, beta1 0.5: per step one discriminator update (real and fake batches passed
separately) and one non-saturating generator update on fresh noise.
"""

import itertools
import os
from collections.abc import Callable

import jax
import numpy as np
import optax

from jdl.models.gan import Discriminator, Generator
from jdl.state import GANState, create_gan_state
from jdl.steps.gan import gan_train_step

LATENT_DIM = 100
LEARNING_RATE = 2e-4
BETA1 = 0.5
LEAKY_SLOPE = 0.2


def jdl_state(image_shape=(28, 28, 1), conv_impl: str = "auto") -> GANState:
    """jdl's DCGAN with `experiments.dcgan`'s defaults and both Adam optimizers."""
    tx = optax.adam(LEARNING_RATE, b1=BETA1)
    generator = Generator(image_shape=image_shape, conv_impl=conv_impl)
    discriminator = Discriminator(conv_impl=conv_impl)
    return create_gan_state(
        generator, discriminator, tx, tx, LATENT_DIM, image_shape, jax.random.key(0)
    )


JDL_STEP = gan_train_step


def torch_networks():
    """The same generator and discriminator in PyTorch's layers (NCHW)."""
    from torch import nn

    def up(cin, cout, stride, last=False):
        # padding 2 with output_padding stride - 1: the output is stride x the input (SAME).
        conv = nn.ConvTranspose2d(cin, cout, 5, stride, 2, stride - 1, bias=last)
        return [conv] if last else [conv, nn.BatchNorm2d(cout), nn.LeakyReLU(LEAKY_SLOPE)]

    generator = nn.Sequential(
        nn.Linear(LATENT_DIM, 7 * 7 * 256, bias=False),
        nn.BatchNorm1d(7 * 7 * 256),
        nn.LeakyReLU(LEAKY_SLOPE),
        nn.Unflatten(1, (256, 7, 7)),
        *up(256, 128, 1),
        *up(128, 64, 2),
        *up(64, 1, 2, last=True),
        nn.Tanh(),
    )
    discriminator = nn.Sequential(
        *(
            layer
            for cin, cout in ((1, 64), (64, 128), (128, 256))
            for layer in (nn.Conv2d(cin, cout, 5, 2, 2), nn.LeakyReLU(LEAKY_SLOPE))
        ),
        nn.Flatten(),
        nn.Linear(4 * 4 * 256, 1),
    )
    return generator, discriminator


def torch_run(
    images_NHWC: np.ndarray, batch: int, bfloat16=False, networks=None
) -> Callable[[int], None]:
    """`run(n)`: n DCGAN steps of a plain PyTorch eager loop over `images` in [0, 1]; with
    `bfloat16`, the forward passes under `torch.autocast` (bfloat16 convolutions and matmuls,
    float32 parameters and losses), PyTorch's mixed precision on CPU. `networks` builds the
    (generator, discriminator) pair, `torch_networks` by default."""
    import contextlib

    import torch
    from torch.nn.functional import binary_cross_entropy_with_logits as bce

    torch.manual_seed(0)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    generator, discriminator = (networks or torch_networks)()
    g_opt = torch.optim.Adam(generator.parameters(), LEARNING_RATE, betas=(BETA1, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), LEARNING_RATE, betas=(BETA1, 0.999))
    images = torch.from_numpy(np.ascontiguousarray(images_NHWC.transpose(0, 3, 1, 2))) * 2 - 1
    ones, zeros = torch.ones(batch), torch.zeros(batch)
    calls = itertools.count()

    def forward_precision():
        return torch.autocast("cpu", torch.bfloat16) if bfloat16 else contextlib.nullcontext()

    def step() -> None:
        start = next(calls) % (len(images) // batch) * batch
        real = images[start : start + batch]
        with forward_precision():
            with torch.no_grad():
                fake = generator(torch.randn(batch, LATENT_DIM))
            d_loss = bce(discriminator(real)[:, 0], ones) + bce(discriminator(fake)[:, 0], zeros)
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        with forward_precision():
            g_loss = bce(discriminator(generator(torch.randn(batch, LATENT_DIM)))[:, 0], ones)
        g_opt.zero_grad()
        g_loss.backward()
        g_opt.step()

    def run(n: int) -> None:
        for _ in range(n):
            step()

    return run
