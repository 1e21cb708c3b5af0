"""Convolutions as matmuls over image patches (im2col): the fast path on XLA:CPU.

XLA:CPU runs its own convolutions far below matmul speed, strided and transposed ones and
weight gradients worst, and ~15x slower again inside a loop body (`lax.scan`: K steps or
an epoch per call); matmuls have neither problem. Layers with many channels on small maps,
where much of a patch is zero padding, run one matmul per kernel tap over the pixels it
reaches instead (`tap_matmuls`). `PatchConv` and `PatchConvTranspose` have the parameters
(names, shapes, initial values) and outputs of `nn.Conv` and `nn.ConvTranspose`, so
checkpoints move between them. `conv` / `conv_transpose` pick them on CPU
(`conv_impl="auto"`) and flax's layers on GPUs and TPUs, which run native convolutions
better. Reverse mode only: the gradients are `custom_vjp`s, so `jax.jvp` / `jax.jacfwd`
through them fail; use `conv_impl="xla"` there.

`conv_impl="onednn"` runs the same layers' float32 passes as oneDNN's convolutions (the ones
PyTorch uses on CPU) through XLA custom calls (`jdl.onednn`; needs oneDNN installed). It is
the fastest path for the DCGAN's strided and transposed 5x5 layers; "auto" stays on matmuls,
which need nothing outside JAX.

Precision: XLA:CPU ignores a matmul's `precision` and computes float32 products in full.
These layers honour "bfloat16" (the layer's `precision`, else JAX's
`default_matmul_precision`) as a TPU does: operands rounded to bfloat16, products summed in
float32. On CPUs with bfloat16 matrix units (Intel AMX) their matmuls then run several
times faster.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from flax.linen.linear import PaddingLike, PrecisionLike, canonicalize_padding
from jax import lax

from jdl import onednn

CONV_IMPLS = ("auto", "im2col", "onednn", "xla")
BFLOAT16_PRECISIONS = ("bfloat16", "BF16_BF16_F32", lax.DotAlgorithmPreset.BF16_BF16_F32)
Pads = list[tuple[int, int]]


def use_patches(conv_impl: str) -> bool:
    """Whether `conv_impl` means jdl's layers here: "im2col", "onednn" (whose passes fall
    back to patch matmuls where oneDNN's do not apply), or "auto" on a CPU."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"Unknown conv_impl {conv_impl!r}; valid: {list(CONV_IMPLS)}")
    return conv_impl in ("im2col", "onednn") or (
        conv_impl == "auto" and jax.default_backend() == "cpu"
    )


# --- patches and their transpose -------------------------------------------------------------
def _span(out_size: int, stride: int) -> int:
    """Input extent covered by `out_size` window starts `stride` apart."""
    return stride * (out_size - 1) + 1


