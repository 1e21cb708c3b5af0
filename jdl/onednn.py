"""oneDNN convolutions on CPU through XLA FFI custom calls: the layers' `conv_impl="onednn"`.

PyTorch's CPU convolutions are oneDNN's; XLA:CPU has none of them, and matmul formulations
(`jdl.models.conv`) pay for building patches and summing windows. This module compiles
`native/onednn_conv.cc` (three handlers: a convolution's forward, input gradient and kernel
gradient) against the system's oneDNN on first use, registers it with XLA, and builds
`conv` / `conv_transpose` from those passes with `custom_vjp`s, so whole training steps stay
one jitted XLA program. Float32, 2-D, NHWC / HWIO as flax keeps them.

Needs a C++17 compiler (`$CXX`, else `c++`) and oneDNN 2.x or 3.x headers and library:
Debian / Ubuntu `apt install libdnnl-dev`, conda `conda install -c conda-forge onednn`,
Homebrew `brew install onednn`; a prefix outside the compiler's paths goes in
`$JDL_ONEDNN_ROOT` (its include/ and lib/). The library is cached under
`$XDG_CACHE_HOME/jdl` (`~/.cache/jdl`), keyed by the source and JAX's version, and built
once per machine: `python -m jdl.onednn` builds it ahead and says where.

One device only in spirit: under `jit` over a `Mesh`, XLA cannot split a custom call and
gathers its operands, so sharded steps should keep `conv_impl="auto"`.
"""

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("native") / "onednn_conv.cc"
HANDLERS = ("JdlConvForward", "JdlConvInputGrad", "JdlConvKernelGrad")
INSTALL_HINT = (
    "install oneDNN (Debian/Ubuntu: apt install libdnnl-dev; conda: conda install -c "
    "conda-forge onednn; Homebrew: brew install onednn) and a C++17 compiler, and set "
    "JDL_ONEDNN_ROOT to oneDNN's prefix if it is not on the compiler's paths"
)
Pads = Sequence[tuple[int, int]]


class OneDNNUnavailable(RuntimeError):
    """jdl's oneDNN library could not be built or loaded on this machine."""


def _compile_command(output: Path) -> list[str]:
    command = [os.environ.get("CXX", "c++"), "-O2", "-std=c++17", "-shared", "-fPIC"]
    command += ["-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", str(output)]
    root = os.environ.get("JDL_ONEDNN_ROOT")
    if root:
        lib = Path(root) / "lib"
        command += [f"-I{Path(root) / 'include'}", f"-L{lib}", f"-Wl,-rpath,{lib}"]
    return [*command, "-ldnnl"]


