"""Training speed of jdl, PyTorch and Keras 3 (JAX backend) on MNIST-shaped data in memory.

    python -m benchmarks.train_speed                    # from the repo root: every row
    python -m benchmarks.train_speed --models cnn --skip-keras --out /tmp/cnn.json

Every row trains the same network (the documents' MLP 784-256-10 or CNN
Conv32-pool-Conv64-pool-Dense10 with Adam 1e-3; or their DCGAN, `benchmarks.dcgan_peers`)
on batches of 128 random images, and is timed by one helper, `measure`: the first call
alone (compilation included), a warm-up, then the median examples/s over `--repeats`
repeats. PyTorch and Keras are imported only for their own rows; the rows of a library
that is not installed say it was skipped.
A benchmark script, not a test: it asserts nothing and writes JSON (`--out`).
"""

import argparse
import dataclasses
import functools
import importlib.metadata
import importlib.util
import itertools
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import jax
import numpy as np
import optax

from benchmarks import dcgan_peers
from jdl import onednn
from jdl.loop import matmul_precision, use_cpu_devices
from jdl.models import build_model
from jdl.parallel import MODES, Strategy
from jdl.parallel.allocator import ENV_VAR as KEEP_FREED_MEMORY_ENV_VAR
from jdl.parallel.allocator import keep_freed_memory
from jdl.state import create_train_state
from jdl.steps import train_step

BATCH = 128
LEARNING_RATE = 1e-3
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)  # NHWC; PyTorch gets the same images as NCHW
MODELS = ("mlp", "cnn", "dcgan")
INSTALL_HINT = 'pip install -e ".[bench]"'


@dataclasses.dataclass
class Workload:
    """`run(n)` makes n calls and waits for the last; each call trains `steps_per_call` batches."""

    run: Callable[[int], None]
    steps_per_call: int = 1
    close: Callable[[], None] = lambda: None  # frees what the workload holds (a process)


@dataclasses.dataclass
class Row:
    library: str
    variant: str
    model: str
    examples_per_s: float | None = None  # median over the repeats, after warm-up
    compile_s: float | None = None  # first two calls less two steady calls: tracing, compiling
    recompiled: bool = False  # the second call was slow too: it compiled again
    repeats_examples_per_s: list[float] = dataclasses.field(default_factory=list)
    steps_per_repeat: int = 0
    note: str = ""


Case = tuple[Row, Callable[[], Workload]]  # a row to fill, and how to build what it times


# --- timing --------------------------------------------------------------------------------
def _seconds(run: Callable[[int], None], calls: int) -> float:
    start = time.perf_counter()
    run(calls)
    return time.perf_counter() - start


