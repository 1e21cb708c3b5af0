"""LSTM training speed of jdl, PyTorch `nn.LSTM` (eager) and Keras 3 (JAX backend).

    python -m benchmarks.lstm_speed                 # from the repo root
    python -m benchmarks.lstm_speed --seq-len 100 --hidden 64 --out /tmp/lstm.json

Every row trains the same sequence classifier, LSTM(input 32 -> hidden 128) over T steps ->
last hidden state -> Dense(10), with Adam 1e-3 and softmax cross-entropy on batches of 128
random sequences held in memory. Timing, table and machine facts come from
`benchmarks.train_speed` (its `measure`: compile time, warm-up, median of repeats).
"""

import argparse
import functools
import importlib.util
import itertools
import json
import os
import sys
from pathlib import Path

import jax
import numpy as np

from benchmarks.train_speed import (
    BATCH,
    INSTALL_HINT,
    LEARNING_RATE,
    NUM_CLASSES,
    Row,
    Workload,
    bench,
    machine,
    table,
    with_speedups,
)
from jdl.models import build_model
from jdl.optimizers import make_optimizer
from jdl.parallel import Strategy
from jdl.parallel.allocator import keep_freed_memory
from jdl.state import create_train_state
from jdl.steps import train_step

INPUT_SIZE = 32


def make_data(num_examples: int, seq_len: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "sequence": rng.normal(size=(num_examples, seq_len, INPUT_SIZE)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, num_examples).astype(np.int32),
    }


def _batches(data: dict, steps: int):
    """Endless host batches (stacked by `steps` when > 1), cycling through the data."""
    num_batches = len(data["label"]) // BATCH
    for index in itertools.count():
        starts = [(index * steps + k) % num_batches * BATCH for k in range(steps)]
        chunk = [{key: v[s : s + BATCH] for key, v in data.items()} for s in starts]
        yield chunk[0] if steps == 1 else {k: np.stack([c[k] for c in chunk]) for k in chunk[0]}


def jdl_workload(data: dict, hidden: int, steps_per_call: int, mode: str = "jit") -> Workload:
    """The jdl classification step on the "rnn" model, 1 or K (lax.scan) steps a call.

    XLA:CPU runs the small matmuls of a scan body on one thread; `sharded` over several CPU
    devices (XLA_FLAGS=--xla_force_host_platform_device_count=N) runs one per core.
    """
    strategy = Strategy(mode)
    model = build_model({"name": "rnn", "cell": "lstm", "hidden_size": hidden}, NUM_CLASSES)
    tx = make_optimizer({"optimizer": "adam", "learning_rate": LEARNING_RATE}, total_steps=1)
    state = create_train_state(model, tx, data["sequence"].shape[1:], jax.random.key(0))
    state = strategy.put_replicated(state)
    if steps_per_call == 1:
        step = strategy.compile_train(train_step)
    else:
        step = strategy.compile_train_steps(train_step)
    rng = strategy.put_replicated(jax.random.key(1))
    batches = _batches(data, steps_per_call)
    holder = {"state": state}

    def run(n: int) -> None:
        for _ in range(n):
            batch = strategy.put_batch(next(batches), stacked=steps_per_call > 1)
            holder["state"], metrics = step(holder["state"], batch, rng)
        jax.block_until_ready(metrics)

    return Workload(run, steps_per_call)


def torch_workload(data: dict, hidden: int) -> Workload:
    """A plain eager loop: nn.LSTM -> last hidden -> Linear, cross-entropy, Adam."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    lstm = torch.nn.LSTM(INPUT_SIZE, hidden, batch_first=True)
    head = torch.nn.Linear(hidden, NUM_CLASSES)
    optimizer = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=LEARNING_RATE)
    x = torch.from_numpy(data["sequence"])
    y = torch.from_numpy(data["label"].astype(np.int64))
    calls = itertools.count()

    def run(n: int) -> None:
        for _ in range(n):
            start = next(calls) % (len(y) // BATCH) * BATCH
            _, (h_n, _) = lstm(x[start : start + BATCH])
            loss = torch.nn.functional.cross_entropy(head(h_n[-1]), y[start : start + BATCH])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return Workload(run)


def keras_workload(data: dict, hidden: int) -> Workload:
    """`model.fit` of keras.layers.LSTM -> Dense on the arrays; n calls = one fit of n batches."""
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input(data["sequence"].shape[1:]), layers.LSTM(hidden), layers.Dense(NUM_CLASSES)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

    def run(n: int) -> None:
        size = n * BATCH
        x, y = data["sequence"][:size], data["label"][:size]
        model.fit(x, y, BATCH, shuffle=False, verbose=0)

    return Workload(run)


def cases(data: dict, hidden: int, k: int) -> dict:
    """library -> [(row, workload builder)], in the shape `library_rows` expects."""
    name = f"lstm T={data['sequence'].shape[1]} H={hidden}"
    return {
        "jdl": [
            (
                Row("jdl", "jit, 1 step per call", name),
                functools.partial(jdl_workload, data, hidden, 1),
            ),
            (
                Row("jdl", f"jit, {k} steps per lax.scan", name),
                functools.partial(jdl_workload, data, hidden, k),
            ),
        ],
        **(
            {}
            if jax.device_count() < 2
            else {
                "jdl sharded": [
                    (
                        Row(
                            "jdl",
                            f"sharded over {jax.device_count()} CPU devices, {kk} step(s)",
                            name,
                        ),
                        functools.partial(jdl_workload, data, hidden, kk, "sharded"),
                    )
                    for kk in (1, k)
                ]
            }
        ),
        "torch": [(Row("torch", "eager", name), functools.partial(torch_workload, data, hidden))],
        "keras": [
            (
                Row("keras", "model.fit, jax backend", name),
                functools.partial(keras_workload, data, hidden),
            )
        ],
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=64, help="time steps T")
    parser.add_argument("--hidden", type=int, default=128, help="LSTM units")
    parser.add_argument("--steps-per-call", type=int, default=8, help="K of the lax.scan row")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median counts")
    parser.add_argument("--steps", type=int, default=32, help="training steps per repeat")
    parser.add_argument(
        "--max-repeat-s", type=float, default=3.0, help="fewer steps if a repeat would last longer"
    )
    parser.add_argument("--num-examples", type=int, default=4096, help="in-memory data set size")
    parser.add_argument("--out", default="benchmarks/lstm_results.json", help="JSON results path")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-keras", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    keep_freed_memory()  # before JAX starts its threads, as the experiments' CLI does
    args = parse_args(argv)
    info = machine()
    data = make_data(args.num_examples, args.seq_len)
    rows = []
    for library, library_cases in cases(data, args.hidden, args.steps_per_call).items():
        module = "jax" if library.startswith("jdl") else library
        name = library_cases[0][0].model
        if getattr(args, f"skip_{library}", False):
            rows.append(Row(library, "-", name, note=f"skipped (--skip-{library})"))
        elif importlib.util.find_spec(module) is None:
            rows.append(Row(library, "-", name, note=f"skipped: {module} missing ({INSTALL_HINT})"))
        else:
            rows += [bench(row, build, args) for row, build in library_cases]
    results = with_speedups(rows)
    info["load_avg_1min_at_end"] = os.getloadavg()[0]
    print(f"{info['cpu']}, {info['cores']} cores, jax {info['jax']}, torch {info['torch']}\n")
    print(table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "args": vars(args), "rows": results}, indent=2))
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
