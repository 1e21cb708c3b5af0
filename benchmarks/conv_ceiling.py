"""How fast the DCGAN's convolutions could run as matmuls on XLA:CPU, against PyTorch's.

    python -m benchmarks.conv_ceiling                  # batch 128, 5 rounds
    python -m benchmarks.conv_ceiling --rounds 8 --out /tmp/ceiling.json
    python -m benchmarks.conv_ceiling --in-step        # each layer's cost inside the step
    python -m benchmarks.conv_ceiling --in-step --bfloat16   # ... with bfloat16 products

jdl runs every DCGAN convolution on CPU as matmuls (`jdl.models.conv`). Whatever the
formulation, such a layer cannot beat its bare matmuls. This script times, per layer of
`experiments.dcgan` (forward, input gradient and kernel gradient): the bare XLA dots of the
one-matmul form with their operands ready, scaled down to the products that do not
multiply zero padding (the floor of any matmul formulation: no patches, no window sums, no
wasted taps); jdl's layer; and PyTorch's `Conv2d` / `ConvTranspose2d` (oneDNN). It then adds
the floors up over one DCGAN step (how often each pass of each layer runs in it) and times
both whole steps. Everything is timed in one process, the libraries alternating round by
round, the best round kept. A benchmark script, not a test.

`--in-step` times instead what each layer costs inside a whole training step, where its
operations share the two cores with the rest of the step: each library's step against
the same step with that one layer computing only its kernel's centre tap (a 1x1
convolution of the same stride and output, 1/25 of the products), in both libraries.
With `--bfloat16`, jdl's steps run under `default_matmul_precision("bfloat16")` and
PyTorch's forward passes under `torch.autocast("cpu", torch.bfloat16)`.
"""

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import dcgan_peers
from benchmarks.train_speed import INSTALL_HINT, machine
from jdl.loop import matmul_precision
from jdl.models.conv import (
    PatchConv,
    PatchConvTranspose,
    axes_taps,
    conv_axis_taps,
    conv_pads,
    transpose_axis_taps,
    transpose_pads,
)
from jdl.parallel.allocator import keep_freed_memory

KERNEL = (5, 5)
PASSES = ("forward", "input grad", "kernel grad")
LIBRARIES = ("jdl", "torch")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One DCGAN convolution (5x5, SAME) and how often each of its passes runs in a step."""

    name: str
    transposed: bool
    in_size: int
    channels: int
    features: int
    stride: int
    runs_per_step: tuple[int, int, int]  # forward, input gradient, kernel gradient
    path: tuple[str, str, int]  # network, jdl module name, index in PyTorch's Sequential

    def module(self):
        cls = PatchConvTranspose if self.transposed else PatchConv
        return cls(self.features, KERNEL, (self.stride,) * 2, "SAME", use_bias=False)

    def taps(self, batch: int):
        shape = (batch, self.in_size, self.in_size, self.channels)
        if self.transposed:
            pads = transpose_pads("SAME", KERNEL, (self.stride,) * 2)
            return axes_taps(shape, KERNEL, (self.stride,) * 2, pads, transpose_axis_taps)
        pads = conv_pads("SAME", (self.in_size,) * 2, KERNEL, (self.stride,) * 2)
        return axes_taps(shape, KERNEL, (self.stride,) * 2, pads, conv_axis_taps)


# Per step the generator runs forward twice (fakes for D, then its own update) and backward
# once; D runs forward on real, fake and (in G's update) fake again, its kernel gradient
# for the first two, its input gradient wherever a gradient flows through (not into the
# real images, so the first layer's only in G's update).
DCGAN_LAYERS = (
    Layer("D 28x28x1 -> 14x14x64", False, 28, 1, 64, 2, (3, 1, 2), ("D", "Conv_0", 0)),
    Layer("D 14x14x64 -> 7x7x128", False, 14, 64, 128, 2, (3, 3, 2), ("D", "Conv_1", 2)),
    Layer("D 7x7x128 -> 4x4x256", False, 7, 128, 256, 2, (3, 3, 2), ("D", "Conv_2", 4)),
    Layer("G 7x7x256 -> 7x7x128", True, 7, 256, 128, 1, (2, 1, 1), ("G", "ConvTranspose_0", 4)),
    Layer("G 7x7x128 -> 14x14x64", True, 7, 128, 64, 2, (2, 1, 1), ("G", "ConvTranspose_1", 7)),
    Layer("G 14x14x64 -> 28x28x1", True, 14, 64, 1, 2, (2, 1, 1), ("G", "ConvTranspose_2", 10)),
)


def dense_dots(layer: Layer, batch: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Operand shapes of the one-matmul form's forward, input- and kernel-gradient dots."""
    rows, cols = layer.taps(batch)
    taps = KERNEL[0] * KERNEL[1]
    if layer.transposed:  # each input pixel times the whole kernel
        m, k, n = batch * layer.in_size**2, layer.channels, taps * layer.features
    else:  # each output pixel times its patch
        m, k, n = batch * rows.out_size * cols.out_size, taps * layer.channels, layer.features
    return [((m, k), (k, n)), ((m, n), (n, k)), ((k, m), (m, n))]


