"""Patch-matmul convolutions: the same parameters, outputs and gradients as flax's layers."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl.models import conv as conv_module
from jdl.models.cnn import max_pool_2x2
from jdl.models.conv import PatchConv, PatchConvTranspose, conv, conv_transpose, use_patches
from jdl.models.gan import Discriminator, Generator

# (input H x W x C, features, kernel, strides, padding): odd and even sizes, unequal axes.
SHAPES = [
    ((28, 28, 1), 4, (3, 3), (1, 1), "VALID"),  # the documents' CNN's first layer
    ((9, 7, 3), 5, (2, 4), (1, 1), "VALID"),
    ((14, 14, 3), 4, (5, 5), (2, 2), "SAME"),  # the DCGAN's layers
    ((7, 7, 4), 3, (5, 5), (2, 2), "SAME"),
    ((7, 7, 6), 5, (5, 5), (1, 1), "SAME"),
    ((9, 8, 3), 4, (3, 2), (2, 3), "VALID"),
    ((6, 7, 2), 3, (4, 3), (3, 2), ((1, 2), (0, 1))),
    ((5, 6, 3), 4, (3, 3), (2, 2), ((4, 5), (3, 0))),  # more padding than the kernel spans
]


def assert_same_layer(ours: nn.Module, theirs: nn.Module, x: jax.Array) -> None:
    """Same initial variables, outputs, and gradients for the variables and the input."""
    variables = jax.jit(ours.init)(jax.random.key(0), x)
    # Same names, shapes and initial values: checkpoints move between the two.
    jax.tree.map(
        np.testing.assert_array_equal, variables, jax.jit(theirs.init)(jax.random.key(0), x)
    )
    # A nonzero bias, so that a missing or misplaced bias shows.
    variables = jax.tree.map(lambda v: v + 0.1, variables)
    np.testing.assert_allclose(
        jax.jit(ours.apply)(variables, x), jax.jit(theirs.apply)(variables, x), rtol=1e-5, atol=1e-5
    )

    def gradients(module):
        def loss(variables, x):
            return jnp.sum(jnp.sin(module.apply(variables, x)))

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
        gradients(ours),
        gradients(theirs),
    )


@pytest.mark.parametrize(("inner", "outer"), [(3, 5), (5, 3)])  # either operand transposed
def test_matmul_has_the_gradients_of_a_plain_matmul(inner, outer):
    a = jax.random.normal(jax.random.key(0), (2, 3, 4, inner))  # leading axes, as patches have
    w = jax.random.normal(jax.random.key(1), (inner, outer))
    g = jax.random.normal(jax.random.key(2), (2, 3, 4, outer))
    ours = jax.jit(lambda a, w: jax.vjp(conv_module.matmul, a, w)[1](g))(a, w)
    np.testing.assert_allclose(conv_module.matmul(a, w), a @ w, rtol=1e-6)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5),
        ours,
        jax.vjp(jnp.matmul, a, w)[1](g),
    )


@pytest.mark.parametrize(("shape", "features", "kernel", "strides", "padding"), SHAPES)
def test_patch_conv_equals_flax_conv(shape, features, kernel, strides, padding):
    x = jax.random.normal(jax.random.key(1), (2, *shape))
    assert_same_layer(
        PatchConv(features, kernel, strides, padding),
        nn.Conv(features, kernel, strides, padding=padding),
        x,
    )


@pytest.mark.parametrize(("shape", "features", "kernel", "strides", "padding"), SHAPES)
def test_patch_conv_transpose_equals_flax_conv_transpose(shape, features, kernel, strides, padding):
    x = jax.random.normal(jax.random.key(1), (2, *shape))
    assert_same_layer(
        PatchConvTranspose(features, kernel, strides, padding),
        nn.ConvTranspose(features, kernel, strides, padding=padding),
        x,
    )


@pytest.mark.parametrize(
    ("ours", "theirs"), [(PatchConv, nn.Conv), (PatchConvTranspose, nn.ConvTranspose)]
)
def test_without_bias_both_layers_match_flax(ours, theirs):
    x = jax.random.normal(jax.random.key(1), (2, 7, 7, 2))
    assert_same_layer(
        ours(3, (5, 5), (2, 2), use_bias=False), theirs(3, (5, 5), (2, 2), use_bias=False), x
    )


class FlaxLayerThenPool(nn.Module):
    """The reference: flax's layer (bias included), then flax's max pooling."""

    flax_layer: type

    @nn.compact
    def __call__(self, x):
        y = self.flax_layer(4, (3, 3), padding="VALID", name="layer")(x)
        return nn.max_pool(y, (2, 2), strides=(2, 2))


class PoolBeforeBias(nn.Module):
    """jdl's chooser (`conv` or `conv_transpose`) with max pooling before the bias."""

    chooser: Callable
    conv_impl: str

    @nn.compact
    def __call__(self, x):
        layer = self.chooser(
            self.conv_impl, 4, (3, 3), padding="VALID", before_bias=max_pool_2x2, name="layer"
        )
        return layer(x)


