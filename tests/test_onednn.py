"""oneDNN convolutions (`conv_impl="onednn"`): flax's values and gradients, in whole steps.

The layer tests need oneDNN on the machine (CI installs it: .ci/run); the error tests don't.
"""

import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl import onednn
from jdl.models import conv as conv_module
from jdl.models.conv import PatchConv, PatchConvTranspose, conv, conv_transpose
from jdl.models.gan import Discriminator, Generator
from jdl.parallel import Strategy
from jdl.state import create_gan_state
from jdl.steps.gan import gan_train_step
from tests.test_conv import SHAPES, assert_same_layer

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="oneDNN is not installed")


def ffi_calls(fn, *args) -> int:
    """How many oneDNN passes the compiled program of `fn(*args)` runs."""
    hlo = jax.jit(fn).lower(*args).as_text()
    return sum(hlo.count(f"custom_call @{name}(") for name in onednn.HANDLERS)


@needs_onednn
@pytest.mark.parametrize(("shape", "features", "kernel", "strides", "padding"), SHAPES)
@pytest.mark.parametrize(
    ("ours", "theirs"), [(PatchConv, nn.Conv), (PatchConvTranspose, nn.ConvTranspose)]
)
def test_onednn_layers_equal_flax_layers(ours, theirs, shape, features, kernel, strides, padding):
    x = jax.random.normal(jax.random.key(1), (3, *shape))
    layer = ours(features, kernel, strides, padding, onednn=True)
    assert_same_layer(layer, theirs(features, kernel, strides, padding=padding), x)


@needs_onednn
@pytest.mark.parametrize(
    ("layer", "runs_onednn"),
    [
        (PatchConv(4, (5, 5), (2, 2), onednn=True), True),
        (PatchConvTranspose(4, (5, 5), (2, 2), onednn=True), True),
        (PatchConv(4, (5, 5), (2, 2)), False),
        # More padding than the kernel spans: the transposed layer crops, which oneDNN cannot.
        (PatchConvTranspose(4, (3, 3), (2, 2), ((4, 5), (3, 0)), onednn=True), False),
        (PatchConv(4, (5, 5), (2, 2), precision="bfloat16", onednn=True), False),
    ],
)
def test_onednn_runs_forward_and_backward_where_it_applies(layer, runs_onednn):
    x = jax.random.normal(jax.random.key(1), (2, 7, 7, 3))
    variables = layer.init(jax.random.key(0), x)

    def loss(variables, x):
        return jnp.sum(layer.apply(variables, x) ** 2)

    forward = ffi_calls(layer.apply, variables, x)
    backward = ffi_calls(jax.grad(loss, argnums=(0, 1)), variables, x)
    assert (forward, backward) == ((1, 3) if runs_onednn else (0, 0))


@needs_onednn
def test_onednn_under_vmap_equals_the_batched_layer():
    layer = PatchConv(4, (3, 3), (2, 2), onednn=True)
    x = jax.random.normal(jax.random.key(1), (3, 2, 9, 9, 2))
    variables = layer.init(jax.random.key(0), x[0])
    mapped = jax.vmap(lambda x: layer.apply(variables, x))(x)
    np.testing.assert_allclose(
        mapped,
        layer.apply(variables, x.reshape(6, 9, 9, 2)).reshape(mapped.shape),
        rtol=1e-5,
        atol=1e-6,
    )


def dcgan_state(conv_impl: str):
    tx = optax.adam(2e-3, b1=0.5)
    generator = Generator((8, 8, 1), (16, 8, 4), conv_impl=conv_impl)
    discriminator = Discriminator((8, 16, 32), conv_impl=conv_impl)
    return create_gan_state(generator, discriminator, tx, tx, 10, (8, 8, 1), jax.random.key(0))


@needs_onednn
def test_dcgan_trains_the_same_on_onednn_as_on_matmuls():
    """Three steps, K steps per call (the passes inside `lax.scan`): the same losses and
    parameters as the patch-matmul networks, from the same initial values."""
    images = jax.random.uniform(jax.random.key(2), (3, 16, 8, 8, 1))
    results = {}
    for conv_impl in ("im2col", "onednn"):
        train = Strategy("jit").compile_train_steps(gan_train_step)
        state, metrics = train(dcgan_state(conv_impl), {"image": images}, jax.random.key(3))
        results[conv_impl] = (state.generator.params, state.discriminator.params, metrics)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
        results["im2col"],
        results["onednn"],
    )
    steps = Strategy("jit").compile_train_steps(gan_train_step)
    state = dcgan_state("onednn")
    assert ffi_calls(lambda s: steps(s, {"image": images}, jax.random.key(3)), state) > 0


def test_onednn_is_refused_off_cpu(monkeypatch):
    monkeypatch.setattr(conv_module.jax, "default_backend", lambda: "gpu")
    with pytest.raises(ValueError, match='conv_impl="onednn" runs on CPU only'):
        conv("onednn", 4, (3, 3))


def test_a_missing_compiler_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr(onednn, "load", onednn.load.__wrapped__)  # not the cached success
    with pytest.raises(
        onednn.OneDNNUnavailable, match=r"No C\+\+ compiler 'no-such-compiler'.*libdnnl-dev"
    ):
        conv_transpose("onednn", 4, (3, 3))


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_a_failed_build_names_the_error_and_leaves_no_library(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", "c++")
    monkeypatch.setattr(onednn, "SOURCE", tmp_path / "broken.cc")
    (tmp_path / "broken.cc").write_text("#include <no_such_header.hpp>\n")
    with pytest.raises(onednn.OneDNNUnavailable, match=r"(?s)Building .* failed.*no_such_header"):
        onednn.build()
    assert not list((tmp_path / "jdl").glob("*.so")), "a failed build leaves no library"