def measure(workload: Workload, steps: int, repeats: int, max_repeat_s: float) -> dict:
    """Compile time and steady-state examples/s (the median of `repeats`) of a workload.

    The compile time is what the first two calls take beyond two steady calls, so that a
    second compilation (inputs placed unlike the outputs) counts too. A repeat makes
    `steps // steps_per_call` calls, fewer when it would pass `max_repeat_s`; one untimed
    repeat warms up first (allocator and kernel caches settle over tens of steps). A
    variant whose one call already passes `max_repeat_s` gets at most 3 repeats.
    """
    first_s, second_s = _seconds(workload.run, 1), _seconds(workload.run, 1)
    one_s = _seconds(workload.run, 1)
    calls = max(1, min(steps // workload.steps_per_call, int(max_repeat_s / one_s)))
    if one_s > max_repeat_s:
        repeats = min(repeats, 3)
    else:
        workload.run(calls)
    seconds = [_seconds(workload.run, calls) for _ in range(repeats)]
    examples = calls * workload.steps_per_call * BATCH
    steady_s = statistics.median(seconds) / calls
    return {
        "compile_s": max(first_s + second_s - 2 * steady_s, 0.0),
        "recompiled": second_s > 2 * steady_s + 0.1,
        "examples_per_s": examples / statistics.median(seconds),
        "repeats_examples_per_s": [examples / s for s in seconds],
        "steps_per_repeat": calls * workload.steps_per_call,
    }


def bench(row: Row, build: Callable[[], Workload], args: argparse.Namespace) -> Row:
    """Fills `row` with the timing of `build()`'s workload, or notes why there is none."""
    print(f"  {row.library:6} {row.variant} ...", end=" ", flush=True, file=sys.stderr)
    try:
        workload = build()
        try:
            timing = measure(workload, args.steps, args.repeats, args.max_repeat_s)
        finally:
            workload.close()
    except Exception as error:  # e.g. torch.compile without a working C++ toolchain
        row.note = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        print(row.note, file=sys.stderr)
        return row
    print(f"{timing['examples_per_s']:,.0f} ex/s", file=sys.stderr)
    if timing["recompiled"]:
        row.note = "; ".join(filter(None, [row.note, "the 2nd call compiled again"]))
    return dataclasses.replace(row, **timing)


# --- data ----------------------------------------------------------------------------------
def make_data(num_examples: int, seed: int = 0) -> dict:
    """MNIST-shaped random images in [0, 1) and integer labels, NHWC float32."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((num_examples, *IMAGE_SHAPE), dtype=np.float32),
        "label": rng.integers(0, NUM_CLASSES, num_examples).astype(np.int32),
    }


def host_chunk(data: dict, index: int, steps: int) -> dict:
    """The `index`-th run of `steps` consecutive batches (cycling), stacked on a K axis if > 1."""
    size = steps * BATCH
    start = index % (len(data["label"]) // size) * size
    chunk = {k: v[start : start + size] for k, v in data.items()}
    if steps == 1:
        return chunk
    return {k: v.reshape(steps, BATCH, *v.shape[1:]) for k, v in chunk.items()}


# --- jdl -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class JdlVariant:
    """How jdl runs the steps: `step` (1 per call), `steps` (K per call, one loop), `epoch`."""

    mode: str
    form: str
    k: int = 1
    microbatches: int = 1  # each step's gradient over this many slices of the batch
    precision: str | None = None  # config.matmul_precision, e.g. "bfloat16"
    conv_impl: str = "auto"  # the DCGAN's layers: "onednn" for oneDNN's convolutions

    @property
    def name(self) -> str:
        if self.form == "step":
            name = f"{self.mode}, 1 step/call"
        elif self.form == "epoch":
            name = f"{self.mode}, epoch on device (lax.scan)"
        else:
            name = f"{self.mode}, {self.k} steps/call"
        if self.microbatches > 1:
            name += f", {self.microbatches} microbatches of {BATCH // self.microbatches}"
        if self.precision:
            name += f", {self.precision} matmuls"
        if self.conv_impl == "onednn":
            name += ", oneDNN convolutions"
        return name


JDL_VARIANTS = (
    JdlVariant("jit", "step"),
    JdlVariant("jit", "steps", 8),
    JdlVariant("jit", "epoch"),
    JdlVariant("jit", "steps", 8, microbatches=4),
    JdlVariant("jit", "epoch", microbatches=4),
    *(JdlVariant(mode, form, k) for mode in MODES[1:] for form, k in (("step", 1), ("steps", 8))),
)


# The GAN's steps take seconds on a laptop CPU: its single step, K steps and an epoch only,
# on matmuls and on oneDNN's convolutions (where installed); and the first two with bfloat16
# products (against PyTorch's autocast).
DCGAN_VARIANTS = (
    *(
        JdlVariant("jit", form, k, conv_impl=conv_impl)
        for conv_impl in ("auto", "onednn")
        for form, k in (("step", 1), ("steps", 8), ("epoch", 1))
    ),
    JdlVariant("jit", "step", precision="bfloat16"),
    JdlVariant("jit", "steps", 8, precision="bfloat16"),
)
BFLOAT16_NOTE = "bfloat16 products: compare with PyTorch's autocast row"
EPOCH_EXAMPLES = {"cnn": 8192, "dcgan": 1024}  # resident data of the on-device epoch


def compile_jdl(strategy: Strategy, variant: JdlVariant, step: Callable) -> Callable:
    """The compiled `step` in the form `variant` names."""
    if variant.form == "step":
        return strategy.compile_train(step)
    if variant.form == "epoch":
        return strategy.compile_train_epoch(step, BATCH)
    return strategy.compile_train_steps(step)


def jdl_state_and_step(model_name: str, microbatches: int = 1, conv_impl: str = "auto"):
    """jdl's initial state and pure step for `model_name`."""
    if model_name == "dcgan":
        return dcgan_peers.jdl_state(IMAGE_SHAPE, conv_impl), dcgan_peers.JDL_STEP
    model = build_model({"name": model_name}, NUM_CLASSES)
    tx = optax.adam(LEARNING_RATE)
    step = functools.partial(train_step, microbatches=microbatches)
    return create_train_state(model, tx, IMAGE_SHAPE, jax.random.key(0)), step


def jdl_workload(model_name: str, variant: JdlVariant, data: dict, epoch_examples: int):
    """jdl's model and step, compiled by its Strategy; host batches are placed per call."""
    strategy = Strategy(variant.mode)
    state, step = jdl_state_and_step(model_name, variant.microbatches, variant.conv_impl)
    state = strategy.put_replicated(state)
    rng = strategy.put_replicated(jax.random.key(1))
    fn = compile_jdl(strategy, variant, step)
    if variant.form == "epoch":
        resident = strategy.put_replicated({k: v[:epoch_examples] for k, v in data.items()})
        steps_per_call = epoch_examples // BATCH

        def feed(_):
            return resident
    else:
        steps_per_call = variant.k

        def feed(index):
            return strategy.put_batch(host_chunk(data, index, variant.k), stacked=variant.k > 1)

    calls = itertools.count()

    def run(n: int) -> None:
        nonlocal state
        previous = None
        with matmul_precision(variant.precision):  # traced and run under it
            for _ in range(n):
                state, metrics = fn(state, feed(next(calls)), rng)
                # Call n is queued before call n-1 is awaited: the device never idles, and
                # the queue stays short (XLA:CPU's all-reduce over fake devices deadlocks
                # when ~100 sharded or pmap calls are queued).
                jax.block_until_ready(previous)
                previous = metrics
        jax.block_until_ready((state, metrics))

    return Workload(run, steps_per_call)


def jdl_cases(model_name: str, data: dict, args: argparse.Namespace) -> list[Case]:
    epoch_examples = args.epoch_examples or EPOCH_EXAMPLES.get(model_name, len(data["label"]))
    epoch_note = f"{epoch_examples // BATCH} steps per call"

    def note(variant: JdlVariant) -> str:
        if variant.precision:
            return BFLOAT16_NOTE
        return epoch_note if variant.form == "epoch" else ""

    variants = DCGAN_VARIANTS if model_name == "dcgan" else JDL_VARIANTS
    if any(v.conv_impl == "onednn" for v in variants) and not onednn.available():
        print("oneDNN is not installed (see jdl/onednn.py): no oneDNN rows", file=sys.stderr)
        variants = [v for v in variants if v.conv_impl != "onednn"]
    return [
        (
            Row("jdl", v.name, model_name, note=note(v)),
            functools.partial(jdl_workload, model_name, v, data, epoch_examples),
        )
        for v in variants
    ]


# --- PyTorch -------------------------------------------------------------------------------
def cnn_feature_maps(input_shape=IMAGE_SHAPE) -> list[tuple[int, bool]]:
    """(side after the 3x3 valid conv, whether a 2x2 pool follows) per block of jdl's CNN.

    jdl skips a block's pooling when its map is smaller than 2x2 (8x8 digits), so the
    PyTorch and Keras copies follow the same rule to stay the same network.
    """
    side, blocks = input_shape[0], []
    for _ in range(2):
        side -= 2
        pooled = side >= 2
        blocks.append((side, pooled))
        side = side // 2 if pooled else side
    return blocks


def torch_model(model_name: str, input_shape=IMAGE_SHAPE):
    """The same networks in PyTorch's own layers (NCHW)."""
    from torch import nn

    if model_name == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(28 * 28, 256), nn.ReLU(), nn.Linear(256, NUM_CLASSES)
        )
    layers, channels = [], input_shape[-1]
    for (side, pooled), width in zip(cnn_feature_maps(input_shape), (32, 64), strict=True):
        layers += [nn.Conv2d(channels, width, 3), nn.ReLU()] + [nn.MaxPool2d(2)] * pooled
        channels, side = width, side // 2 if pooled else side
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * side * side, NUM_CLASSES))