def image_patches(x_BxHxWxC: jax.Array, kernel_size: Sequence[int], strides=(1, 1)) -> jax.Array:
    """Every kh x kw window of a VALID convolution: [B, H', W', kh * kw * C].

    The last axis runs over (row offset, column offset, channel), the order of a flattened
    [kh, kw, C, F] kernel.
    """
    return _patches(x_BxHxWxC, tuple(kernel_size), tuple(strides), x_BxHxWxC.shape[1:3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _patches(x_BxHxWxC, kernel_size, strides, input_hw):
    """Strided slices joined along the channels; the gradient is `sum_of_windows`."""
    (kh, kw), (sh, sw) = kernel_size, strides
    out_h, out_w = (input_hw[0] - kh) // sh + 1, (input_hw[1] - kw) // sw + 1
    windows = [
        x_BxHxWxC[:, i : i + _span(out_h, sh) : sh, j : j + _span(out_w, sw) : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(windows, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def sum_of_windows(patches_BxHxWxK, kernel_size, strides, input_hw) -> jax.Array:
    """The transpose of `image_patches` (col2im): each window added back where it came from.

    One row offset at a time: its kw column windows are spread (interior padding for the
    stride) and padded along the width, then added; then the kh row sums along the height.
    Written out because XLA:CPU runs autodiff's own (every padded slice written to memory,
    then added) about 2.5 ms per documents' CNN step slower. Its gradient is the patches.
    """
    (kh, kw), (sh, sw), (h, w) = kernel_size, strides, input_hw
    b, out_h, out_w, k = patches_BxHxWxK.shape
    windows = patches_BxHxWxK.reshape(b, out_h, out_w, kh, kw, k // (kh * kw))

    def place(x, axis, offset, size, stride):
        config = [(0, 0, 0)] * x.ndim
        config[axis] = (offset, size - offset - _span(x.shape[axis], stride), stride - 1)
        return lax.pad(x, jnp.zeros((), x.dtype), config)

    rows = [sum(place(windows[:, :, :, i, j], 2, j, w, sw) for j in range(kw)) for i in range(kh)]
    return sum(place(row, 1, i, h, sh) for i, row in enumerate(rows))


# Each is the other's transpose, so either's gradient is the other.
_patches.defvjp(
    lambda x, kernel_size, strides, input_hw: (_patches(x, kernel_size, strides, input_hw), None),
    lambda kernel_size, strides, input_hw, _, g: (
        sum_of_windows(g, kernel_size, strides, input_hw),
    ),
)
sum_of_windows.defvjp(
    lambda p, kernel_size, strides, input_hw: (
        sum_of_windows(p, kernel_size, strides, input_hw),
        None,
    ),
    lambda kernel_size, strides, input_hw, _, g: (_patches(g, kernel_size, strides, input_hw),),
)


# --- the matmul, its kernel gradient in the orientation XLA:CPU runs fast --------------------
def operand_dtype(precision, compute_dtype) -> jnp.dtype | None:
    """bfloat16 where float32 matmuls should take one bfloat16 pass (`precision`, or if None
    JAX's `default_matmul_precision`, asks for it); None: operands as they are."""
    if precision is None:
        precision = jax.config.jax_default_matmul_precision
    if compute_dtype != jnp.float32 or precision not in BFLOAT16_PRECISIONS:
        return None
    return jnp.bfloat16


def _cast(x: jax.Array, dtype) -> jax.Array:
    return x if dtype is None else x.astype(dtype)


def _dot(a: jax.Array, b: jax.Array, low) -> jax.Array:
    """`a @ b`; with `low` (bfloat16, from `operand_dtype`), of the operands cast to it,
    summed in float32."""
    if low is None:
        return a @ b
    return jnp.matmul(_cast(a, low), _cast(b, low), preferred_element_type=jnp.float32)


def _transposed(x_MxK: jax.Array, low) -> jax.Array:
    """`x.T`; with `low`, a row-major copy of it.

    XLA lays a transpose out as a view (even behind an optimization barrier), and converts a
    bfloat16 dot with such a view for an operand to float32, a fifth of the speed. Splitting
    the rows first makes the transpose a copy.
    """
    if low is None:
        return x_MxK.T
    m, k = x_MxK.shape
    block = math.gcd(m, 128)
    return x_MxK.reshape(m // block, block, k).transpose(2, 0, 1).reshape(k, m)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(a_MxK: jax.Array, w_KxN: jax.Array, low=None) -> jax.Array:
    """`a @ w` (`a` may have leading axes, `low` as in `_dot`), its kernel gradient from
    `kernel_gradient`."""
    return _dot(a_MxK, w_KxN, low)


def kernel_gradient(a_MxK: jax.Array, g_MxN: jax.Array, low=None) -> jax.Array:
    """`a^T g` [K, N], summed over the M rows, as a matmul of row-major operands.

    Left to autodiff, XLA:CPU lays such a product out as it likes: for the DCGAN's 14x14
    transposed layer it copied the 40 MB product of patches transposed (17 of the layer's
    60 ms per forward and backward), elsewhere it ran a slower non-library dot. Here the
    narrower of `a` and `g` is transposed (`a` if K <= N, else the product is taken as
    `(g^T a)^T`), behind an optimization barrier, which keeps XLA from folding the
    transpose back into the dot.
    """
    if a_MxK.shape[1] <= g_MxN.shape[1]:
        return _dot(lax.optimization_barrier(_transposed(a_MxK, low)), g_MxN, low)
    return lax.optimization_barrier(_dot(_transposed(g_MxN, low), a_MxK, low)).T


def _matmul_fwd(a, w, low):
    a, w = _cast(a, low), _cast(w, low)
    return _dot(a, w, low), (a, w)


def _matmul_bwd(low, residuals, g):
    a, w = residuals
    g = _cast(g, low)
    dw = kernel_gradient(a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1]), low)
    return _dot(g, _transposed(w, low), low), dw


matmul.defvjp(_matmul_fwd, _matmul_bwd)


# --- padding ---------------------------------------------------------------------------------
def conv_pads(padding: PaddingLike, input_hw, kernel_size, strides) -> Pads:
    """(before, after) zeros per spatial axis of `nn.Conv(padding=padding)`."""
    pads = canonicalize_padding(padding, len(kernel_size))
    if pads in ("SAME", "VALID"):
        return list(lax.padtype_to_pads(input_hw, kernel_size, strides, pads))
    if isinstance(pads, str):
        raise ValueError(f"Patch convolutions support SAME, VALID or explicit padding; got {pads}")
    return [tuple(p) for p in pads]


def transpose_pads(padding: PaddingLike, kernel_size, strides) -> Pads:
    """(before, after) zeros around the stride-dilated input of `nn.ConvTranspose`.

    Explicit pairs are used as given; SAME and VALID follow `lax.conv_transpose`: SAME
    makes the output `stride` times the input, VALID makes it `stride * (in - 1) + k`.
    """
    pads = canonicalize_padding(padding, len(kernel_size))
    if not isinstance(pads, str):
        return [tuple(p) for p in pads]
    if pads not in ("SAME", "VALID"):
        raise ValueError(f"Patch convolutions support SAME, VALID or explicit padding; got {pads}")
    out = []
    for k, s in zip(kernel_size, strides, strict=True):
        total = k + s - 2 + (max(k - s, 0) if pads == "VALID" else 0)
        before = k - 1 if pads == "VALID" or s > k - 1 else -(-total // 2)
        out.append((before, total - before))
    return out


def _pad(x_BxHxWxC: jax.Array, pads: Pads) -> jax.Array:
    """Zeros around the spatial axes; a negative amount crops."""
    config = [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)]
    return lax.pad(x_BxHxWxC, jnp.zeros((), x_BxHxWxC.dtype), config)


# --- transposed convolution as a matmul and a sum of windows ------------------------------
def conv_transpose_as_matmul(x_BxHxWxC, kernel_HxWxCxF, strides, pads: Pads, low=None):
    """`lax.conv_transpose` (kernel not flipped) as one matmul and a sum of windows.

    The transposed convolution sends input pixel m, through tap t, to output
    s * m + before - t: so each pixel times the flipped kernel is a kh x kw window of
    outputs, the windows lie `stride` apart, and their sum (`sum_of_windows`, the transpose
    of the patches) is the transposed convolution padded by k - 1 on both sides; cropping
    or padding that to `pads` gives the output. Exactly the convolution's multiply-adds (a
    sub-pixel patch matmul does up to (ceil(k / s) * s / k)^2 times more), and the product
    holds kh * kw * F values per input pixel.
    """
    _, *input_hw, channels = x_BxHxWxC.shape
    kernel_hw = kernel_HxWxCxF.shape[:2]
    flipped = kernel_HxWxCxF[::-1, ::-1].transpose(2, 0, 1, 3)
    full_hw = tuple(
        _span(n, s) + k - 1 for n, k, s in zip(input_hw, kernel_hw, strides, strict=True)
    )
    y = sum_of_windows(
        matmul(x_BxHxWxC, flipped.reshape(channels, -1), low),
        tuple(kernel_hw),
        tuple(strides),
        full_hw,
    )
    return _pad(y, [(lo - k + 1, hi - k + 1) for k, (lo, hi) in zip(kernel_hw, pads, strict=True)])


# --- one matmul per kernel tap, over the outputs it reaches ----------------------------------
class TapRange(NamedTuple):
    """Along one spatial axis, what one kernel tap reads and writes: `count` input
    positions from `read_start`, `read_stride` apart, to as many outputs from
    `write_start`, `write_stride` apart. Positions in the padding are left out."""

    read_start: int
    read_stride: int
    write_start: int
    write_stride: int
    count: int

    @property
    def reads(self) -> slice:
        """The input positions read, as a slice."""
        return slice(
            self.read_start, self.read_start + _span(self.count, self.read_stride), self.read_stride
        )

    def swapped(self) -> "TapRange":
        """The same pairs read the other way round (the transpose's range)."""
        return TapRange(
            self.write_start, self.write_stride, self.read_start, self.read_stride, self.count
        )


class AxisTaps(NamedTuple):
    """One spatial axis of a convolution, tap by tap."""

    out_size: int
    ranges: tuple[TapRange, ...]
    dense_products: int  # the one-matmul form's products: every tap at every pixel

    @property
    def in_image_share(self) -> float:
        """The share of `dense_products` that does not multiply the zero padding."""
        return sum(r.count for r in self.ranges) / self.dense_products


def conv_axis_taps(in_size, kernel, stride, pads) -> AxisTaps:
    """`nn.Conv` along one axis: output o reads input stride * o + t - before through tap t."""
    before, after = pads
    out_size = (in_size + before + after - kernel) // stride + 1
    ranges = []
    for t in range(kernel):
        first = max(0, -(-(before - t) // stride))
        end = min(out_size, -(-(in_size + before - t) // stride))
        ranges.append(TapRange(stride * first + t - before, stride, first, 1, max(0, end - first)))
    return AxisTaps(out_size, tuple(ranges), out_size * kernel)


def transpose_axis_taps(in_size, kernel, stride, pads) -> AxisTaps:
    """`nn.ConvTranspose` along one axis: input m reaches output stride * m + before - t."""
    before, after = pads
    out_size = _span(in_size, stride) + before + after - kernel + 1
    ranges = []
    for t in range(kernel):
        first = max(0, -(-(t - before) // stride))
        end = min(in_size, (out_size - 1 + t - before) // stride + 1)
        ranges.append(TapRange(first, 1, stride * first + before - t, stride, max(0, end - first)))
    return AxisTaps(out_size, tuple(ranges), in_size * kernel)


def _read(x_BxHxWxC, rows: TapRange, cols: TapRange) -> jax.Array:
    return x_BxHxWxC[:, rows.reads, cols.reads]


def _write(y_BxHxWxF, rows: TapRange, cols: TapRange, out_hw) -> jax.Array:
    """`y` zero-padded to `out_hw`, its values at the outputs the tap reaches."""
    config = [(0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)]
    for axis, r, size in ((1, rows, out_hw[0]), (2, cols, out_hw[1])):
        after = size - r.write_start - _span(r.count, r.write_stride)
        config[axis] = (r.write_start, after, r.write_stride - 1)
    return lax.pad(y_BxHxWxF, jnp.zeros((), y_BxHxWxF.dtype), config)


def _live_taps(row_ranges, col_ranges):
    return [
        (i, j, rows, cols)
        for i, rows in enumerate(row_ranges)
        for j, cols in enumerate(col_ranges)
        if rows.count and cols.count
    ]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def tap_matmuls(x_BxHxWxC, kernel_HxWxCxF, row_ranges, col_ranges, out_hw) -> jax.Array:
    """A convolution as a sum over kernel taps of (input it reads) @ (its [C, F] slice).

    Each tap multiplies only the pixels it reaches, so no product of the zero padding is
    computed: on a 7x7 map a 5x5 SAME layer does 69 % of the patch matmul's multiply-adds.
    The gradients are the same sum read the other way round (input) and one matmul per tap
    (kernel).
    """
    b, f = x_BxHxWxC.shape[0], kernel_HxWxCxF.shape[-1]
    taps = _live_taps(row_ranges, col_ranges)
    if not taps:
        return jnp.zeros((b, *out_hw, f), jnp.result_type(x_BxHxWxC, kernel_HxWxCxF))
    return sum(
        _write(_read(x_BxHxWxC, rows, cols) @ kernel_HxWxCxF[i, j], rows, cols, out_hw)
        for i, j, rows, cols in taps
    )


def _tap_kernel_gradient(x_BxHxWxC, g_BxHxWxF, kernel_shape, row_ranges, col_ranges):
    """Per tap, (input it reads)^T @ (outputs' gradient) [C, F] (`kernel_gradient`)."""
    live = {(i, j): (rows, cols) for i, j, rows, cols in _live_taps(row_ranges, col_ranges)}
    kh, kw, c, f = kernel_shape

    def tap(i, j):
        if (i, j) not in live:
            return jnp.zeros((c, f), g_BxHxWxF.dtype)
        rows, cols = live[i, j]
        xs = _read(x_BxHxWxC, rows, cols).reshape(-1, c)
        gs = _read(g_BxHxWxF, rows.swapped(), cols.swapped()).reshape(-1, f)
        return kernel_gradient(xs, gs)

    return jnp.stack([tap(i, j) for i in range(kh) for j in range(kw)]).reshape(kernel_shape)


def _tap_matmuls_fwd(x, kernel, row_ranges, col_ranges, out_hw):
    return tap_matmuls(x, kernel, row_ranges, col_ranges, out_hw), (x, kernel)


def _tap_matmuls_bwd(row_ranges, col_ranges, out_hw, residuals, g):
    x, kernel = residuals
    dx = tap_matmuls(
        g,
        kernel.transpose(0, 1, 3, 2),
        tuple(r.swapped() for r in row_ranges),
        tuple(r.swapped() for r in col_ranges),
        x.shape[1:3],
    )
    return dx, _tap_kernel_gradient(x, g, kernel.shape, row_ranges, col_ranges)


tap_matmuls.defvjp(_tap_matmuls_fwd, _tap_matmuls_bwd)


def axes_taps(x_shape, kernel_size, strides, pads: Pads, axis_taps) -> tuple[AxisTaps, AxisTaps]:
    """Both spatial axes: `axis_taps` is `conv_axis_taps` or `transpose_axis_taps`."""
    sizes = zip(x_shape[1:3], kernel_size, strides, pads, strict=True)
    return tuple(axis_taps(*size) for size in sizes)


def tap_conv(x_BxHxWxC, kernel_HxWxCxF, rows: AxisTaps, cols: AxisTaps) -> jax.Array:
    """The convolution that `rows` and `cols` describe, as `tap_matmuls`."""
    out_hw = (rows.out_size, cols.out_size)
    return tap_matmuls(x_BxHxWxC, kernel_HxWxCxF, rows.ranges, cols.ranges, out_hw)


# Per-tap matmuls are [pixels, C] @ [C, F] ([F, C] in the gradient): well below one patch
# matmul's speed on XLA:CPU unless both channel counts are large, so they pay only where they
# skip much padding. Forward + backward at batch 128 against the patch form: 5x5 on 7x7 maps
# (69 % of the products in the image) 256 -> 128 level, 128 -> 256 stride 2 faster, the DCGAN
# step 10 % faster; 5x5 on 14x14 and 3x3 on 16x16 (84-88 %), 128 -> 128, 15-50 % slower;
# 64 -> 128 and 128 -> 64 slower on every map. With bfloat16 operands (AMX) the products
# cost less than the taps' float32 output sums: the patch form made the DCGAN step 10 %
# faster.
TAP_MATMUL_MIN_CHANNELS = 128
TAP_MATMUL_MAX_IN_IMAGE_SHARE = 0.8


def per_tap(channels: int, features: int, rows: AxisTaps, cols: AxisTaps, low) -> bool:
    """Whether a layer runs as `tap_matmuls` (float32 operands only) rather than as one
    patch matmul."""
    share = rows.in_image_share * cols.in_image_share
    return (
        low is None
        and min(channels, features) >= TAP_MATMUL_MIN_CHANNELS
        and share <= TAP_MATMUL_MAX_IN_IMAGE_SHARE
    )


# --- layers ----------------------------------------------------------------------------------
class _PatchLayer(nn.Module):
    """The fields, parameters and bias of flax's 2-D conv layers; subclasses give the
    linear map. Same names, shapes, initializers and creation order as `nn.Conv` /
    `nn.ConvTranspose`, hence the same initial values and interchangeable checkpoints;
    all promoted to the computation dtype (`dtype`, or the inputs' if None). `precision`
    "bfloat16" (or None under JAX's `default_matmul_precision("bfloat16")`) takes float32
    matmuls in one bfloat16 pass; other values compute in full, as XLA:CPU does.

    `onednn` computes float32 layers with oneDNN's convolutions (`jdl.onednn`); lower
    precisions, other dtypes and crops (negative padding) stay on matmuls.

    `before_bias`, if given, maps the linear map's output before the bias is added. It must
    commute with adding a per-channel constant, as max pooling does: then the layer's values
    are those of `before_bias` after it, and the bias is added to the smaller map.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: PaddingLike = "SAME"
    use_bias: bool = True
    dtype: jnp.dtype | str | None = None
    precision: PrecisionLike = None
    before_bias: Callable[[jax.Array], jax.Array] | None = None
    onednn: bool = False

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        shape = (*self.kernel_size, x_BxHxWxC.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = promote_dtype(x_BxHxWxC, kernel, bias, dtype=self.dtype)
        y = self.linear_map(x, kernel, operand_dtype(self.precision, x.dtype))
        if self.before_bias is not None:
            y = self.before_bias(y)
        return y if bias is None else y + bias

    def linear_map(self, x_BxHxWxC: jax.Array, kernel_HxWxCxF: jax.Array, low) -> jax.Array:
        """The bias-free convolution, its matmuls' operands cast to `low` (see `_dot`)."""
        raise NotImplementedError

    def runs_onednn(self, x_BxHxWxC: jax.Array, low, pads: Pads) -> bool:
        """Whether this call's linear map is oneDNN's (see the class docstring)."""
        return (
            self.onednn
            and low is None
            and x_BxHxWxC.dtype == jnp.float32
            and min(min(p) for p in pads) >= 0
        )


class PatchConv(_PatchLayer):
    """`nn.Conv` (2-D, no dilation or groups) as one matmul over image patches, or, with
    many channels on a small map, one matmul per kernel tap (`tap_matmuls`)."""

    def linear_map(self, x_BxHxWxC, kernel_HxWxCxF, low):
        pads = conv_pads(self.padding, x_BxHxWxC.shape[1:3], self.kernel_size, self.strides)
        if self.runs_onednn(x_BxHxWxC, low, pads):
            return onednn.conv(x_BxHxWxC, kernel_HxWxCxF, tuple(self.strides), tuple(pads))
        taps = axes_taps(x_BxHxWxC.shape, self.kernel_size, self.strides, pads, conv_axis_taps)
        if per_tap(x_BxHxWxC.shape[-1], self.features, *taps, low):
            return tap_conv(x_BxHxWxC, kernel_HxWxCxF, *taps)
        patches = image_patches(_pad(x_BxHxWxC, pads), self.kernel_size, self.strides)
        return matmul(patches, kernel_HxWxCxF.reshape(-1, self.features), low)


class PatchConvTranspose(_PatchLayer):
    """`nn.ConvTranspose` (2-D, kernel not flipped) as one matmul and a sum of windows, or,
    with many channels on a small map, one matmul per kernel tap (`tap_matmuls`)."""

    def linear_map(self, x_BxHxWxC, kernel_HxWxCxF, low):
        pads = transpose_pads(self.padding, self.kernel_size, self.strides)
        if self.runs_onednn(x_BxHxWxC, low, onednn.adjoint_pads(self.kernel_size, pads)):
            strides = tuple(self.strides)
            return onednn.conv_transpose(x_BxHxWxC, kernel_HxWxCxF, strides, tuple(pads))
        taps = axes_taps(x_BxHxWxC.shape, self.kernel_size, self.strides, pads, transpose_axis_taps)
        if per_tap(x_BxHxWxC.shape[-1], self.features, *taps, low):
            return tap_conv(x_BxHxWxC, kernel_HxWxCxF, *taps)
        return conv_transpose_as_matmul(x_BxHxWxC, kernel_HxWxCxF, self.strides, pads, low)


def _check_onednn() -> None:
    """A clear error, before any pass is traced, where oneDNN cannot run."""
    if jax.default_backend() != "cpu":
        raise ValueError(
            f'conv_impl="onednn" runs on CPU only; the default backend is '
            f'{jax.default_backend()!r}: use conv_impl="auto"'
        )
    onednn.load()


def _layer(patch_layer, flax_layer, conv_impl, features, kernel_size, before_bias, kwargs):
    """`patch_layer` where `use_patches(conv_impl)`, else `flax_layer` then `before_bias`."""
    if conv_impl == "onednn":
        _check_onednn()
    if use_patches(conv_impl):
        return patch_layer(
            features,
            tuple(kernel_size),
            before_bias=before_bias,
            onednn=conv_impl == "onednn",
            **kwargs,
        )
    layer = flax_layer(features, tuple(kernel_size), **kwargs)
    return layer if before_bias is None else lambda x: before_bias(layer(x))


def conv(conv_impl: str, features: int, kernel_size, *, before_bias=None, **kwargs):
    """`PatchConv` where `use_patches(conv_impl)`, else `nn.Conv`; same arguments.

    `before_bias` (see `_PatchLayer`; e.g. max pooling) runs inside `PatchConv`, before the
    bias, and after `nn.Conv`: the same values either way.
    """
    return _layer(PatchConv, nn.Conv, conv_impl, features, kernel_size, before_bias, kwargs)


def conv_transpose(conv_impl: str, features: int, kernel_size, *, before_bias=None, **kwargs):
    """`PatchConvTranspose` where `use_patches(conv_impl)`, else `nn.ConvTranspose`; as `conv`."""
    return _layer(
        PatchConvTranspose, nn.ConvTranspose, conv_impl, features, kernel_size, before_bias, kwargs
    )