@pytest.mark.parametrize("conv_impl", ["im2col", "xla"])
@pytest.mark.parametrize(
    ("chooser", "flax_layer"), [(conv, nn.Conv), (conv_transpose, nn.ConvTranspose)]
)
def test_pooling_before_the_bias_equals_pooling_after_the_layer(chooser, flax_layer, conv_impl):
    # 9x8 -> 7x6 (11x10 transposed) -> 3x3 (5x5): the odd edge is dropped as in flax.
    x = jax.random.normal(jax.random.key(1), (2, 9, 8, 3))
    assert_same_layer(PoolBeforeBias(chooser, conv_impl), FlaxLayerThenPool(flax_layer), x)


def test_auto_uses_patches_on_cpu_and_flax_layers_on_accelerators(monkeypatch):
    assert jax.default_backend() == "cpu"
    assert use_patches("auto") and use_patches("im2col") and not use_patches("xla")
    assert isinstance(conv("auto", 4, (3, 3)), PatchConv)
    assert isinstance(conv_transpose("auto", 4, (3, 3)), PatchConvTranspose)
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(conv_module.jax, "default_backend", lambda b=backend: b)
        assert not use_patches("auto") and use_patches("im2col")
        assert type(conv("auto", 4, (3, 3))) is nn.Conv
        assert type(conv_transpose("auto", 4, (3, 3))) is nn.ConvTranspose
    with pytest.raises(ValueError, match="Unknown conv_impl 'winograd'"):
        use_patches("winograd")


@pytest.mark.parametrize("network", ["generator", "discriminator"])
def test_dcgan_runs_as_matmuls_on_cpu_with_the_variables_of_flax_layers(network):
    if network == "generator":
        make, x = (lambda c: Generator((8, 8, 1), (8, 6, 4), conv_impl=c)), jnp.ones((2, 5))
    else:
        make, x = (lambda c: Discriminator((4, 6, 8), conv_impl=c)), jnp.ones((2, 8, 8, 1))
    auto, xla = make("auto"), make("xla")
    variables = jax.jit(auto.init)(jax.random.key(0), x)
    # Same names and shapes (values: the layer tests above).
    abstract = jax.eval_shape(xla.init, jax.random.key(0), x)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, abstract)
    outputs = [jax.jit(model.apply)(variables, x) for model in (auto, xla)]
    np.testing.assert_allclose(*outputs, atol=1e-5)
    assert "conv_general_dilated" not in str(jax.make_jaxpr(auto.apply)(variables, x))
    assert "conv_general_dilated" in str(jax.make_jaxpr(xla.apply)(variables, x))


