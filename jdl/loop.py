"""`train_and_evaluate(config, workdir)`: the one side-effecting training loop."""

import dataclasses
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jdl import distributed
from jdl.checkpointing import Checkpointer, CheckpointMismatchError
from jdl.config import total_train_steps, validate_config
from jdl.data import Dataset, load_dataset
from jdl.metrics import (
    EarlyStopping,
    MetricWriter,
    check_finite,
    lower_is_better,
    read_records,
)
from jdl.parallel import Strategy
from jdl.parallel.prefetch import prefetch
from jdl.plots import plot_curves
from jdl.preemption import PreemptedError, StopRequests
from jdl.state import count_params
from jdl.steps.metrics import merge, summarize
from jdl.tasks import make_task


def evaluate(eval_fn, state, dataset: Dataset, strategy: Strategy) -> dict:
    """Mean eval metrics over every example of the eval split (padding masked out)."""
    totals = None
    for batch in dataset.eval_batches():
        totals = merge(totals, eval_fn(state, strategy.put_batch(batch)))
    return {f"eval/{k}": v for k, v in summarize(totals).items()}


def _chunks(batches: Iterator[dict], k: int) -> Iterator[list[dict]]:
    """Groups batches into lists of k (the last list may be shorter)."""
    chunk = []
    for batch in batches:
        chunk.append(batch)
        if len(chunk) == k:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _crossed(every: int, previous: int, step: int) -> bool:
    """True when a multiple of `every` lies in (previous, step]; `every` 0 never fires."""
    return bool(every) and step // every != previous // every


def _stack(batches: list[dict]) -> dict:
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


class _Trainer:
    """Runs one epoch's steps through the fastest compiled form the config allows."""

    def __init__(self, config, strategy: Strategy, dataset: Dataset, step):
        self.config, self.strategy, self.dataset = config, strategy, dataset
        self.single = strategy.compile_train(step)
        if config.data_on_device:
            self.epoch_fn = strategy.compile_train_epoch(step, config.batch_size)
            self.resident = strategy.put_replicated(dataset.train_arrays())
        elif config.steps_per_call > 1:
            self.multi = strategy.compile_train_steps(step)

    def run_epoch(self, state, epoch: int, start: int, end: int, rng) -> Iterator[tuple]:
        """Runs steps [start, end) of `epoch`, yielding (state, summed metrics, steps done)
        after each compiled call."""
        whole_epoch = start == 0 and end == self.dataset.steps_per_epoch
        if self.config.data_on_device and whole_epoch:
            state, metrics = self.epoch_fn(state, self.resident, rng)
            yield state, metrics, end
            return
        k = self.config.steps_per_call if not self.config.data_on_device else 1
        batches = itertools.islice(self.dataset.train_batches(epoch, start), end - start)
        in_flight = None
        for fn, device_batch, done in prefetch(self._placed_calls(batches, k)):
            state, metrics = fn(state, device_batch, rng)
            # At most two calls in flight: XLA:CPU collectives can deadlock with ~100 queued.
            jax.block_until_ready(in_flight)
            in_flight = metrics
            yield state, metrics, done

    def _placed_calls(self, batches: Iterator[dict], k: int) -> Iterator[tuple]:
        """(compiled function, device batch, steps) per call: K stacked batches at a time,
        single ones for k == 1, a short tail, or part of an on-device epoch."""
        for chunk in _chunks(batches, k):
            if len(chunk) == k and k > 1:
                yield self.multi, self.strategy.put_batch(_stack(chunk), stacked=True), k
            else:
                for batch in chunk:
                    yield self.single, self.strategy.put_batch(batch), 1


class _Window:
    """Train metrics and wall time of the steps since the last read-back."""

    def __init__(self, step: int, batch_size: int):
        self.first_step, self.start, self.batch_size = step, step, batch_size
        self.sums = None
        self.clock = time.perf_counter()
        self.timed_examples, self.timed_seconds = 0, 0.0

    def add(self, metrics) -> None:
        self.sums = merge(self.sums, metrics)

    def read(self, step: int) -> tuple[dict, float]:
        """Mean train metrics (NaN-checked) and examples/s since the last read; resets."""
        metrics = {f"train/{k}": v for k, v in summarize(self.sums).items()}
        check_finite(metrics, self.start + 1, step)
        seconds = time.perf_counter() - self.clock
        examples = (step - self.start) * self.batch_size
        if self.start > self.first_step:  # the first window includes compilation
            self.timed_examples += examples
            self.timed_seconds += seconds
        self.sums, self.start = None, step
        self.restart_clock()
        return metrics, examples / max(seconds, 1e-9)

    def restart_clock(self) -> None:
        """Starts timing anew: evaluating and saving do not count as training time."""
        self.clock = time.perf_counter()

    @property
    def throughput(self) -> float | None:
        return self.timed_examples / self.timed_seconds if self.timed_seconds else None