def in_image_share(layer: Layer, batch: int) -> float:
    rows, cols = layer.taps(batch)
    return rows.in_image_share * cols.in_image_share


def jdl_layer_fns(layer: Layer, batch: int) -> dict[str, Callable[[], None]]:
    """The layer forward, and forward plus both gradients, compiled and ready to call."""
    module = layer.module()
    x = jax.random.normal(jax.random.key(0), (batch, layer.in_size, layer.in_size, layer.channels))
    params = module.init(jax.random.key(1), x)
    forward = jax.jit(module.apply)
    g = jax.random.normal(jax.random.key(2), forward(params, x).shape)

    @jax.jit
    def forward_backward(params, x, g):
        y, vjp = jax.vjp(module.apply, params, x)
        return y, vjp(g)  # y returned, so that the forward is not pruned

    return {
        "jdl forward": lambda: jax.block_until_ready(forward(params, x)),
        "jdl fwd + bwd": lambda: jax.block_until_ready(forward_backward(params, x, g)),
    }


def dot_fns(layer: Layer, batch: int) -> dict[str, Callable[[], None]]:
    dot = jax.jit(jnp.matmul)
    fns = {}
    for name, (a_shape, b_shape) in zip(PASSES, dense_dots(layer, batch), strict=True):
        a = jax.random.normal(jax.random.key(3), a_shape)
        b = jax.random.normal(jax.random.key(4), b_shape)
        fns[f"dot {name}"] = lambda a=a, b=b: dot(a, b).block_until_ready()
    return fns


def torch_layer_fns(layer: Layer, batch: int) -> dict[str, Callable[[], None]]:
    """The same layer in PyTorch (NCHW): forward without autograd, and forward + backward."""
    import torch

    s, sizes = layer.stride, (layer.channels, layer.features)
    if layer.transposed:  # padding 2 and output padding s - 1: SAME
        module = torch.nn.ConvTranspose2d(*sizes, 5, s, 2, s - 1, bias=False)
    else:
        module = torch.nn.Conv2d(*sizes, 5, s, 2, bias=False)
    x = torch.randn(batch, layer.channels, layer.in_size, layer.in_size, requires_grad=True)
    g = torch.randn(module(x).shape)

    def forward():
        with torch.no_grad():
            module(x)

    def forward_backward():
        module(x).backward(g)

    return {"torch forward": forward, "torch fwd + bwd": forward_backward}


def step_images(batch: int) -> np.ndarray:
    return np.random.default_rng(0).random((batch, 28, 28, 1), np.float32)


def jdl_step_fn(
    images: np.ndarray, centre_tap_only: Layer | None = None, bfloat16: bool = False
) -> Callable[[], None]:
    """One whole DCGAN step of jdl's `gan_train_step` (jit), compiled and ready to call;
    with `centre_tap_only`, that layer computes only its centre tap (`jdl_centre_tap`);
    with `bfloat16`, its matmuls take bfloat16 operands (`config.matmul_precision`)."""
    state = dcgan_peers.jdl_state()
    step = jax.jit(lambda *args: dcgan_peers.JDL_STEP(*args))  # a trace of its own
    batch, rng = {"image": jnp.asarray(images)}, jax.random.key(0)
    precision = "bfloat16" if bfloat16 else None

    def call():
        with matmul_precision(precision):  # part of jit's cache key: traced and run under it
            jax.block_until_ready(step(state, batch, rng))

    with jdl_centre_tap(centre_tap_only) if centre_tap_only else contextlib.nullcontext():
        call()  # traced (and compiled) here, so with the stand-in
    return call


def torch_step_fn(
    images: np.ndarray, centre_tap_only: Layer | None = None, bfloat16: bool = False
) -> Callable[[], None]:
    """One whole DCGAN step of PyTorch's eager loop; `centre_tap_only` as in `jdl_step_fn`,
    `bfloat16` its forward passes under autocast."""
    networks = None
    if centre_tap_only:
        networks = functools.partial(torch_networks_with_centre_tap, centre_tap_only)
    run = dcgan_peers.torch_run(images, len(images), bfloat16, networks)
    return lambda: run(1)


