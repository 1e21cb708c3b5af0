"""Time to a target test accuracy for the documents' CNN: jdl vs PyTorch eager vs Keras 3 (JAX).

    python -m benchmarks.time_to_accuracy --dataset mnist --data_dir ~/tensorflow_datasets
    python -m benchmarks.time_to_accuracy                 # embedded 8x8 digits, target 0.95

Every library trains the same network (jdl's CNN; the PyTorch and Keras copies of
`train_speed`) from its own initialisation, seeded by `--seed`, with Adam 1e-3 on the same
batches of 128: each epoch is one NumPy permutation (from the same seed) of the training set
shared by all three, cut into batches, the last partial run of `--steps_per_call` batches
dropped. After every epoch the whole test split is evaluated. The clock counts training only
(compilation, the host data feed and the steps), not the evaluations; a library stops at the
first epoch whose test accuracy reaches `--target`, or after `--max_epochs`. jdl runs its
default CPU form for the CNN: `--steps_per_call` (8) steps per compiled call (a `lax.scan`).
`--experiment` adds a row for the whole command (`python -m experiments.mnist_cnn`, its own
recipe and epochs, with `--experiment_flags` such as `--config.num_epochs=2`) from start to
exit: imports, data, compilation, training, evaluation, checkpoints, plots; its time counts
only if one of its evaluations reached the target. MNIST is read as jdl reads it (decoded
once, kept beside the dataset), so the command's row reads the kept arrays, as every run
after a machine's first does.
A script, not a test.
"""

import argparse
import functools
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import optax

# Keras reads its backend once, at its first import, which TensorFlow (tfds) may trigger.
os.environ["KERAS_BACKEND"] = "jax"

from benchmarks.train_speed import (
    BATCH,
    LEARNING_RATE,
    NUM_CLASSES,
    import_keras,
    keras_model,
    torch_model,
)
from jdl.data.embedded import digits_splits
from jdl.data.tfds_data import prepared_builder, scaled, split_arrays
from jdl.metrics import METRICS_FILE, read_records
from jdl.models import build_model
from jdl.parallel import Strategy
from jdl.parallel.allocator import keep_freed_memory
from jdl.state import create_train_state
from jdl.steps import eval_step, summarize, train_step

DEFAULT_TARGET = {"mnist": 0.99, "digits": 0.95}
LIBRARIES = ("jdl", "torch", "keras")
EVAL_BATCH = 1000
# A trainer gets (train images, train labels, per-epoch batch indices E x S x B, test images,
# test labels) and calls `report(epoch, seconds, accuracy)`, which says whether to stop.
Report = Callable[[int, float, float], bool]


