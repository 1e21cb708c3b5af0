"""Where an experiment command's time goes, from process start to exit.

    python -m benchmarks.process_time -- --config.data_dir=~/tensorflow_datasets
    python -m benchmarks.process_time --experiment experiments.mnist_mlp -- --config.num_epochs=1
    python -m benchmarks.process_time --mock_examples 60000  # tfds mock data, no download

Runs `python -m <experiment>` in a fresh process, as a user would, with timers around the
library's phases: Python start-up, imports, dataset load, model set-up, compilation
(JAX's own trace, lowering and compile events), training steps, evaluation, checkpoints,
plots and exit. A phase's time excludes the phases inside it, so the rows add up to the
whole process. `--mock_examples N` stands in tfds mock data of N examples per split for
the real dataset (its load time is then the mock generator's, not a disk read). A script,
not a test.
"""

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

PROCESS_START = time.time()  # as early as this module runs in the timed process

PHASES = (
    "python start-up",
    "imports",
    "dataset load",
    "model set-up",
    "compilation",
    "training steps",
    "evaluation",
    "checkpoints",
    "plots",
    "other (the experiment outside these)",
    "exit",
)


class PhaseClock:
    """Exclusive wall time per phase: time inside a nested phase, or reported by JAX as
    compilation, counts for that phase only."""

    def __init__(self, now=time.perf_counter):
        self.now = now
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.stack: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        self._switch(name)
        try:
            yield
        finally:
            self._switch(None)

    def _switch(self, entering: str | None) -> None:
        now = self.now()
        if self.stack:
            current, since = self.stack[-1]
            self.seconds[current] += now - since
        if entering is None:
            self.stack.pop()
            if self.stack:
                self.stack[-1] = (self.stack[-1][0], now)
        else:
            self.stack.append((entering, now))

    def compiled(self, seconds: float) -> None:
        """JAX reports a compilation after it ran inside the current phase: move it."""
        self.seconds["compilation"] += seconds
        if self.stack:
            self.seconds[self.stack[-1][0]] -= seconds


class Coverage:
    """The union of time spans: JAX traces nested functions inside their caller's trace,
    so compilation spans overlap and their plain sum would count time twice."""

    def __init__(self):
        self.spans: list[tuple[float, float]] = []  # disjoint, sorted

    def add(self, start: float, end: float) -> float:
        """Adds [start, end]; returns its seconds not covered before."""
        covered = sum(max(0.0, min(end, e) - max(start, s)) for s, e in self.spans)
        merged = []
        for s, e in sorted([*self.spans, (start, end)]):
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        self.spans = merged
        return end - start - covered


def timed(clock: PhaseClock, name: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with clock.phase(name):
            return function(*args, **kwargs)

    return wrapper


def instrument(clock: PhaseClock) -> None:
    """Wraps the library's phases and listens to JAX's compilation events."""
    import jax

    from jdl import checkpointing, engine, loop

    compile_events = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )
    coverage = Coverage()

    def on_span(event: str, start: float, end: float, **_) -> None:
        if event in compile_events:
            clock.compiled(coverage.add(start, end))

    jax.monitoring.register_event_time_span_listener(on_span)
    loop.load_config_dataset = timed(clock, "dataset load", loop.load_config_dataset)
    loop.make_task = timed(clock, "model set-up", loop.make_task)
    engine.train = timed(clock, "training steps", engine.train)
    engine.evaluate = timed(clock, "evaluation", engine.evaluate)
    engine.plot_curves = timed(clock, "plots", engine.plot_curves)
    for method in ("save", "restore", "wait_until_finished", "close"):
        function = getattr(checkpointing.Checkpointer, method)
        setattr(checkpointing.Checkpointer, method, timed(clock, "checkpoints", function))


def child(experiment: str, workdir: str, overrides: list[str], mock_examples: int) -> None:
    """The timed process: the experiment's command line, instrumented."""
    import importlib
    import runpy

    clock = PhaseClock()
    clock.seconds["python start-up"] = PROCESS_START - float(os.environ["PROCESS_TIME_LAUNCH"])
    with clock.phase("other (the experiment outside these)"):
        with clock.phase("imports"):
            from jdl.parallel.allocator import keep_freed_memory

            keep_freed_memory()  # first, as the experiments' command line does
            import jax  # noqa: F401  (what the run imports anyway, timed on its own)
            import tensorflow_datasets as tfds

            import jdl.loop  # noqa: F401

            importlib.import_module(experiment)
        instrument(clock)
        sys.argv = [experiment, f"--workdir={workdir}", *overrides]
        mock = tfds.testing.mock_data(num_examples=mock_examples) if mock_examples else None
        with mock or contextlib.nullcontext():
            runpy.run_module(experiment, run_name="__main__")
    print("PHASES " + json.dumps({"seconds": clock.seconds, "end": time.time()}), flush=True)


def measure(experiment: str, overrides: list[str], mock_examples: int) -> dict:
    """Phase seconds of one fresh `python -m experiment` process."""
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, "-m", "benchmarks.process_time", "--child", experiment]
        command += ["--workdir", workdir, "--mock_examples", str(mock_examples), "--", *overrides]
        launch = time.time()
        environment = {**os.environ, "PROCESS_TIME_LAUNCH": repr(launch)}
        done = subprocess.run(command, capture_output=True, text=True, env=environment)
        end = time.time()
    if done.returncode != 0:
        raise SystemExit(f"{experiment} failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.rsplit("PHASES ", 1)[1])
    seconds = report["seconds"]
    seconds["exit"] = end - report["end"]
    lines = [line for line in done.stdout.splitlines() if line.startswith("Done:")]
    return {"seconds": seconds, "total": end - launch, "done": lines[-1] if lines else ""}


def table(result: dict) -> str:
    total = result["total"]
    lines = [f"{'phase':<38} {'seconds':>8} {'share':>6}"]
    for name in PHASES:
        seconds = result["seconds"][name]
        lines.append(f"{name:<38} {seconds:>8.2f} {seconds / total:>6.1%}")
    lines.append(f"{'whole process':<38} {total:>8.2f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="experiments.mnist_cnn")
    parser.add_argument("--mock_examples", type=int, default=0, help="tfds mock data instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="--config.KEY=VALUE flags, after --")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.workdir, args.overrides, args.mock_examples)
        return
    result = measure(args.experiment, args.overrides, args.mock_examples)
    print(f"python -m {args.experiment} {' '.join(args.overrides)}")
    print(result["done"])
    print(table(result))


if __name__ == "__main__":
    main()
