"""What a person reads: JSON lines, TensorBoard events, early stopping, the NaN guard."""

import json
import logging
import math
import os
import socket
import time
from pathlib import Path

import jax

logger = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    """Appends `{"step", "epoch", "<split>/<name>": value}` records to workdir/metrics.jsonl
    and the same scalars to TensorBoard. Only process 0 writes; other processes no-op.

    A file whose last line a kill cut short is repaired first, so appends start a new line.
    """

    def __init__(self, workdir: str | Path, enabled: bool | None = None):
        self.path = Path(workdir) / METRICS_FILE
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tensorboard = None
        if self.enabled:
            self._tensorboard = EventFile(Path(workdir) / "tensorboard")
            if self.path.exists() and not self.path.read_text().endswith("\n"):
                self._rewrite(read_records(self.path))

    def write(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {name: float(value) for name, value in metrics.items()}
        record = {"step": int(step), "epoch": int(epoch), **scalars}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self._tensorboard.write_scalars(int(step), scalars)

    def truncate_after(self, step: int) -> None:
        """Drops records past `step`: a resumed run rewrites what the lost steps had logged."""
        if self.enabled and self.path.exists():
            self._rewrite([r for r in read_records(self.path) if r["step"] <= step])

    def _rewrite(self, records: list[dict]) -> None:
        """Replaces the file by a renamed temporary one: a kill never leaves half of it."""
        temporary = self.path.with_name(f"{METRICS_FILE}.tmp")
        temporary.write_text("".join(json.dumps(r) + "\n" for r in records))
        temporary.replace(self.path)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


class EventFile:
    """A TensorBoard event file in `logdir`, each event flushed as it is written.

    TensorBoard's record format and protos, without its `EventFileWriter`, which imports
    TensorFlow (4 s) to make a directory, or tensorboardX's, which imports PyTorch (1.5 s,
    and 1 s more at exit) whenever it is installed.
    """

    def __init__(self, logdir: Path):
        from tensorboard.summary.writer.record_writer import RecordWriter

        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self._records = RecordWriter(open(logdir / name, "ab"))  # noqa: SIM115 (closed by close)
        self._write(file_version="brain.Event:2")

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=name, simple_value=value) for name, value in scalars.items()]
        self._write(step=step, summary=Summary(value=values))

    def _write(self, **fields) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._records.write(Event(wall_time=time.time(), **fields).SerializeToString())
        self._records.flush()

    def close(self) -> None:
        self._records.close()


def read_records(path: str | Path) -> list[dict]:
    """All records of a metrics.jsonl file, in order.

    A last line without its newline that is not JSON is a write cut short by a kill: it is
    dropped with a warning. Any other line that is not JSON is an error naming it.
    """
    lines = Path(path).read_text().split("\n")  # ends with "" when the last write finished
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise ValueError(f"{path} line {number} is not a JSON record: {error}") from error
            logger.warning("Dropping the last line of %s, cut short by a kill: %.80r", path, line)
    return records


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


def check_finite(metrics: dict[str, float], first_step: int, last_step: int) -> None:
    """Raises NonFiniteLossError naming the metric and steps where a loss was not finite.

    Every metric whose name ends in `loss` counts (a GAN has two).
    """
    for name, loss in metrics.items():
        if not name.endswith("loss") or math.isfinite(loss):
            continue
        span = last_step - first_step + 1
        where = (
            f"step {last_step}"
            if span == 1
            else f"steps {first_step}-{last_step} (metrics are read once per {span} steps)"
        )
        raise NonFiniteLossError(
            f"Training loss {name} became {loss} at {where}; the last checkpoint before it is "
            "kept. Lower the learning rate or enable grad_clip_norm (a label outside the model's "
            "classes also gives a NaN loss)."
        )


# Which way is better, by the metric's name without its split ("eval/fid" -> "fid").
# A name not listed here needs config `best_mode`: directions are never guessed from
# substrings (a "loss_ratio" or "nll_gain" could go either way).
METRIC_MODES: dict[str, str] = {
    **dict.fromkeys(
        ("loss", "d_loss", "g_loss", "mse", "mae", "nll", "perplexity", "fid", "error", "distance"),
        "min",
    ),
    **dict.fromkeys(
        ("accuracy", "classifier_accuracy", "inception_score", "precision", "recall", "f1", "auc"),
        "max",
    ),
}
BEST_MODES = ("min", "max", "auto")


def metric_mode(metric: str, mode: str | None = None) -> str:
    """Whether `metric` is minimised ("min") or maximised ("max"): `mode` when it says
    so, else the entry of METRIC_MODES; an unknown name asks for `mode`."""
    if mode not in (*BEST_MODES, None):
        raise ValueError(f"best_mode must be one of {list(BEST_MODES)} or None, not {mode!r}")
    if mode in ("min", "max"):
        return mode
    name = metric.rsplit("/", 1)[-1]
    if name not in METRIC_MODES:
        raise ValueError(
            f"best_metric {metric!r} is not a metric whose direction jdl knows "
            f"({sorted(METRIC_MODES)}); set best_mode to 'min' or 'max'"
        )
    return METRIC_MODES[name]


def check_best_metric(metrics: dict[str, float], metric: str) -> None:
    """A ValueError listing the metrics evaluation produced when `metric` is not one of them."""
    if metric not in metrics:
        raise ValueError(
            f"best_metric {metric!r} is not produced by evaluation, which gives "
            f"{sorted(metrics)}; set best_metric to one of them"
        )


class EarlyStopping:
    """Stops when `metric` has not improved for `patience` evaluations (0 disables).

    Every update checks that `metric` exists, patience or not: keeping the best checkpoint
    reads it too, and a misspelt name would otherwise turn both off without a word.
    """

    def __init__(self, metric: str, patience: int, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"Early-stopping mode must be 'max' or 'min', not {mode!r}")
        self.metric, self.patience, self.mode = metric, patience, mode
        self.best: float | None = None
        self.bad_evals = 0

    def update(self, metrics: dict[str, float]) -> bool:
        """Records one evaluation; True when training should stop."""
        check_best_metric(metrics, self.metric)
        if self.patience <= 0:
            return False
        value = metrics[self.metric]
        improved = self.best is None or (
            value > self.best if self.mode == "max" else value < self.best
        )
        if improved:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        return self.bad_evals >= self.patience