def torch_workload(model_name: str, data: dict, compiled: bool, bfloat16: bool = False) -> Workload:
    """A plain eager loop: forward, cross-entropy, zero_grad, backward, Adam step; the DCGAN's
    also with its forward passes under bfloat16 autocast."""
    if model_name == "dcgan":
        return Workload(dcgan_peers.torch_run(data["image"], BATCH, bfloat16))
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = torch_model(model_name)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    images = torch.from_numpy(np.ascontiguousarray(data["image"].transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(data["label"].astype(np.int64))
    calls = itertools.count()

    def run(n: int) -> None:
        for _ in range(n):
            start = next(calls) % (len(labels) // BATCH) * BATCH
            loss = torch.nn.functional.cross_entropy(
                forward(images[start : start + BATCH]), labels[start : start + BATCH]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return Workload(run)


def _serve_torch_eager(connection, model_name: str, num_examples: int) -> None:
    """Child process: runs the eager loop on the same data, n steps per message received."""
    workload = torch_workload(model_name, make_data(num_examples), compiled=False)
    while (steps := connection.recv()) is not None:
        workload.run(steps)
        connection.send(steps)


def torch_own_process_workload(model_name: str, data: dict) -> Workload:
    """The eager loop in a fresh process with glibc's default allocator, as PyTorch runs alone.

    The other rows share this process, where importing jdl has made glibc keep freed memory
    (jdl.parallel.allocator); that speeds PyTorch's CNN up too. This row shows the difference.
    """
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    process = context.Process(
        target=_serve_torch_eager, args=(child_end, model_name, len(data["label"])), daemon=True
    )
    # The child inherits the environment at start; jdl's import there reads this variable.
    with mock.patch.dict(os.environ, {KEEP_FREED_MEMORY_ENV_VAR: "0"}):
        process.start()

    def run(n: int) -> None:
        parent_end.send(n)
        parent_end.recv()

    def close() -> None:
        parent_end.send(None)
        process.join(timeout=30)

    return Workload(run, close=close)


def torch_cases(model_name: str, data: dict, args: argparse.Namespace) -> list[Case]:
    # (variant, torch.compile, bfloat16 autocast): the DCGAN's second row is autocast, as jdl's
    # bfloat16 rows need their like-for-like peer; the others' is torch.compile.
    autocast, compiled = ("eager, autocast bfloat16", False, True), ("torch.compile", True, False)
    second = autocast if model_name == "dcgan" else compiled
    in_process = [
        (
            Row("torch", variant, model_name),
            functools.partial(torch_workload, model_name, data, compiled, bfloat16),
        )
        for variant, compiled, bfloat16 in (("eager", False, False), second)
    ]
    own_process = Row(
        "torch",
        "eager, own process (glibc defaults)",
        model_name,
        note="compile s includes the process start",
    )
    return [
        *in_process,
        (own_process, functools.partial(torch_own_process_workload, model_name, data)),
    ]


# --- Keras ---------------------------------------------------------------------------------
def import_keras():
    """Keras 3 on the JAX backend (an error if it was already imported on another backend)."""
    os.environ["KERAS_BACKEND"] = "jax"  # read once, at keras's first import
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keras's data adapters import TF
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"keras was already imported with the {keras.backend.backend()} backend")
    return keras


def keras_model(model_name: str, input_shape=IMAGE_SHAPE):
    """The same networks in Keras layers, compiled with Adam and cross-entropy on logits."""
    keras = import_keras()
    from keras import layers

    if model_name == "mlp":
        body = [layers.Flatten(), layers.Dense(256, activation="relu")]
    else:
        body = []
        for (_, pooled), width in zip(cnn_feature_maps(input_shape), (32, 64), strict=True):
            body += [layers.Conv2D(width, 3, activation="relu")] + [layers.MaxPooling2D(2)] * pooled
        body.append(layers.Flatten())
    model = keras.Sequential([keras.Input(input_shape), *body, layers.Dense(NUM_CLASSES)])
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def keras_workload(model_name: str, data: dict) -> Workload:
    """`model.fit` on the in-memory arrays; a call is one batch, n calls one fit of n batches."""
    keras = import_keras()
    keras.utils.set_random_seed(0)
    model = keras_model(model_name)

    def run(n: int) -> None:
        size = n * BATCH
        model.fit(data["image"][:size], data["label"][:size], BATCH, shuffle=False, verbose=0)

    return Workload(run)


def keras_cases(model_name: str, data: dict, args: argparse.Namespace) -> list[Case]:
    if model_name == "dcgan":
        return []  # a GAN does not train through `fit`
    row = Row("keras", "model.fit, jax backend", model_name)
    return [(row, functools.partial(keras_workload, model_name, data))]


# --- driver --------------------------------------------------------------------------------
# library -> (module it needs, its cases)
LIBRARIES = {
    "jdl": ("jax", jdl_cases),
    "torch": ("torch", torch_cases),
    "keras": ("keras", keras_cases),
}


def library_rows(library: str, model_name: str, data: dict, args) -> list[Row]:
    """The library's timed rows, or one row saying why it was skipped."""
    module, cases = LIBRARIES[library]
    if getattr(args, f"skip_{library}", False):
        return [Row(library, "-", model_name, note=f"skipped (--skip-{library})")]
    if importlib.util.find_spec(module) is None:
        note = f"skipped: {module} not installed ({INSTALL_HINT})"
        return [Row(library, "-", model_name, note=note)]
    return [bench(row, build, args) for row, build in cases(model_name, data, args)]


def with_speedups(rows: list[Row]) -> list[dict]:
    """Rows as dicts, each with its examples/s over PyTorch eager's for the same model."""
    eager = {
        r.model: r.examples_per_s for r in rows if r.library == "torch" and r.variant == "eager"
    }
    out = []
    for row in rows:
        base = eager.get(row.model)
        speedup = row.examples_per_s / base if row.examples_per_s and base else None
        out.append({**dataclasses.asdict(row), "x_vs_torch_eager": speedup})
    return out


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def table(results: list[dict]) -> str:
    """A Markdown table of the results."""
    lines = [
        "| library | variant | model | examples/s | compile s | x vs PyTorch eager | note |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for r in results:
        cells = (
            r["library"],
            r["variant"],
            r["model"],
            _fmt(r["examples_per_s"], ",.0f"),
            _fmt(r["compile_s"], ".2f"),
            _fmt(r["x_vs_torch_eager"], ".2f"),
            r["note"],
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """CPU, cores, load and library versions: what a reader needs to compare runs."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line]
    return {
        "cpu": names[0] if names else platform.processor(),
        "avx512f": " avx512f" in cpuinfo,
        "cores": len(os.sched_getaffinity(0)),
        "load_avg_1min_at_start": os.getloadavg()[0],
        "jax_devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),  # e.g. tcmalloc (README.md)
        "python": platform.python_version(),
        **{p: _version(p) for p in ("jax", "jaxlib", "flax", "optax", "torch", "keras")},
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: mlp,cnn,dcgan")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median counts")
    parser.add_argument("--steps", type=int, default=256, help="training steps per repeat")
    parser.add_argument(
        "--max-repeat-s", type=float, default=1.5, help="fewer steps if a repeat would last longer"
    )
    parser.add_argument("--num-examples", type=int, default=60_000, help="in-memory data set size")
    parser.add_argument(
        "--epoch-examples",
        type=int,
        default=0,
        help="resident data of the on-device epoch; 0: all (MLP), 8192 (CNN), 1024 (DCGAN)",
    )
    parser.add_argument("--out", default="benchmarks/results.json", help="JSON results path")
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=0,
        help="the CPU as N JAX devices for the sharded and pmap rows (config.cpu_devices)",
    )
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; valid models: {list(MODELS)}")
    if args.cpu_devices < 0:
        parser.error(f"--cpu-devices must be >= 0 (0: JAX's default); got {args.cpu_devices}")
    return args


def main(argv=None) -> None:
    keep_freed_memory()  # before JAX starts its threads, as the experiments' CLI does
    args = parse_args(argv)
    if args.cpu_devices:
        use_cpu_devices(args.cpu_devices)  # before JAX's first operation, as the CLI applies it
    info = machine()
    if info["load_avg_1min_at_start"] > 0.5:
        print(
            f"warning: load average {info['load_avg_1min_at_start']:.1f}; timings will be "
            "noisy on a busy machine",
            file=sys.stderr,
        )
    data = make_data(args.num_examples)
    rows = []
    for model_name in args.models:
        print(f"{model_name}:", file=sys.stderr)
        for library in LIBRARIES:
            rows += library_rows(library, model_name, data, args)
    results = with_speedups(rows)
    info["load_avg_1min_at_end"] = os.getloadavg()[0]
    print(
        f"{info['cpu']}, {info['cores']} cores, jax devices: {len(info['jax_devices'])}, "
        f"jax {info['jax']}, torch {info['torch']}, keras {info['keras']}\n"
    )
    print(table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "args": vars(args), "rows": results}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
