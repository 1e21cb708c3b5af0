"""The training engine: a `Task` trained on a `Dataset` under a `Strategy`, no config needed.

`train(task, dataset, strategy, settings, workdir=None, callbacks=())` is the one training
loop of jdl: `train_and_evaluate` (config-driven runs) and `jdl.Model.fit` both run on it.
It is read in four parts, top to bottom:

1. set-up and restore: the optional workdir, its checkpoints and metric records;
2. the trainer: one epoch's steps through the fastest compiled form the settings allow;
3. the decisions: when to read metrics, evaluate, save and stop (`Plan`, `should_stop`);
4. reporting: the progress bar, printed lines, metrics.jsonl, TensorBoard and curves.png.

Without a workdir nothing is written: no checkpoints, no metric files, no figures.
"""

import contextlib
import dataclasses
import functools
import itertools
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from tqdm.auto import tqdm

from jdl.checkpointing import Checkpointer, CheckpointMismatchError
from jdl.data import Dataset
from jdl.data.checks import check_labels
from jdl.metrics import (
    EarlyStopping,
    MetricWriter,
    check_best_metric,
    check_finite,
    metric_mode,
    read_records,
)
from jdl.parallel import Strategy, stacked_chunks
from jdl.parallel.prefetch import prefetch
from jdl.plots import plot_curves
from jdl.preemption import PreemptedError, StopRequests
from jdl.state import count_params
from jdl.steps.metrics import merge, summarize
from jdl.tasks.base import Task

# ---------------------------------------------------------------------------------------------
# What a run is told and what it gives back.


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long to train and how often to log, evaluate and save; read from a config at the
    edge (`jdl.loop.settings_from_config`) or given directly (`jdl.Model.fit`).

    Intervals are in steps; 0 means only at the end of every epoch (evaluation and saving
    also happen then, and at the end of training). `best_mode` "min" or "max"; None or "auto"
    looks the direction up in `jdl.metrics.METRIC_MODES`. `patience` counts evaluations
    without improvement of `best_metric` before stopping (0: never). `time_budget_s` > 0
    stops and saves before that many seconds have passed. `resume` False ignores the
    workdir's checkpoints (starting from `task.state`); new saves still go there.
    """

    num_epochs: int = 1
    num_steps: int | None = None  # overrides num_epochs
    steps_per_call: int = 1
    data_on_device: bool = False
    log_every: int = 50
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    best_metric: str = "eval/accuracy"
    best_mode: str | None = None
    patience: int = 0
    time_budget_s: float = 0.0
    progress_bar: bool = True
    seed: int = 0
    resume: bool = True
    label: str = "model"  # names the model in messages and in the curves' title

    def __post_init__(self):
        for name in ("steps_per_call", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: every epoch), got {getattr(self, name)}")
        if self.num_steps is None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {self.num_epochs}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1 or None, got {self.num_steps}")
        metric_mode(self.best_metric, self.best_mode)  # an unknown direction raises now

    @property
    def mode(self) -> str:
        """'min' or 'max': which way `best_metric` improves."""
        return metric_mode(self.best_metric, self.best_mode)

    def total_steps(self, steps_per_epoch: int) -> int:
        """Steps of the whole run: `num_steps` if set, else `num_epochs` epochs."""
        return self.num_steps or self.num_epochs * steps_per_epoch


class Callback(Protocol):
    """What the engine calls on a callback; every method is optional.

    `state` is the training state as the strategy placed it (`strategy.to_host(state)` gives
    a host copy). `logs` maps `train/<name>` (means over the epoch's steps run in this call)
    and `eval/<name>` to floats. `on_epoch_end` returning True stops training after that
    epoch, as early stopping does.
    """

    def on_train_begin(self, state: Any) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float], state: Any) -> bool | None: ...

    def on_train_end(self, state: Any, logs: dict[str, float]) -> None: ...


@dataclasses.dataclass
class TrainResult:
    """What a run leaves in memory: the final state (on the host), a summary of its last
    metrics, and one record per epoch ended in this call (`epoch`, `step`, the epoch's
    mean `train/...` metrics and its `eval/...` metrics)."""

    state: Any
    metrics: dict
    history: list[dict] = dataclasses.field(default_factory=list)


def train(
    task: Task,
    dataset: Dataset,
    strategy: Strategy,
    settings: Settings,
    workdir: str | Path | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Trains `task.state` on `dataset`, evaluating every epoch; resumes from `workdir`.

    With a workdir: checkpoints (latest and best), metrics.jsonl, TensorBoard events and
    curves.png; SIGTERM / SIGINT or the time budget save and raise `PreemptedError`. Without
    one nothing is written, and the time budget simply ends training early. `callbacks` are
    objects with any of the `Callback` methods, called in order.
    """
    check_evaluated(task, dataset, settings.best_metric)
    workdir = None if workdir is None else writable_workdir(workdir)
    plan = Plan(settings, dataset.steps_per_epoch)
    checkpointer = open_checkpointer(workdir, settings)
    reporter = None
    try:
        state = restore(task.state, workdir, checkpointer, settings, plan)
        title = f"{settings.label} on {dataset.info.name}"
        reporter = Reporter(workdir, settings, plan.total_steps, int(state.step), title)
        say(
            f"{dataset.info.name}: {dataset.info.num_train} train / {dataset.info.num_eval} "
            f"eval examples, {settings.label} with {count_params(state.params):,} parameters, "
            f"parallel={strategy.mode} on {strategy.num_devices} device(s)."
        )
        run = _Run(task, dataset, strategy, settings, plan, checkpointer, reporter, callbacks)
        result = run.train(state)
    finally:
        if reporter is not None:
            reporter.close()
        if checkpointer is not None:
            checkpointer.close()
    reporter.finish(result.metrics, settings.best_metric)
    return result


# ---------------------------------------------------------------------------------------------
# 1. Set-up and restore.


def check_evaluated(task: Task, dataset: Dataset, best_metric: str) -> None:
    """A ValueError, before any training, when evaluation will not give `best_metric`.

    The eval step's metrics come from the shapes of its sums on the first eval batch
    (`jax.eval_shape`: traced, not run), `after_eval`'s from `task.after_eval_metrics`; with
    those undeclared, or no eval split, the first evaluation checks instead.
    """
    if not dataset.info.num_eval or (task.after_eval and task.after_eval_metrics is None):
        return
    sums = jax.eval_shape(task.eval_step, task.state, next(dataset.eval_batches()))
    names = [*summarize(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), sums))]
    names += task.after_eval_metrics or []
    check_best_metric({f"eval/{name}": 0.0 for name in names}, best_metric)