def load(dataset: str, data_dir: str | None) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test): NHWC float32 images in [0, 1], int32 labels."""
    if dataset == "digits":
        x_train, y_train, x_test, y_test = digits_splits()
        return x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32)
    builder = prepared_builder(dataset, data_dir, download=True)
    arrays = []
    for split in ("train", "test"):
        # jdl's own read: decoded once and kept, so the experiment row reads them kept too.
        scaled_split = scaled(split_arrays(builder, split, 0, 1)[0], slice(None))
        arrays += [scaled_split["image"], scaled_split["label"]]
    return tuple(arrays)


def epoch_batches(num_examples: int, steps_per_call: int, max_epochs: int, seed: int):
    """Per epoch, the example indices of its batches: E x S x B, S a multiple of K."""
    steps = num_examples // BATCH // steps_per_call * steps_per_call
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(num_examples)[: steps * BATCH] for _ in range(max_epochs)]
    return np.stack(orders).reshape(max_epochs, steps, BATCH)


def train_jdl(
    x, y, batches, x_test, y_test, report: Report, seed: int, steps_per_call: int
) -> None:
    strategy = Strategy("jit")
    model = build_model({"name": "cnn"}, NUM_CLASSES)
    key = jax.random.key(seed)
    state = create_train_state(model, optax.adam(LEARNING_RATE), x.shape[1:], key)
    state, rng = strategy.put_replicated(state), strategy.put_replicated(jax.random.fold_in(key, 1))
    train = strategy.compile_train_steps(train_step)
    evaluate = strategy.compile_eval(eval_step)
    chunks = range(0, len(y_test), EVAL_BATCH)
    tests = [
        strategy.put_batch(
            {"image": x_test[i : i + EVAL_BATCH], "label": y_test[i : i + EVAL_BATCH]}
        )
        for i in chunks
    ]
    seconds = 0.0
    for epoch, indices_SxB in enumerate(batches, 1):
        start = time.perf_counter()
        for calls in indices_SxB.reshape(-1, steps_per_call, BATCH):
            batch = strategy.put_batch({"image": x[calls], "label": y[calls]}, stacked=True)
            state, _ = train(state, batch, rng)
        jax.block_until_ready(state)
        seconds += time.perf_counter() - start
        sums = functools.reduce(
            lambda a, b: jax.tree.map(np.add, a, b),
            (strategy.to_host(evaluate(state, test)) for test in tests),
        )
        if report(epoch, seconds, summarize(sums)["accuracy"]):
            return


def train_torch(x, y, batches, x_test, y_test, report: Report, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = torch_model("cnn", x.shape[1:])
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(y.astype(np.int64))
    test_images = torch.from_numpy(np.ascontiguousarray(x_test.transpose(0, 3, 1, 2)))
    seconds = 0.0
    for epoch, indices_SxB in enumerate(batches, 1):
        start = time.perf_counter()
        model.train()
        for indices in torch.from_numpy(indices_SxB):
            loss = torch.nn.functional.cross_entropy(model(images[indices]), labels[indices])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds += time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            logits = [model(images_b) for images_b in test_images.split(EVAL_BATCH)]
        predicted = torch.cat(logits).argmax(1).numpy()
        if report(epoch, seconds, float(np.mean(predicted == y_test))):
            return


def train_keras(x, y, batches, x_test, y_test, report: Report, seed: int) -> None:
    import_keras().utils.set_random_seed(seed)
    model = keras_model("cnn", x.shape[1:])
    seconds = 0.0
    for epoch, indices_SxB in enumerate(batches, 1):
        order = indices_SxB.reshape(-1)
        start = time.perf_counter()
        model.fit(x[order], y[order], BATCH, shuffle=False, verbose=0)
        seconds += time.perf_counter() - start
        predicted = model.predict(x_test, batch_size=EVAL_BATCH, verbose=0).argmax(1)
        if report(epoch, seconds, float(np.mean(predicted == y_test))):
            return


def run_library(library: str, data, batches, args) -> dict:
    """Trains with one library; its row: seconds and epochs to the target, best accuracy."""
    row = {"library": library, "seconds": None, "epochs": None, "accuracies": [], "note": ""}
    row["first_epoch_s"] = None  # includes compilation (jdl, Keras) or warm-up (PyTorch)

    def report(epoch: int, seconds: float, accuracy: float) -> bool:
        row["accuracies"].append(round(accuracy, 4))
        row["first_epoch_s"] = row["first_epoch_s"] or seconds
        print(f"  {library} epoch {epoch}: {accuracy:.4f} at {seconds:.1f} s", file=sys.stderr)
        if accuracy >= args.target:
            row.update(seconds=seconds, epochs=epoch)
            return True
        return False

    trainer = {
        "jdl": functools.partial(train_jdl, steps_per_call=args.steps_per_call),
        "torch": train_torch,
        "keras": train_keras,
    }[library]
    try:
        trainer(*data[:2], batches, *data[2:], report, args.seed)
    except ImportError as error:
        row["note"] = f"skipped: {error}"
    if row["seconds"] is None and not row["note"]:
        row["note"] = f"target not reached in {args.max_epochs} epochs"
    return row


def experiment_row(
    experiment: str, flags: list[str], dataset: str, data_dir: str | None, target: float
) -> dict:
    """`python -m <experiment> [flags]` timed from start to exit, with its eval accuracies;
    the time counts only if one of its evaluations reached `target`."""
    name = " ".join([f"`python -m {experiment}", *flags]) + "`"
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, "-m", experiment, f"--workdir={workdir}"]
        command += [f"--config.dataset={dataset}"]
        command += [f"--config.data_dir={data_dir}"] if data_dir else []
        command += flags
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        metrics = Path(workdir, METRICS_FILE)
        records = read_records(metrics) if metrics.exists() else []
    accuracies = [round(r["eval/accuracy"], 4) for r in records if "eval/accuracy" in r]
    row = {
        "library": f"jdl, whole {name}",
        "seconds": None,
        "epochs": None,
        "first_epoch_s": None,
        "accuracies": accuracies,
    }
    if done.returncode:
        row["note"] = f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1][:200]}"
    elif max(accuracies, default=0.0) < target:
        row["note"] = f"target not reached in its {len(accuracies)} evaluations"
    else:
        row.update(seconds=seconds, epochs=len(accuracies), note="its own recipe, every epoch")
    return row


def table(rows: list[dict], target: float) -> str:
    lines = [
        f"| library | seconds to {target} | of which epoch 1 | epochs | best test acc. | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        best = f"{max(r['accuracies']):.4f}" if r["accuracies"] else "-"
        first = "-" if r["first_epoch_s"] is None else f"{r['first_epoch_s']:.1f}"
        cells = (r["library"], seconds, first, str(r["epochs"] or "-"), best, r["note"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DEFAULT_TARGET), default="digits")
    parser.add_argument("--data_dir", default=None, help="tfds data_dir (mnist)")
    parser.add_argument("--target", type=float, default=None, help="0.99 mnist, 0.95 digits")
    parser.add_argument("--max_epochs", type=int, default=None, help="default 10 mnist, 60 digits")
    parser.add_argument("--steps_per_call", type=int, default=8, help="jdl's steps per call")
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--seed", type=int, default=0, help="permutations and initialisations")
    parser.add_argument(
        "--experiment",
        default=None,
        help="also time this command whole, e.g. experiments.mnist_cnn",
    )
    parser.add_argument(
        "--experiment_flags",
        default="",
        help="its config overrides, e.g. '--config.num_epochs=2'",
    )
    args = parser.parse_args(argv)
    args.target = args.target or DEFAULT_TARGET[args.dataset]
    args.max_epochs = args.max_epochs or {"mnist": 10, "digits": 60}[args.dataset]
    args.libraries = [name.strip() for name in args.libraries.split(",") if name.strip()]
    unknown = sorted(set(args.libraries) - set(LIBRARIES))
    if unknown:
        parser.error(f"unknown libraries {unknown}; valid: {list(LIBRARIES)}")
    if args.steps_per_call < 1:
        parser.error("--steps_per_call must be at least 1")
    return args


def main(argv=None) -> None:
    keep_freed_memory()  # before JAX starts its threads, as the experiments' CLI does
    args = parse_args(argv)
    data = load(args.dataset, args.data_dir)
    if len(data[0]) < BATCH * args.steps_per_call:
        sys.exit(f"{len(data[0])} training examples: fewer than one call of K batches of {BATCH}")
    batches = epoch_batches(len(data[0]), args.steps_per_call, args.max_epochs, args.seed)
    print(
        f"{args.dataset}: {len(data[0])} train / {len(data[2])} test, {batches.shape[1]} "
        f"batches of {BATCH} per epoch, target {args.target}",
        file=sys.stderr,
    )
    rows = [run_library(library, data, batches, args) for library in args.libraries]
    if args.experiment:
        flags = shlex.split(args.experiment_flags)
        rows.append(
            experiment_row(args.experiment, flags, args.dataset, args.data_dir, args.target)
        )
    print(table(rows, args.target))


if __name__ == "__main__":
    main()