def _say(message: str) -> None:
    """Prints on process 0 only, through tqdm so that a progress bar stays intact."""
    if jax.process_index() == 0:
        tqdm.write(message)


def _describe(eval_metrics: dict[str, float], first: str) -> str:
    """`eval accuracy 0.9917, eval loss 0.0301`: the metric `first` leads."""
    names = sorted(eval_metrics, key=lambda name: name != first)
    return ", ".join(f"{name.replace('/', ' ')} {eval_metrics[name]:.4f}" for name in names)


@dataclasses.dataclass
class TrainResult:
    """What a run leaves in memory: the final state (on the host) and its metrics."""

    state: Any
    metrics: dict


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


def load_config_dataset(config: ml_collections.ConfigDict) -> Dataset:
    """The dataset a (validated) config names, batched for its global batch sizes."""
    return load_dataset(
        config.dataset,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        seed=config.seed,
        data_dir=config.data_dir,
        download=config.download,
        **config.data,
    )


def create_state(config: ml_collections.ConfigDict, dataset: Dataset):
    """The initial host state of the task `config` names (for restoring checkpoints)."""
    return make_task(config, dataset).state


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, dataset: Dataset | None = None
) -> TrainResult:
    """Trains and evaluates the task `config` names, resuming from `workdir` if it can.

    `dataset` (e.g. `jdl.data.from_arrays(...)`) replaces the one `config.dataset` names.
    Writes workdir/metrics.jsonl, TensorBoard events, checkpoints/ and curves.png. Raises
    `PreemptedError`, after saving, on SIGTERM / SIGINT or when `time_budget_s` runs out.
    """
    config = validate_config(config)
    distributed.initialize(
        config.distributed, config.coordinator_address, config.num_processes, config.process_id
    )
    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # jdl's are quick
    workdir = writable_workdir(workdir)
    strategy = Strategy(config.parallel)
    strategy.check_batch_size(config.batch_size)
    strategy.check_batch_size(config.eval_batch_size)
    dataset = dataset or load_config_dataset(config)
    info, steps_per_epoch = dataset.info, dataset.steps_per_epoch
    total_steps = total_train_steps(config, steps_per_epoch)
    num_epochs = -(-total_steps // steps_per_epoch)
    task = make_task(config, dataset)
    state = task.state

    best_mode = "min" if lower_is_better(config.best_metric) else "max"
    checkpointer = Checkpointer(
        workdir / "checkpoints",
        max_to_keep=config.keep_checkpoints,
        best_metric=config.best_metric,
        best_mode=best_mode,
    )
    writer = MetricWriter(workdir)
    if checkpointer.latest_step() is not None:
        try:
            state, _ = checkpointer.restore(state)
        except CheckpointMismatchError as mismatch:
            raise CheckpointMismatchError(
                f"{workdir} holds checkpoints of another model or optimizer; use a new workdir "
                f"or the config that wrote them. {mismatch}"
            ) from mismatch
        writer.truncate_after(int(state.step))
        _say(f"Resumed from {workdir / 'checkpoints'} at step {int(state.step)}.")
    _say(
        f"{info.name}: {info.num_train} train / {info.num_eval} eval examples, "
        f"{config.model.name} with {count_params(state.params):,} parameters, "
        f"parallel={config.parallel} on {strategy.num_devices} device(s)."
    )

    state = strategy.put_replicated(state)
    rng = strategy.put_replicated(jax.random.fold_in(jax.random.key(config.seed), 1))
    trainer = _Trainer(config, strategy, dataset, task.train_step)
    eval_fn = strategy.compile_eval(task.eval_step)
    stopper = EarlyStopping(config.best_metric, config.early_stopping_patience, best_mode)

    def run_eval(state, epoch: int) -> dict:
        metrics = evaluate(eval_fn, state, dataset, strategy)
        if task.after_eval is not None:
            extra = task.after_eval(state, epoch, workdir)
            metrics.update({f"eval/{name}": value for name, value in extra.items()})
        return metrics

    def save(state, epoch: int, metrics: dict | None = None):
        host_state = strategy.to_host(state)
        checkpointer.save(
            int(host_state.step), host_state, metadata={"epoch": epoch}, metrics=metrics, force=True
        )

    step = int(state.step)
    window = _Window(step, config.batch_size)
    eval_metrics: dict = {}
    train_metrics: dict = {}
    start_time = time.perf_counter()
    show_bar = config.progress_bar and jax.process_index() == 0
    bar = tqdm(total=total_steps, initial=step, disable=not show_bar, unit="step")
    early_stop, interrupted, longest_call = False, None, 0.0
    stop_requests = StopRequests(config.time_budget_s)
    try:
        with stop_requests:
            for epoch in range(step // steps_per_epoch + 1, num_epochs + 1):  # 1-based
                epoch_start = (epoch - 1) * steps_per_epoch
                end_in_epoch = min(steps_per_epoch, total_steps - epoch_start)
                calls = trainer.run_epoch(state, epoch - 1, step - epoch_start, end_in_epoch, rng)
                call_start = time.perf_counter()
                for state, metrics, done in calls:
                    longest_call = max(longest_call, time.perf_counter() - call_start)
                    previous, step = step, step + done
                    window.add(metrics)
                    end_of_epoch = step % steps_per_epoch == 0 or step >= total_steps
                    evaluate_now = end_of_epoch or _crossed(config.eval_every, previous, step)
                    interrupted = (
                        None if step >= total_steps else stop_requests.reason(longest_call)
                    )
                    save_now = (
                        evaluate_now
                        or bool(interrupted)
                        or _crossed(config.checkpoint_every, previous, step)
                    )
                    # Metrics are read (and checked for NaN) before anything is saved.
                    if save_now or _crossed(config.log_every, previous, step):
                        train_metrics, speed = window.read(step)
                        writer.write(
                            step, epoch, {**train_metrics, "train/examples_per_sec": speed}
                        )
                        losses = {
                            k.removeprefix("train/"): f"{v:.4f}"
                            for k, v in train_metrics.items()
                            if k.endswith("loss")
                        }
                        bar.set_postfix(**losses, ex_s=f"{speed:,.0f}")
                    bar.update(done)
                    if evaluate_now:
                        eval_metrics = run_eval(state, epoch)
                        writer.write(step, epoch, eval_metrics)
                        shown = {**train_metrics, **eval_metrics}
                        _say(
                            f"epoch {epoch} step {step}: "
                            + ", ".join(f"{k}={v:.4f}" for k, v in shown.items())
                        )
                        early_stop = stopper.update(eval_metrics)
                    if save_now:
                        save(state, epoch, eval_metrics if evaluate_now else None)
                        window.restart_clock()
                    if early_stop or interrupted:
                        break
                    call_start = time.perf_counter()
                if early_stop or interrupted:
                    calls.close()  # stops prefetching now, not when the generator is collected
                    break
        if interrupted:
            raise PreemptedError(
                f"Preempted at step {step} ({interrupted}); checkpoint saved in "
                f"{workdir / 'checkpoints'}. Run the same command again to continue."
            )
        if not eval_metrics:  # nothing left to train (a finished workdir): still report
            eval_metrics = run_eval(state, num_epochs)
    finally:
        bar.close()
        checkpointer.close()
        writer.close()

    wall = time.perf_counter() - start_time
    summary = {
        **train_metrics,
        **eval_metrics,
        "step": step,
        "examples_per_sec": window.throughput or float("nan"),
        "wall_time_s": wall,
        "early_stopped": early_stop,
    }
    if jax.process_index() == 0:
        plot_curves(
            read_records(writer.path),
            workdir / "curves.png",
            title=f"{config.model.name} on {info.name}",
        )
    speed = (
        f"{window.throughput:,.0f} train examples/s after compilation"
        if window.throughput
        else "too few steps to time after compilation"
    )
    _say(
        f"Done{' (early stop)' if early_stop else ''}: "
        f"{_describe(eval_metrics, config.best_metric)}, "
        f"{speed}, {wall:.1f} s wall time, step {step}. Workdir: {workdir}"
    )
    return TrainResult(state=strategy.to_host(state), metrics=summary)
