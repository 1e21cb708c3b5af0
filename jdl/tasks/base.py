"""The `Task` record that every task factory returns to the loop."""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Task:
    """The state to start from and the functions that train and judge it.

    `state` is a host pytree (a flax struct dataclass) with an int32 `step` and a `params`
    attribute; every pytree field is checkpointed. `train_step(state, batch, rng, *,
    axis_name=None) -> (state, metric sums)` and `eval_step(state, batch, *, axis_name=None)
    -> metric sums` are pure. `after_eval(state, epoch, workdir) -> {name: value}` runs after
    every evaluation on every process and adds eval metrics; it may write files on process 0
    (`workdir` None: a run that writes no files). `after_eval_metrics` names them, so that a
    `best_metric` evaluation will not give is refused before training (None: not declared,
    found at the first evaluation instead).
    """

    state: Any
    train_step: Callable
    eval_step: Callable
    after_eval: Callable[[Any, int, Path | None], dict[str, float]] | None = None
    after_eval_metrics: tuple[str, ...] | None = None
