"""The DCGAN ceiling benchmark's arithmetic: each layer's useful products against XLA's own
convolution of ones (which counts, per output, the kernel taps that land in the image); and
its in-step stand-in, a layer's centre tap, against XLA's 1x1 convolutions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks.conv_ceiling import (
    DCGAN_LAYERS,
    centre_tap,
    dense_dots,
    in_image_share,
    jdl_centre_tap,
)
from jdl.models.gan import Generator

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


@pytest.mark.parametrize("layer", DCGAN_LAYERS, ids=lambda layer: layer.name)
def test_centre_tap_is_the_strided_1x1_convolution(layer):
    x_key, kernel_key = jax.random.split(jax.random.key(0))
    x = jax.random.normal(x_key, (BATCH, layer.in_size, layer.in_size, layer.channels))
    kernel = jax.random.normal(kernel_key, (5, 5, layer.channels, layer.features))
    strides, dims = (layer.stride,) * 2, ("NHWC", "HWIO", "NHWC")
    one_by_one = kernel[2:3, 2:3]
    if layer.transposed:  # each input pixel at stride x its position, s - 1 zeros after
        pads = [(0, layer.stride - 1)] * 2
        expected = lax.conv_transpose(x, one_by_one, strides, pads, dimension_numbers=dims)
    else:
        expected = lax.conv_general_dilated(x, one_by_one, strides, "VALID", dimension_numbers=dims)
    actual = centre_tap(x, kernel, layer.stride, layer.transposed)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_the_stand_in_replaces_its_own_layer_only():
    generator = Generator(conv_impl="im2col")
    z = jax.random.normal(jax.random.key(1), (BATCH, 100))
    variables = generator.init(jax.random.key(2), z)
    images = generator.apply(variables, z)
    by_name = {layer.path[:2]: layer for layer in DCGAN_LAYERS}
    with jdl_centre_tap(by_name["G", "ConvTranspose_0"]):
        changed = generator.apply(variables, z)
    with jdl_centre_tap(by_name["D", "Conv_0"]):  # the discriminator's: G is unchanged
        unchanged = generator.apply(variables, z)
    assert changed.shape == images.shape
    assert not np.allclose(changed, images, atol=1e-3)
    np.testing.assert_array_equal(unchanged, images)
