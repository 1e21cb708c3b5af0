"""Speed of `jdl.Model.fit` against `jdl.train_and_evaluate` and Keras 3 (JAX backend) `fit`.

    python -m benchmarks.fit_speed                 # from the repo root; one table
    python -m benchmarks.fit_speed --examples 3200 --skip-keras

Every row trains the documents' MLP (784-256-10) or CNN (Conv32-pool-Conv64-pool-Dense10)
with Adam 1e-3 at batch 128 on the same random MNIST-shaped arrays. Each is timed the same
way, so that compilation and set-up cancel out: the wall time of a call training 3 epochs
minus that of a call training 1 epoch, for the 2 epochs' examples. Nothing is evaluated or
written beyond what each API needs (train_and_evaluate writes its workdir and evaluates a
one-batch eval split). A benchmark script, not a test: it prints a table and asserts nothing.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable

from benchmarks.train_speed import BATCH, LEARNING_RATE, NUM_CLASSES, keras_model
from jdl.parallel.allocator import keep_freed_memory

SHORT, LONG = 1, 3  # epochs of the two timed calls


def random_mnist(num_examples: int, seed: int = 0) -> tuple:
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((num_examples, 28, 28, 1), dtype=np.float32)
    return x, rng.integers(0, NUM_CLASSES, num_examples).astype(np.int32)


def examples_per_s(fit: Callable[[int], None], num_examples: int) -> float:
    """Examples/s of `fit(epochs)` from the difference of a LONG and a SHORT call."""
    seconds = {}
    for epochs in (SHORT, LONG):
        start = time.perf_counter()
        fit(epochs)
        seconds[epochs] = time.perf_counter() - start
    return (LONG - SHORT) * (num_examples // BATCH) * BATCH / (seconds[LONG] - seconds[SHORT])


def model_fit(model_name: str, x, y) -> Callable[[int], None]:
    """`jdl.Model(<jdl's module>).fit`; every call builds and compiles a fresh model."""
    import optax

    import jdl
    from jdl.models import build_model

    def fit(epochs: int) -> None:
        model = jdl.Model(build_model({"name": model_name}, NUM_CLASSES))
        model.compile(optax.adam(LEARNING_RATE), "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)

    return fit


def train_and_evaluate(model_name: str, x, y) -> Callable[[int], None]:
    """`jdl.train_and_evaluate` with a config naming the same model, in a fresh workdir."""
    import jdl
    from jdl.data import from_arrays

    def fit(epochs: int) -> None:
        config = jdl.base_config()
        config.model.name, config.num_epochs, config.progress_bar = model_name, epochs, False
        config.batch_size, config.eval_batch_size = BATCH, BATCH
        config.learning_rate = LEARNING_RATE
        dataset = from_arrays(
            x, y, x[:BATCH], y[:BATCH], batch_size=BATCH, eval_batch_size=BATCH, seed=0
        )
        with tempfile.TemporaryDirectory() as workdir:
            jdl.train_and_evaluate(config, workdir, dataset=dataset)

    return fit


def keras_fit(model_name: str, x, y) -> Callable[[int], None]:
    """Keras 3 `model.fit` (JAX backend) on the same network, a fresh model every call."""

    def fit(epochs: int) -> None:
        model = keras_model(model_name)
        model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0)

    return fit


ROWS = {
    "jdl.Model.fit": model_fit,
    "jdl.train_and_evaluate": train_and_evaluate,
    "keras.Model.fit (jax)": keras_fit,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=6400, help="train examples per epoch")
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args(argv)
    keep_freed_memory()  # before JAX starts its threads, as the CLI does (all rows share it)
    import jax

    x, y = random_mnist(args.examples)
    rows = {k: v for k, v in ROWS.items() if not (args.skip_keras and k.startswith("keras"))}
    print(
        f"# batch {BATCH}, {args.examples} examples per epoch, {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, python {platform.python_version()}"
    )
    print(f"| model | {' | '.join(rows)} | Model.fit / train_and_evaluate | Model.fit / Keras |")
    print("|---" * (len(rows) + 3) + "|")
    for model_name in args.models:
        speeds = {}
        for name, make in rows.items():
            print(f"  {model_name}: {name} ...", file=sys.stderr, flush=True)
            speeds[name] = examples_per_s(make(model_name, x, y), args.examples)
        ratios = [
            speeds["jdl.Model.fit"] / speeds[other]
            for other in ("jdl.train_and_evaluate", "keras.Model.fit (jax)")
            if other in speeds
        ]
        cells = [f"{s:,.0f}" for s in speeds.values()] + [f"{r:.2f}x" for r in ratios]
        print(f"| {model_name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
