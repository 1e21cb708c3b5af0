"""The DCGAN ceiling benchmark's arithmetic: each layer's useful products against XLA's own
convolution of ones (which counts, per output, the kernel taps that land in the image)."""

import jax.numpy as jnp
import pytest
from jax import lax

from benchmarks.conv_ceiling import DCGAN_LAYERS, dense_dots, in_image_share

BATCH = 2


def products_in_image(layer) -> float:
    """Per example and channel pair: sum over outputs of the taps that read the image."""
    ones = jnp.ones((1, layer.in_size, layer.in_size, 1))
    kernel = jnp.ones((5, 5, 1, 1))
    strides, dims = (layer.stride,) * 2, ("NHWC", "HWIO", "NHWC")
    if layer.transposed:
        y = lax.conv_transpose(ones, kernel, strides, "SAME", dimension_numbers=dims)
    else:
        y = lax.conv_general_dilated(ones, kernel, strides, "SAME", dimension_numbers=dims)
    return float(y.sum())


@pytest.mark.parametrize("layer", DCGAN_LAYERS, ids=lambda layer: layer.name)
def test_useful_products_match_xla_convolution_of_ones(layer):
    forward, input_grad, kernel_grad = dense_dots(layer, BATCH)
    (m, k), (_, n) = forward
    # The three dots of one form do the same multiply-adds.
    assert input_grad[0][0] * input_grad[0][1] * input_grad[1][1] == m * k * n
    assert kernel_grad[0][0] * kernel_grad[0][1] * kernel_grad[1][1] == m * k * n
    useful = m * k * n * in_image_share(layer, BATCH)
    per_pair = useful / (BATCH * layer.channels * layer.features)
    assert per_pair == pytest.approx(products_in_image(layer))