def writable_workdir(workdir: str | Path) -> Path:
    """`workdir`, created if needed; a ValueError naming it when it cannot be written."""
    if "://" in str(workdir):
        raise ValueError(
            f"workdir {str(workdir)!r}: jdl writes its workdir to a local or shared filesystem "
            "path; URLs such as gs:// are not supported yet (tfds data_dir may be one)"
        )
    workdir = Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{jax.process_index()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise ValueError(f"workdir {str(workdir)!r} is not writable: {error}") from error
    return workdir


def open_checkpointer(workdir: Path | None, settings: Settings) -> Checkpointer | None:
    """workdir/checkpoints, keeping the last `keep_checkpoints` and the best; None: no workdir."""
    if workdir is None:
        return None
    return Checkpointer(
        workdir / "checkpoints",
        max_to_keep=settings.keep_checkpoints,
        best_metric=settings.best_metric,
        best_mode=settings.mode,
    )


def restore(
    state, workdir: Path | None, checkpointer: Checkpointer | None, settings: Settings, plan: "Plan"
):
    """The latest checkpoint restored into `state`'s structure, or `state` if there is none
    (or `settings.resume` is False). Says where it resumed, and when training had finished."""
    if checkpointer is None or not settings.resume or checkpointer.latest_step() is None:
        return state
    directory = workdir / "checkpoints"
    try:
        state, _ = checkpointer.restore(state)
    except CheckpointMismatchError as mismatch:
        raise CheckpointMismatchError(
            f"{directory} holds checkpoints of another model or optimizer; use a new workdir "
            f"or the config that wrote them. {mismatch}"
        ) from mismatch
    step = int(state.step)
    done = (
        f": training finished there, so only evaluating; use a new workdir, or more epochs "
        f"(num_epochs / num_steps beyond {plan.total_steps} steps), to train more"
        if plan.finished(step)
        else ""
    )
    say(f"Resumed from {directory} at step {step}{done}.")
    return state


# ---------------------------------------------------------------------------------------------
# 2. The trainer: one epoch's steps per call of `run_epoch`.


class _TwoInFlight:
    """Keeps at most two compiled calls queued: with ~100 sharded calls queued, XLA:CPU's
    all-reduce over CPU devices timed out and aborted the process."""

    def __init__(self):
        self.previous = None

    def push(self, result):
        """Waits for the call before the one that returned `result`; returns `result`."""
        jax.block_until_ready(self.previous)
        self.previous = result
        return result


class Trainer:
    """Runs one epoch's steps through the fastest compiled form the settings allow."""

    def __init__(self, settings: Settings, strategy: Strategy, dataset: Dataset, step):
        self.strategy, self.dataset = strategy, dataset
        self.data_on_device = settings.data_on_device
        self.steps_per_call = 1 if settings.data_on_device else settings.steps_per_call
        self.single = strategy.compile_train(step)
        if settings.data_on_device:
            self.epoch_fn = strategy.compile_train_epoch(step, dataset.batch_size)
            self.resident = strategy.put_replicated(
                check_labels(dataset.train_arrays(), dataset.info)
            )
        elif self.steps_per_call > 1:
            self.multi = strategy.compile_train_steps(step)

    def run_epoch(self, state, epoch: int, start: int, end: int, rng) -> Iterator[tuple]:
        """Runs steps [start, end) of `epoch` (0-based), yielding (state, summed metrics,
        steps done) after each compiled call."""
        if self.data_on_device and start == 0 and end == self.dataset.steps_per_epoch:
            state, metrics = self.epoch_fn(state, self.resident, rng)
            yield state, metrics, end
            return
        batches = itertools.islice(self.dataset.train_batches(epoch, start), end - start)
        batches = (check_labels(batch, self.dataset.info) for batch in batches)
        in_flight = _TwoInFlight()
        for fn, device_batch, done in prefetch(self._placed_calls(batches)):
            state, metrics = fn(state, device_batch, rng)
            yield state, in_flight.push(metrics), done

    def _placed_calls(self, batches: Iterator[dict]) -> Iterator[tuple]:
        """(compiled function, device batch, steps) per call: K stacked batches at a time
        (a short tail too, padded), single ones for K == 1 or part of an on-device epoch."""
        if self.steps_per_call == 1:
            for batch in batches:
                yield self.single, self.strategy.put_batch(batch), 1
            return
        for stacked, count in stacked_chunks(batches, self.steps_per_call):
            run = functools.partial(self.multi, num_steps=count)
            yield run, self.strategy.put_batch(stacked, stacked=True), count


def evaluate(eval_fn, state, dataset: Dataset, strategy: Strategy) -> dict:
    """Mean eval metrics over every example of the eval split (padding masked out)."""
    totals, in_flight = None, _TwoInFlight()
    for batch in dataset.eval_batches():
        batch = check_labels(batch, dataset.info)
        totals = merge(totals, in_flight.push(eval_fn(state, strategy.put_batch(batch))))
    return {f"eval/{k}": v for k, v in summarize(totals).items()}


# ---------------------------------------------------------------------------------------------
# 3. The decisions: when to read metrics, evaluate, save and stop.


def _crossed(every: int, previous: int, step: int) -> bool:
    """True when a multiple of `every` lies in (previous, step]; `every` 0 never fires."""
    return bool(every) and step // every != previous // every


class Plan:
    """Where a run is going and what is due after a call that moved it from `previous`
    to `step`: each decision depends on step counts alone, so every process agrees."""

    def __init__(self, settings: Settings, steps_per_epoch: int):
        self.settings, self.steps_per_epoch = settings, steps_per_epoch
        self.total_steps = settings.total_steps(steps_per_epoch)
        self.num_epochs = -(-self.total_steps // steps_per_epoch)

    def epochs_from(self, step: int) -> range:
        """The (1-based) epochs still to run from `step` on."""
        return range(step // self.steps_per_epoch + 1, self.num_epochs + 1)

    def steps_of(self, epoch: int, step: int) -> tuple[int, int]:
        """The steps [start, end) of `epoch` (1-based) still to run, counted in the epoch."""
        first = (epoch - 1) * self.steps_per_epoch
        return step - first, min(self.steps_per_epoch, self.total_steps - first)

    def finished(self, step: int) -> bool:
        return step >= self.total_steps

    def ends_epoch(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0 or self.finished(step)

    def should_evaluate(self, previous: int, step: int) -> bool:
        """At every epoch's end, at the end of training and every `eval_every` steps."""
        return self.ends_epoch(step) or _crossed(self.settings.eval_every, previous, step)

    def should_save(self, previous: int, step: int, evaluating: bool, interrupted) -> bool:
        """After every evaluation, before stopping early and every `checkpoint_every` steps."""
        return (
            evaluating
            or bool(interrupted)
            or _crossed(self.settings.checkpoint_every, previous, step)
        )

    def should_log(self, previous: int, step: int, saving: bool) -> bool:
        """Train metrics are read (and checked for NaN) every `log_every` steps and before
        anything is saved, so that a NaN is never checkpointed."""
        return saving or _crossed(self.settings.log_every, previous, step)


def should_stop(early_stop: bool, interrupted: str | None) -> bool:
    """Training ends before its last step when early stopping or a callback asked for it,
    or when a signal or the time budget interrupted it."""
    return early_stop or bool(interrupted)


def callbacks_stop(callbacks: Sequence[Any], epoch: int, logs: dict, state) -> bool:
    """Calls every callback's `on_epoch_end`; True when any of them asks to stop."""
    answers = [_call(c, "on_epoch_end", epoch, logs, state) for c in callbacks]
    return any(answer is True for answer in answers)


def _call(callback, hook: str, *args):
    method = getattr(callback, hook, None)
    return None if method is None else method(*args)


# ---------------------------------------------------------------------------------------------
# The run: the trainer driven by the plan, reported by the reporter.


class _Window:
    """Train metrics and wall time of the steps since the last read-back, and the epoch's."""

    def __init__(self, step: int, batch_size: int):
        self.first_step, self.start, self.batch_size = step, step, batch_size
        self.sums, self.epoch_sums = None, None
        self.clock = time.perf_counter()
        self.timed_examples, self.timed_seconds = 0, 0.0

    def add(self, metrics) -> None:
        self.sums = merge(self.sums, metrics)

    def read(self, step: int) -> tuple[dict, float]:
        """Mean train metrics (NaN-checked) and examples/s since the last read; resets."""
        sums = jax.device_get(self.sums)
        self.epoch_sums = merge(self.epoch_sums, sums)
        metrics = {f"train/{k}": v for k, v in summarize(sums).items()}
        check_finite(metrics, self.start + 1, step)
        seconds = time.perf_counter() - self.clock
        examples = (step - self.start) * self.batch_size
        if self.start > self.first_step:  # the first window includes compilation
            self.timed_examples += examples
            self.timed_seconds += seconds
        self.sums, self.start = None, step
        self.restart_clock()
        return metrics, examples / max(seconds, 1e-9)

    def read_epoch(self) -> dict:
        """Mean train metrics of the epoch's steps read so far; starts the next epoch."""
        sums, self.epoch_sums = self.epoch_sums, None
        return {} if sums is None else {f"train/{k}": v for k, v in summarize(sums).items()}

    def restart_clock(self) -> None:
        """Starts timing anew: evaluating and saving do not count as training time."""
        self.clock = time.perf_counter()

    @property
    def throughput(self) -> float | None:
        return self.timed_examples / self.timed_seconds if self.timed_seconds else None


@dataclasses.dataclass
class _Progress:
    """Where a run stands after its latest call."""

    step: int
    train_metrics: dict = dataclasses.field(default_factory=dict)
    eval_metrics: dict = dataclasses.field(default_factory=dict)
    early_stop: bool = False  # early stopping or a callback asked to stop
    interrupted: str | None = None  # a signal or the time budget: why
    longest_call: float = 0.0  # seconds, for the time budget


class _Run:
    """One call of `train`: the trainer's calls, each followed by what the plan says is due."""

    def __init__(self, task, dataset, strategy, settings, plan, checkpointer, reporter, callbacks):
        self.task, self.dataset, self.strategy = task, dataset, strategy
        self.settings, self.plan = settings, plan
        self.checkpointer, self.reporter, self.callbacks = checkpointer, reporter, callbacks
        self.trainer = Trainer(settings, strategy, dataset, task.train_step)
        self.eval_fn = strategy.compile_eval(task.eval_step)
        self.stopper = EarlyStopping(settings.best_metric, settings.patience, settings.mode)
        self.requests = StopRequests(settings.time_budget_s)
        self.history: list[dict] = []

    def train(self, host_state) -> TrainResult:
        start_time = time.perf_counter()
        # A copy: the steps donate their state, and the task's own stays usable.
        state = self.strategy.put_replicated(host_state, copy=True)
        progress = _Progress(step=int(host_state.step))
        window = _Window(progress.step, self.dataset.batch_size)
        for callback in self.callbacks:
            _call(callback, "on_train_begin", state)
        # Signals are caught only when a checkpoint can be saved before stopping.
        with self.requests if self.checkpointer is not None else contextlib.nullcontext():
            state = self.run_epochs(state, progress, window)
        if progress.interrupted and self.checkpointer is not None:
            raise PreemptedError(
                f"Preempted at step {progress.step} ({progress.interrupted}); checkpoint saved "
                f"in {self.reporter.workdir / 'checkpoints'}. Run the same command again to "
                "continue."
            )
        if not progress.eval_metrics:  # nothing left to train (a finished workdir): still report
            progress.eval_metrics = self.evaluate(state, self.plan.num_epochs)
        summary = {
            **progress.train_metrics,
            **progress.eval_metrics,
            "step": progress.step,
            "examples_per_sec": window.throughput or float("nan"),
            "wall_time_s": time.perf_counter() - start_time,
            "early_stopped": progress.early_stop,
        }
        if progress.interrupted:
            summary["interrupted"] = progress.interrupted
        for callback in self.callbacks:
            _call(callback, "on_train_end", state, summary)
        return TrainResult(self.strategy.to_host(state), summary, self.history)

    def run_epochs(self, state, progress: _Progress, window: _Window):
        """Trains epoch after epoch until the plan's end or a stop; returns the last state."""
        rng = self.strategy.put_replicated(
            jax.random.fold_in(jax.random.key(self.settings.seed), 1)
        )
        for epoch in self.plan.epochs_from(progress.step):
            start, end = self.plan.steps_of(epoch, progress.step)
            call_start = time.perf_counter()
            calls = self.trainer.run_epoch(state, epoch - 1, start, end, rng)
            for state, metrics, done in calls:
                progress.longest_call = max(progress.longest_call, time.perf_counter() - call_start)
                window.add(metrics)
                self.after_call(state, epoch, progress, window, done)
                if should_stop(progress.early_stop, progress.interrupted):
                    calls.close()  # stops prefetching now, not when the generator is collected
                    return state
                call_start = time.perf_counter()
        return state

    def after_call(self, state, epoch: int, progress: _Progress, window: _Window, done: int):
        """Reads metrics, evaluates, saves and asks the callbacks, as far as each is due."""
        previous = progress.step
        step = progress.step = previous + done
        evaluating = self.plan.should_evaluate(previous, step)
        if not self.plan.finished(step):
            progress.interrupted = self.requests.reason(progress.longest_call)
        saving = self.plan.should_save(previous, step, evaluating, progress.interrupted)
        if self.plan.should_log(previous, step, saving):
            progress.train_metrics, speed = window.read(step)
            self.reporter.log_train(step, epoch, progress.train_metrics, speed)
        self.reporter.advance(done)
        if evaluating:
            progress.eval_metrics = self.evaluate(state, epoch)
            self.reporter.log_eval(step, epoch, {**progress.train_metrics, **progress.eval_metrics})
            if progress.eval_metrics:  # without an eval split there is nothing to rank
                progress.early_stop = self.stopper.update(progress.eval_metrics)
        if saving:
            self.save(state, epoch, progress.eval_metrics if evaluating else None)
            window.restart_clock()
        if self.plan.ends_epoch(step):
            logs = {**window.read_epoch(), **progress.eval_metrics}
            self.history.append({"epoch": epoch, "step": step, **logs})
            progress.early_stop |= callbacks_stop(self.callbacks, epoch, logs, state)

    def evaluate(self, state, epoch: int) -> dict:
        """Eval metrics over the whole eval split, plus what the task's `after_eval` adds."""
        if self.dataset.info.num_eval == 0:
            return {}
        metrics = evaluate(self.eval_fn, state, self.dataset, self.strategy)
        if self.task.after_eval is not None:
            extra = self.task.after_eval(state, epoch, self.reporter.workdir)
            metrics.update({f"eval/{name}": value for name, value in extra.items()})
        return metrics

    def save(self, state, epoch: int, metrics: dict | None) -> None:
        """A checkpoint at the current step (ranked by `metrics` when given); no-op without
        a workdir."""
        if self.checkpointer is None:
            return
        host_state = self.strategy.to_host(state)
        self.checkpointer.save(
            int(host_state.step), host_state, metadata={"epoch": epoch}, metrics=metrics, force=True
        )


# ---------------------------------------------------------------------------------------------
# 4. Reporting.


def _describe(eval_metrics: dict[str, float], first: str) -> str:
    """`eval accuracy 0.9917, eval loss 0.0301`: the metric `first` leads."""
    names = sorted(eval_metrics, key=lambda name: name != first)
    return ", ".join(f"{name.replace('/', ' ')} {eval_metrics[name]:.4f}" for name in names)


def say(message: str) -> None:
    """Prints on process 0 only, through tqdm so that a progress bar stays intact."""
    if jax.process_index() == 0:
        tqdm.write(message)


class Reporter:
    """What a person sees: a progress bar and printed lines; with a workdir also
    metrics.jsonl, TensorBoard events and curves.png (process 0 writes)."""

    def __init__(
        self, workdir: Path | None, settings: Settings, total_steps: int, step: int, title: str
    ):
        self.workdir, self.title = workdir, title
        self.writer = None if workdir is None else MetricWriter(workdir)
        if self.writer is not None:
            self.writer.truncate_after(step)  # a resumed run writes the lost steps' records again
        show = settings.progress_bar and jax.process_index() == 0
        self.bar = tqdm(total=total_steps, initial=step, disable=not show, unit="step")

    def log_train(self, step: int, epoch: int, metrics: dict, speed: float) -> None:
        self._write(step, epoch, {**metrics, "train/examples_per_sec": speed})
        losses = {
            k.removeprefix("train/"): f"{v:.4f}" for k, v in metrics.items() if k.endswith("loss")
        }
        self.bar.set_postfix(**losses, ex_s=f"{speed:,.0f}")

    def advance(self, steps: int) -> None:
        self.bar.update(steps)

    def log_eval(self, step: int, epoch: int, shown: dict) -> None:
        """Writes the eval metrics among `shown` and prints all of them."""
        self._write(step, epoch, {k: v for k, v in shown.items() if k.startswith("eval/")})
        say(f"epoch {epoch} step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))

    def _write(self, step: int, epoch: int, metrics: dict) -> None:
        if self.writer is not None:
            self.writer.write(step, epoch, metrics)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def finish(self, summary: dict, best_metric: str) -> None:
        """curves.png (with a workdir) and the closing line."""
        if self.writer is not None and self.writer.enabled:
            plot_curves(
                read_records(self.writer.path),
                self.workdir / "curves.png",
                title=self.title,
            )
        throughput = summary["examples_per_sec"]
        speed = (
            f"{throughput:,.0f} train examples/s after compilation"
            if np.isfinite(throughput)
            else "too few steps to time after compilation"
        )
        eval_metrics = {k: v for k, v in summary.items() if k.startswith("eval/")}
        where = f" Workdir: {self.workdir}" if self.workdir is not None else ""
        say(
            f"Done{' (early stop)' if summary['early_stopped'] else ''}: "
            f"{_describe(eval_metrics, best_metric)}, "
            f"{speed}, {summary['wall_time_s']:.1f} s wall time, step {summary['step']}.{where}"
        )
