"""Stopping early without losing work: termination signals and a wall-clock budget."""

import signal
import threading
import time

import jax
import numpy as np

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: a temporary failure; running again continues


class PreemptedError(RuntimeError):
    """Training stopped early after saving a checkpoint; the same command continues it."""


class StopRequests:
    """While active, records SIGTERM / SIGINT instead of dying, and watches a time budget.

    `reason(next_call_s)` says why training should stop now, or None. With several
    processes every process gets the same answer, so all stop at the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, time_budget_s: float = 0.0):
        self.time_budget_s = time_budget_s
        self.start = time.monotonic()
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _record(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def reason(self, next_call_s: float) -> str | None:
        """Why to stop before a call expected to take `next_call_s` (plus saving)."""
        local = 0
        if self.received:
            local = 1
        elif self.time_budget_s and (
            time.monotonic() - self.start + 2 * next_call_s > self.time_budget_s
        ):
            local = 2
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            local = int(np.max(multihost_utils.process_allgather(np.int32(local))))
        return {
            0: None,
            1: f"received {self.received or 'a signal'}",
            2: f"time budget of {self.time_budget_s:g} s",
        }[local]
