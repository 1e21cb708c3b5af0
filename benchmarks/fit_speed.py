"""Speed of `jdl.Model.fit` against `jdl.train_and_evaluate` and Keras 3 (JAX backend) `fit`.

    python -m benchmarks.fit_speed                 # from the repo root; one table
    python -m benchmarks.fit_speed --examples 3200 --epochs 4 --skip-keras

Every row trains the documents' MLP (784-256-10) or CNN (Conv32-pool-Conv64-pool-Dense10)
with Adam 1e-3 at batch 128 on the same random MNIST-shaped arrays, for `--epochs` epochs in
one call. The first epoch (compilation) is not counted. `Model.fit` and Keras are timed
alike, by the median wall time between two epoch ends (a callback takes the time);
`train_and_evaluate` reports its engine's own examples/s, which leaves out the time spent
evaluating (a one-batch eval split) and saving checkpoints at every epoch's end. A benchmark
script, not a test: it prints a table and asserts nothing.
"""

import argparse
import contextlib
import functools
import os
import platform
import statistics
import sys
import tempfile
import time

from benchmarks.train_speed import BATCH, LEARNING_RATE, NUM_CLASSES, import_keras, keras_model
from jdl.parallel.allocator import keep_freed_memory


def random_mnist(num_examples: int, seed: int = 0) -> tuple:
    """Random images and labels of MNIST's shapes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((num_examples, 28, 28, 1), dtype=np.float32)
    return x, rng.integers(0, NUM_CLASSES, num_examples).astype(np.int32)


class EpochClock:
    """Records the time at every epoch's end (a Keras and a jdl callback alike)."""

    def __init__(self):
        self.times: list[float] = []

    def set_model(self, model) -> None:
        """Keras's callback protocol; the model is not needed."""
        del model

    def on_epoch_end(self, epoch, logs=None) -> None:
        """Records the time."""
        self.times.append(time.perf_counter())

    def examples_per_s(self, num_examples: int) -> float:
        """Examples of one epoch over the median time between epoch ends (from the first)."""
        gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return (num_examples // BATCH) * BATCH / statistics.median(gaps)


def model_fit(model_name: str, x, y, epochs: int, steps_per_call: int = 8) -> float:
    """`jdl.Model(<jdl's registry module>).fit`, timed between epoch ends."""
    import optax

    import jdl
    from jdl.models import build_model

    model = jdl.Model(build_model({"name": model_name}, NUM_CLASSES))
    model.compile(
        optax.adam(LEARNING_RATE), "sparse_categorical_crossentropy", steps_per_call=steps_per_call
    )
    clock = EpochClock()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[clock])
    return clock.examples_per_s(len(x))


def train_and_evaluate(model_name: str, x, y, epochs: int) -> float:
    """`jdl.train_and_evaluate` with a config naming the same model: its engine's examples/s."""
    import jdl
    from jdl.data import from_arrays

    config = jdl.base_config()
    config.model.name, config.num_epochs, config.progress_bar = model_name, epochs, False
    config.batch_size, config.eval_batch_size = BATCH, BATCH
    config.learning_rate, config.log_every = LEARNING_RATE, len(x) // BATCH
    dataset = from_arrays(
        x, y, x[:BATCH], y[:BATCH], batch_size=BATCH, eval_batch_size=BATCH, seed=0
    )
    # Its progress lines go to stderr, so that stdout holds only the table.
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(sys.stderr):
        return jdl.train_and_evaluate(config, workdir, dataset=dataset).metrics["examples_per_sec"]


def keras_fit(model_name: str, x, y, epochs: int) -> float:
    """Keras 3 `model.fit` (JAX backend) on the same network, timed between epoch ends."""
    keras = import_keras()
    clock = EpochClock()
    callback = keras.callbacks.LambdaCallback(on_epoch_end=clock.on_epoch_end)
    model = keras_model(model_name)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[callback])
    return clock.examples_per_s(len(x))


ROWS = {
    "jdl.Model.fit (default: 8 steps per call)": model_fit,
    "jdl.Model.fit, steps_per_call=1": functools.partial(model_fit, steps_per_call=1),
    "jdl.train_and_evaluate": train_and_evaluate,
    "keras.Model.fit (jax)": keras_fit,
}


def main(argv: list[str] | None = None) -> None:
    """Measures every row and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=6400, help="train examples per epoch")
    parser.add_argument("--epochs", type=int, default=4, help="per call; the first is not timed")
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args(argv)
    keep_freed_memory()  # before JAX starts its threads, as the CLI does (all rows share it)
    import jax

    x, y = random_mnist(args.examples)
    rows = {k: v for k, v in ROWS.items() if not (args.skip_keras and k.startswith("keras"))}
    print(
        f"# batch {BATCH}, {args.examples} examples x {args.epochs} epochs (first untimed), "
        f"{jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, python {platform.python_version()}"
    )
    print("| model | API | examples/s | x train_and_evaluate | x Keras |")
    print("|---|---|---:|---:|---:|")
    for model_name in args.models:
        speeds = {}
        for name, measure in rows.items():
            print(f"  {model_name}: {name} ...", file=sys.stderr, flush=True)
            speeds[name] = measure(model_name, x, y, args.epochs)
        for name, speed in speeds.items():
            ratios = [
                f"{speed / speeds[other]:.2f}" if other in speeds else "-"
                for other in ("jdl.train_and_evaluate", "keras.Model.fit (jax)")
            ]
            print(f"| {model_name} | {name} | {speed:,.0f} | {' | '.join(ratios)} |")


if __name__ == "__main__":
    main()
