"""Keras-style callbacks, and the bridge that lets the engine call them.

A callback is any object with some of these methods (all optional):

    set_model(model)                  # called first, with the `jdl.Model` being fitted
    on_train_begin(logs)              # logs: {}
    on_epoch_end(epoch, logs)         # epoch counts from 0 in each fit; logs: Keras names
    on_train_end(logs)                # the last epoch's logs

`logs` maps `loss`, `accuracy`, ... (means over the epoch's training steps) and
`val_loss`, `val_accuracy`, ... (over the whole validation set) to floats. Returning True
from `on_epoch_end`, or setting `model.stop_training = True`, stops training after that
epoch. Inside a callback, `model.get_weights()`, `model.predict()` and `model.save()` see
the weights of the epoch just ended.
"""

import math
from pathlib import Path
from typing import Any

from jdl.metrics import metric_mode


def keras_logs(engine_logs: dict[str, float]) -> dict[str, float]:
    """`train/loss` -> `loss`, `eval/accuracy` -> `val_accuracy` (other entries dropped)."""
    logs = {}
    for name, value in engine_logs.items():
        split, _, metric = name.partition("/")
        if split == "train" and metric != "examples_per_sec":
            logs[metric] = float(value)
        elif split == "eval":
            logs[f"val_{metric}"] = float(value)
    return logs


class Callback:
    """Base class with every hook doing nothing; override the ones you need."""

    model: Any = None

    def set_model(self, model) -> None:
        """Called first by `fit` with the model being trained."""
        self.model = model

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Called before the first step of `fit`."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> bool | None:
        """Called after every epoch (0-based); True stops training."""

    def on_train_end(self, logs: dict | None = None) -> None:
        """Called once `fit` has finished, with the last epoch's logs."""


class History(Callback):
    """`history.history`: every logged metric as a per-epoch list; `history.epoch` the epochs."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Appends this epoch's logs."""
        self.epoch.append(epoch)
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(value)


class _Monitor(Callback):
    """Tracks the best value of one metric; `mode` 'auto' looks the direction up in
    `jdl.metrics.METRIC_MODES` (without a `val_` prefix) and asks for a mode when it is not
    listed."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max'; got {mode!r}")
        self.monitor, self.min_delta = monitor, abs(min_delta)
        self.lower = metric_mode(monitor.removeprefix("val_"), mode) == "min"
        self.best = math.inf if self.lower else -math.inf

    def improved(self, logs: dict) -> bool:
        """Records the monitored value; True when it beats the best so far."""
        if self.monitor not in logs:
            raise KeyError(
                f"{type(self).__name__} monitors {self.monitor!r}, which is not among the "
                f"logged metrics {sorted(logs)} (val_ metrics need validation data)"
            )
        value = logs[self.monitor]
        better = (
            value < self.best - self.min_delta if self.lower else value > self.best + self.min_delta
        )
        if better:
            self.best = value
        return better


class EarlyStopping(_Monitor):
    """Stops when `monitor` has not improved for `patience` epochs (Keras's rule: never after
    the first); `restore_best_weights` puts back the best epoch's weights when it stops."""

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 0,
        restore_best_weights: bool = False,
        mode: str = "auto",
        min_delta: float = 0.0,
    ):
        super().__init__(monitor, mode, min_delta)
        self.patience, self.restore_best_weights = patience, restore_best_weights

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Starts counting afresh for this fit."""
        self.best = math.inf if self.lower else -math.inf
        self.wait, self.best_weights, self.stopped_epoch = 0, None, None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> bool:
        """Counts epochs without improvement; True stops."""
        if self.improved(logs or {}):
            self.wait = 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return False
        self.wait += 1
        if self.wait >= self.patience and epoch > 0:  # Keras's rule, epoch 0 never stops
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, logs: dict | None = None) -> None:
        """Puts back the best weights when it stopped training early."""
        stopped = self.stopped_epoch is not None
        if stopped and self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Saves the model to `filepath` (through `Model.save`, orbax) after every epoch that
    improves `monitor`, or after every epoch with `save_best_only=False`. The previous save
    is replaced only once the new one is complete."""

    def __init__(
        self,
        filepath: str | Path,
        monitor: str = "val_loss",
        save_best_only: bool = True,
        mode: str = "auto",
    ):
        super().__init__(monitor, mode)
        self.filepath, self.save_best_only = Path(filepath), save_best_only

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Saves when `monitor` improved (or always without save_best_only)."""
        if self.improved(logs or {}) or not self.save_best_only:
            self.model.save(self.filepath)


class EngineCallbacks:
    """The engine's callback protocol (`jdl.engine.Callback`) over a list of Keras callbacks.

    At each epoch's end it shows the model the live training state, renames the logs and
    asks every callback (and `model.stop_training`) whether to stop.
    """

    def __init__(self, model, callbacks, first_epoch: int):
        self.model, self.callbacks, self.first_epoch = model, list(callbacks), first_epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, float], state) -> bool:
        """Shows the model the live state; True when a callback asks to stop."""
        self.model.show_live_state(state)
        keras = keras_logs(logs)
        answers = [cb.on_epoch_end(epoch - self.first_epoch, keras) for cb in self.callbacks]
        return any(answer is True for answer in answers) or self.model.stop_training