# Padded cases only: SAME stride 1 and 2, unequal kernels and strides, more padding than the
# kernel spans (without padding every tap reads every pixel).
@pytest.mark.parametrize(
    ("shape", "features", "kernel", "strides", "padding"), [SHAPES[i] for i in (2, 4, 6, 7)]
)
@pytest.mark.parametrize(
    ("ours", "theirs"), [(PatchConv, nn.Conv), (PatchConvTranspose, nn.ConvTranspose)]
)
def test_per_tap_matmuls_equal_flax_layers(
    monkeypatch, ours, theirs, shape, features, kernel, strides, padding
):
    # Every layer per tap.
    monkeypatch.setattr(conv_module, "TAP_MATMUL_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv_module, "TAP_MATMUL_MAX_IN_IMAGE_SHARE", 1.0)
    x = jax.random.normal(jax.random.key(1), (2, *shape))
    assert_same_layer(
        ours(features, kernel, strides, padding), theirs(features, kernel, strides, padding), x
    )


def multiply_adds(jaxpr) -> int:
    """Multiply-adds of the matmuls in a jaxpr, nested ones (jit, custom_vjp) included."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs, out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
            total += int(np.prod(out)) * int(np.prod([lhs[d] for d in contract]))
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                total += multiply_adds(inner)
    return total


def in_bounds_taps(in_size, out_size, kernel, stride, before, transpose) -> int:
    """(output, tap) pairs whose input pixel lies in the image, counted one by one."""
    if transpose:  # input m reaches output stride * m + before - t
        return sum(
            0 <= stride * m + before - t < out_size for m in range(in_size) for t in range(kernel)
        )
    return sum(
        0 <= stride * o + t - before < in_size for o in range(out_size) for t in range(kernel)
    )


@pytest.mark.parametrize("transpose", [False, True])
def test_per_tap_matmuls_multiply_no_padding(transpose):
    """The DCGAN's 7x7 layer: only in-image products, 69 % of the patch matmul's."""
    layer = (PatchConvTranspose if transpose else PatchConv)(128, (5, 5), padding="SAME")
    x = jnp.ones((2, 7, 7, 128))
    variables = jax.eval_shape(layer.init, jax.random.key(0), x)
    pairs = in_bounds_taps(7, 7, 5, 1, 2, transpose) ** 2
    assert multiply_adds(jax.make_jaxpr(layer.apply)(variables, x).jaxpr) == 2 * pairs * 128 * 128
    assert pairs / (7 * 7 * 25) == pytest.approx(0.69, abs=0.01)


def test_only_wide_layers_on_small_maps_run_per_tap():
    def runs_per_tap(layer, hw, channels):
        x = jnp.ones((1, *hw, channels))
        return str(jax.make_jaxpr(layer.init)(jax.random.key(0), x)).count("dot_general") > 1

    def dcgan_layer(transpose, strides=(2, 2)):
        return (PatchConvTranspose if transpose else PatchConv)(128, (5, 5), strides)

    assert runs_per_tap(dcgan_layer(True, (1, 1)), (7, 7), 256)  # the generator's 7x7 layer
    assert runs_per_tap(dcgan_layer(False), (7, 7), 128)  # the discriminator's last
    assert not runs_per_tap(dcgan_layer(False), (14, 14), 64)  # too few channels
    assert not runs_per_tap(dcgan_layer(False, (1, 1)), (14, 14), 128)  # 84 % in the image
    assert not runs_per_tap(PatchConv(128, (3, 3)), (32, 32), 128)


def rounded_to_bfloat16(x: jax.Array) -> jax.Array:
    return x.astype(jnp.bfloat16).astype(jnp.float32)


# (ours, flax's, input H x W x C, features, strides): the DCGAN's layer kinds, among them the
# generator's 7x7 256 -> 128 layer, which runs per tap in float32.
BFLOAT16_LAYERS = [
    (PatchConv, nn.Conv, (14, 14, 64), 128, (2, 2)),
    (PatchConvTranspose, nn.ConvTranspose, (7, 7, 256), 128, (1, 1)),
    (PatchConvTranspose, nn.ConvTranspose, (7, 7, 32), 16, (2, 2)),
]


@pytest.mark.parametrize(("ours", "theirs", "shape", "features", "strides"), BFLOAT16_LAYERS)
def test_bfloat16_precision_rounds_the_operands_and_sums_in_float32(
    ours, theirs, shape, features, strides
):
    """Products of bfloat16 numbers are exact in float32, so the layer must equal flax's
    float32 layer applied to rounded operands, up to the order of the float32 sums; its
    input gradient the same of the rounded output gradient, and so its kernel gradient."""
    layer = ours(features, (5, 5), strides, precision="bfloat16")
    reference = theirs(features, (5, 5), strides)
    x = jax.random.normal(jax.random.key(0), (2, *shape))
    variables = layer.init(jax.random.key(1), x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"] + 0.1
    y, pullback = jax.vjp(
        lambda k, x: layer.apply({"params": {"kernel": k, "bias": bias}}, x), kernel, x
    )
    g = jax.random.normal(jax.random.key(2), y.shape)
    kernel_grad, x_grad = pullback(g)

    def reference_of_rounded(k, x):
        return reference.apply({"params": {"kernel": k, "bias": bias}}, x)

    expected, expected_pullback = jax.vjp(
        reference_of_rounded, rounded_to_bfloat16(kernel), rounded_to_bfloat16(x)
    )
    expected_kernel_grad, expected_x_grad = expected_pullback(rounded_to_bfloat16(g))
    for ours_value, value in [
        (y, expected),
        (x_grad, expected_x_grad),
        (kernel_grad, expected_kernel_grad),
    ]:
        assert ours_value.dtype == jnp.float32
        scale = float(jnp.max(jnp.abs(value)))
        np.testing.assert_allclose(ours_value, value, rtol=1e-4, atol=1e-5 * scale)
    # The unrounded float32 layer differs by bfloat16's rounding, far beyond that tolerance.
    full = reference.apply({"params": {"kernel": kernel, "bias": bias}}, x)
    assert float(jnp.max(jnp.abs(y - full))) > 1e-3 * float(jnp.max(jnp.abs(full)))


def test_jax_default_matmul_precision_applies_unless_the_layer_sets_its_own():
    x = jax.random.normal(jax.random.key(0), (2, 14, 14, 8))
    variables = PatchConv(16, (5, 5), (2, 2)).init(jax.random.key(1), x)

    def output(**fields):
        return jax.jit(PatchConv(16, (5, 5), (2, 2), **fields).apply)(variables, x)

    low, full = output(precision="bfloat16"), output()
    assert not np.array_equal(low, full)
    with jax.default_matmul_precision("bfloat16"):
        np.testing.assert_array_equal(output(), low)
        np.testing.assert_array_equal(output(precision="float32"), full)