def step_fns(batch: int) -> dict[str, Callable[[], None]]:
    """One whole DCGAN step: jdl's `gan_train_step` (jit) and PyTorch's eager loop."""
    images = step_images(batch)
    return {"jdl step": jdl_step_fn(images), "torch step": torch_step_fn(images)}


# --- each layer's cost inside the step -------------------------------------------------------
def centre_tap(x_BxHxWxC, kernel_HxWxCxF, stride: int, transposed: bool) -> jax.Array:
    """The 1x1 convolution through the kernel's centre tap, with the layer's stride and output
    size: PyTorch's `Conv2d` / `ConvTranspose2d` with a 1x1 kernel (output padding s - 1)."""
    kh, kw = kernel_HxWxCxF.shape[:2]
    centre = kernel_HxWxCxF[kh // 2, kw // 2]
    if not transposed:
        return x_BxHxWxC[:, ::stride, ::stride] @ centre
    spread = (0, stride - 1, stride - 1)  # each pixel followed by s - 1 zeros
    return lax.pad(x_BxHxWxC @ centre, 0.0, [(0, 0, 0), spread, spread, (0, 0, 0)])


@contextlib.contextmanager
def jdl_centre_tap(layer: Layer):
    """While active (when a step is traced), `layer`'s module computes `centre_tap` only;
    its parameters stay as they are."""
    network, module_name, _ = layer.path
    owner = {"G": "Generator", "D": "Discriminator"}[network]

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (
            context.method_name == "linear_map"
            and module.name == module_name
            and type(module.parent).__name__ == owner
        ):
            x, kernel, _ = args
            return centre_tap(x, kernel, layer.stride, layer.transposed)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield


def torch_networks_with_centre_tap(layer: Layer):
    """PyTorch's DCGAN networks with `layer` computing only `centre_tap`, written with the
    same operations (strided slice or zero interleave, channel matmul), weights unchanged;
    a 1x1 `conv2d` through oneDNN cost more than some whole 5x5 layers."""
    import torch

    class CentreTap(torch.nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.conv = conv

        def forward(self, x_BxCxHxW):
            conv, s = self.conv, layer.stride
            kh, kw = conv.kernel_size
            centre = conv.weight[:, :, kh // 2, kw // 2]  # [in, out] if transposed, else [out, in]
            if layer.transposed:
                pixels = torch.einsum("bchw,cf->bfhw", x_BxCxHxW, centre)
                b, f, h, w = pixels.shape
                y = pixels.new_zeros(b, f, h * s, w * s)
                y[:, :, ::s, ::s] = pixels
            else:
                y = torch.einsum("bchw,fc->bfhw", x_BxCxHxW[:, :, ::s, ::s], centre)
            return y if conv.bias is None else y + conv.bias[:, None, None]

    generator, discriminator = dcgan_peers.torch_networks()
    network = generator if layer.path[0] == "G" else discriminator
    network[layer.path[2]] = CentreTap(network[layer.path[2]])
    return generator, discriminator


def in_step_rows(
    batch: int, rounds: int, calls: int, bfloat16: bool = False
) -> tuple[list[dict], dict[str, float]]:
    """Per layer, the ms each library's whole step loses when the layer computes only its
    centre tap; and both whole steps' ms."""
    images = step_images(batch)
    fns = {}
    for layer in (None, *DCGAN_LAYERS):  # None: the whole step as it is
        name = f" {layer.name}" if layer else ""
        print(f"  step{name or ' as it is'} ...", file=sys.stderr, flush=True)
        fns[f"jdl{name}"] = jdl_step_fn(images, layer, bfloat16)
        fns[f"torch{name}"] = torch_step_fn(images, layer, bfloat16)
    ms = best_ms(fns, rounds, calls)
    rows = [
        {"layer": layer.name, **{lib: ms[lib] - ms[f"{lib} {layer.name}"] for lib in LIBRARIES}}
        for layer in DCGAN_LAYERS
    ]
    return rows, {lib: ms[lib] for lib in LIBRARIES}


def best_ms(fns: dict[str, Callable[[], None]], rounds: int, calls: int) -> dict[str, float]:
    """Per function, the best over `rounds` of its mean ms per call, functions alternating."""
    for fn in fns.values():
        fn()  # compile and warm up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls * 1e3)
    return best


def layer_row(layer: Layer, batch: int, rounds: int, calls: int) -> dict:
    fns = {**dot_fns(layer, batch), **jdl_layer_fns(layer, batch), **torch_layer_fns(layer, batch)}
    ms = best_ms(fns, rounds, calls)
    share = in_image_share(layer, batch)
    floors = [ms[f"dot {name}"] * share for name in PASSES]
    (m, k), (_, n) = dense_dots(layer, batch)[0]
    return {
        "layer": layer.name,
        "useful_gflop_per_pass": 2 * m * k * n * share / 1e9,
        "in_image_share": share,
        "floor_ms": dict(zip(PASSES, floors, strict=True)),
        "floor_per_step_ms": sum(
            floor * runs for floor, runs in zip(floors, layer.runs_per_step, strict=True)
        ),
        **{name: v for name, v in ms.items() if not name.startswith("dot")},
    }


def table(rows: list[dict], steps: dict[str, float], batch: int) -> str:
    lines = [
        "| layer | useful GFLOP per pass | matmul floor fwd / dx / dw ms | jdl fwd / fwd+bwd ms "
        "| PyTorch fwd / fwd+bwd ms | floor per step ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        floor = " / ".join(f"{r['floor_ms'][p]:.1f}" for p in PASSES)
        lines.append(
            f"| {r['layer']} | {r['useful_gflop_per_pass']:.2f} | {floor} "
            f"| {r['jdl forward']:.1f} / {r['jdl fwd + bwd']:.1f} "
            f"| {r['torch forward']:.1f} / {r['torch fwd + bwd']:.1f} "
            f"| {r['floor_per_step_ms']:.1f} |"
        )
    named_ms = {
        "convolutions' matmul floor": sum(r["floor_per_step_ms"] for r in rows),
        "jdl step": steps["jdl step"],
        "PyTorch eager step": steps["torch step"],
    }
    lines.append("")
    lines += [
        f"{name}: {ms:.0f} ms ({batch / ms * 1e3:.0f} examples/s)" for name, ms in named_ms.items()
    ]
    return "\n".join(lines)


def in_step_table(rows: list[dict], steps: dict[str, float], batch: int) -> str:
    lines = [
        "| layer | jdl ms in the step | PyTorch ms in the step | jdl - PyTorch ms |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['jdl']:.0f} | {r['torch']:.0f} | {r['jdl'] - r['torch']:+.0f} |"
        )
    lines.append("")
    lines += [
        f"{name} step: {steps[lib]:.0f} ms ({batch / steps[lib] * 1e3:.0f} examples/s)"
        for lib, name in zip(LIBRARIES, ("jdl", "PyTorch eager"), strict=True)
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; best kept")
    parser.add_argument("--calls", type=int, default=3, help="calls per timed round")
    parser.add_argument("--out", help="also write the numbers as JSON here")
    parser.add_argument(
        "--in-step", action="store_true", help="each layer's cost inside the whole step instead"
    )
    parser.add_argument(
        "--bfloat16", action="store_true", help="with --in-step: bfloat16 products, both libraries"
    )
    args = parser.parse_args(argv)
    if args.bfloat16 and not args.in_step:
        parser.error("--bfloat16 applies to --in-step only")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    keep_freed_memory()  # as jdl's experiment command line does
    # PyTorch's OpenMP threads otherwise spin after each call and take a core from the jdl
    # call that follows in the alternation: jdl's layers measured up to 1.7x slower so.
    # Read when torch loads its OpenMP runtime, so set before the import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    info = machine()
    try:
        import torch
    except ImportError:
        raise SystemExit(
            f"conv_ceiling compares with PyTorch, which is not installed: {INSTALL_HINT}"
        ) from None
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    if args.in_step:
        rows, steps = in_step_rows(args.batch, args.rounds, args.calls, args.bfloat16)
        text = in_step_table(rows, steps, args.batch)
    else:
        rows = []
        for layer in DCGAN_LAYERS:
            print(f"  {layer.name} ...", file=sys.stderr, flush=True)
            rows.append(layer_row(layer, args.batch, args.rounds, args.calls))
        steps = best_ms(step_fns(args.batch), args.rounds, args.calls)
        text = table(rows, steps, args.batch)
    print(
        f"{info['cpu']}, {info['cores']} cores, load average {info['load_avg_1min_at_start']:.2f} "
        f"at the start, jax {info['jax']}, torch {info['torch']}, batch {args.batch}, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
        f"{', bfloat16 products (autocast in PyTorch)' if args.bfloat16 else ''}\n"
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            numbers = {"machine": info, "bfloat16": args.bfloat16, "layers": rows}
            json.dump({**numbers, "steps_ms": steps}, f, indent=2)


if __name__ == "__main__":
    main()