def library_path() -> Path:
    """Where the compiled library lives: named by the source, JAX's version and the flags."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jdl"
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(" ".join([jax.__version__, *_compile_command(Path("out"))]).encode())
    return cache / f"libjdl_onednn-{key.hexdigest()[:16]}.so"


def build() -> Path:
    """Compiles the library unless it is cached; another process building it is waited for."""
    from filelock import FileLock

    path = library_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if path.exists():
            return path
        compiler = _compile_command(path)[0]
        if shutil.which(compiler) is None:
            raise OneDNNUnavailable(f"No C++ compiler {compiler!r} to build it; {INSTALL_HINT}")
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            built = Path(scratch) / path.name
            result = subprocess.run(_compile_command(built), capture_output=True, text=True)
            if result.returncode != 0:
                lines = result.stderr.strip().splitlines() or ["(no output)"]
                first_error = next((line for line in lines if "error" in line), lines[-1])
                raise OneDNNUnavailable(
                    f"Building jdl's oneDNN convolutions failed ({first_error.strip()}); "
                    f"{INSTALL_HINT}"
                )
            built.replace(path)  # atomic: other processes see all of it or none
    return path


@functools.cache
def load() -> Path:
    """Builds (once) and registers the custom calls with XLA; raises `OneDNNUnavailable`."""
    path = build()
    try:
        library = ctypes.cdll.LoadLibrary(str(path))
    except OSError as e:
        raise OneDNNUnavailable(f"Loading {path} failed ({e}); {INSTALL_HINT}") from e
    for name in HANDLERS:
        handler = jax.ffi.pycapsule(getattr(library, name))
        jax.ffi.register_ffi_target(name, handler, platform="cpu")
    return path


def available() -> bool:
    """Whether oneDNN convolutions can run here (builds the library if it can)."""
    try:
        load()
    except OneDNNUnavailable:
        return False
    return True


# --- the three passes ------------------------------------------------------------------------
def _call(handler: str, out_shape, a: jax.Array, b: jax.Array, strides, pads: Pads):
    load()
    result = jax.ShapeDtypeStruct(tuple(out_shape), jnp.float32)
    return jax.ffi.ffi_call(handler, result, vmap_method="sequential")(
        a,
        b,
        strides=np.asarray(strides, np.int64),
        pad_l=np.asarray([lo for lo, _ in pads], np.int64),
        pad_r=np.asarray([hi for _, hi in pads], np.int64),
    )


def _output_hw(input_hw, kernel_hw, strides, pads: Pads) -> tuple[int, ...]:
    return tuple(
        (n + lo + hi - k) // s + 1
        for n, k, s, (lo, hi) in zip(input_hw, kernel_hw, strides, pads, strict=True)
    )


def _forward(x_BxHxWxC, kernel_HxWxCxF, strides, pads: Pads) -> jax.Array:
    batch, *input_hw, _ = x_BxHxWxC.shape
    hw = _output_hw(input_hw, kernel_HxWxCxF.shape[:2], strides, pads)
    out_shape = (batch, *hw, kernel_HxWxCxF.shape[3])
    return _call("JdlConvForward", out_shape, x_BxHxWxC, kernel_HxWxCxF, strides, pads)


def _input_grad(dy, kernel_HxWxCxF, x_shape, strides, pads: Pads) -> jax.Array:
    return _call("JdlConvInputGrad", x_shape, dy, kernel_HxWxCxF, strides, pads)


def _kernel_grad(x_BxHxWxC, dy, kernel_shape, strides, pads: Pads) -> jax.Array:
    return _call("JdlConvKernelGrad", kernel_shape, x_BxHxWxC, dy, strides, pads)


# --- convolution -----------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x_BxHxWxC: jax.Array, kernel_HxWxCxF: jax.Array, strides, pads: Pads) -> jax.Array:
    """`lax.conv_general_dilated` (NHWC, HWIO, `pads` (before, after) per axis) by oneDNN."""
    return _forward(x_BxHxWxC, kernel_HxWxCxF, strides, pads)


def _conv_fwd(x, kernel, strides, pads):
    return _forward(x, kernel, strides, pads), (x, kernel)


def _conv_bwd(strides, pads, residuals, dy):
    x, kernel = residuals
    return (
        _input_grad(dy, kernel, x.shape, strides, pads),
        _kernel_grad(x, dy, kernel.shape, strides, pads),
    )


conv.defvjp(_conv_fwd, _conv_bwd)


# --- transposed convolution ------------------------------------------------------------------
# `lax.conv_transpose` (kernel not flipped) with pads (lo, hi) is the input gradient of a
# convolution from its output back to its input: the kernel flipped in space with its channel
# axes swapped, padded (k - 1 - lo, k - 1 - hi). Its own gradients are that convolution's
# forward (for the input) and kernel gradient (flipped back).
def _adjoint_kernel(kernel_HxWxCxF: jax.Array) -> jax.Array:
    return kernel_HxWxCxF[::-1, ::-1].transpose(0, 1, 3, 2)


def adjoint_pads(kernel_hw, pads: Pads) -> tuple[tuple[int, int], ...]:
    """The pads of the convolution whose input gradient is the transposed one."""
    return tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel_hw, pads, strict=True))


def _transpose_forward(x_BxHxWxC, kernel_HxWxCxF, strides, pads: Pads) -> jax.Array:
    batch, *input_hw, _ = x_BxHxWxC.shape
    kernel_hw = kernel_HxWxCxF.shape[:2]
    hw = tuple(
        s * (n - 1) + lo + hi - k + 2
        for n, k, s, (lo, hi) in zip(input_hw, kernel_hw, strides, pads, strict=True)
    )
    out_shape = (batch, *hw, kernel_HxWxCxF.shape[3])
    adjoint = _adjoint_kernel(kernel_HxWxCxF)
    return _input_grad(x_BxHxWxC, adjoint, out_shape, strides, adjoint_pads(kernel_hw, pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose(x_BxHxWxC, kernel_HxWxCxF, strides, pads: Pads) -> jax.Array:
    """`lax.conv_transpose` (NHWC, HWIO, kernel not flipped, explicit `pads`) by oneDNN."""
    return _transpose_forward(x_BxHxWxC, kernel_HxWxCxF, strides, pads)


def _conv_transpose_fwd(x, kernel, strides, pads):
    return _transpose_forward(x, kernel, strides, pads), (x, kernel)


def _conv_transpose_bwd(strides, pads, residuals, dy):
    x, kernel = residuals
    adjoint, apads = _adjoint_kernel(kernel), adjoint_pads(kernel.shape[:2], pads)
    dx = _forward(dy, adjoint, strides, apads)
    d_adjoint = _kernel_grad(dy, x, adjoint.shape, strides, apads)
    return dx, _adjoint_kernel(d_adjoint)


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


def main() -> None:
    """`python -m jdl.onednn`: build the library (if needed) and say where it is."""
    try:
        print(f"jdl oneDNN convolutions: {load()}")
    except OneDNNUnavailable as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
