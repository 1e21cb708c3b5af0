"""Checkpoints of a training state: keep the latest and the best, restore under any compile mode.

Orbax API: `ocp.CheckpointManager` with `ocp.args.Composite(state=StandardSave,
metadata=JsonSave)` and a `preservation_policy`. It is orbax's stable API for
numbered steps, and it does what we would otherwise write ourselves: each save
goes to a temporary directory that is renamed only once complete (so a crash never
replaces a good checkpoint), every process calls it and orbax coordinates them,
saves can run in the background, and `LatestN` / `BestN` decide what to keep.
(The `experimental.v1` training Checkpointer does the same but is still experimental.)

Only the array (pytree) fields are saved, as host NumPy arrays, so the files do not depend on
the device count or compile mode. A restore reads the shapes recorded on disk first,
so a checkpoint of another model fails with a message naming the differing leaves,
and then lets orbax place every leaf directly with the template leaf's sharding.
"""

import dataclasses
import logging
import operator
import os
from typing import Any, TypeVar

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

logger = logging.getLogger(__name__)
State = TypeVar("State")  # a flax struct dataclass of arrays and static fields


MAX_LISTED = 5  # leaves named per kind of mismatch in an error message


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, or does not fit the template."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose leaves differ from the template's (another model)."""


def array_fields(state: Any) -> dict[str, Any]:
    """The saved part of a state (a flax struct dataclass): its pytree fields.

    Static fields (models, optimizers) define the computation, not its values.
    """
    return {
        field.name: getattr(state, field.name)
        for field in dataclasses.fields(state)
        if field.metadata.get("pytree_node", True)
    }


def key_name(key: Any) -> str:
    """One step of a pytree path: a dict key, a namedtuple field or a sequence index."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """Leaf shapes by path such as `opt_state/1/mu/Dense_0/kernel`.

    Orbax records namedtuples as dicts and tuples as lists, so paths must not
    depend on the container type to compare a template with a checkpoint.
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(map(key_name, path)): tuple(leaf.shape) for path, leaf in leaves}


def params_first(paths) -> list[str]:
    """Sorted paths, parameters first: they say best how two models differ."""
    return sorted(paths, key=lambda path: (not path.startswith("params/"), path))


def check_compatible(saved: dict, expected: dict, step: int) -> None:
    """Raises CheckpointMismatchError naming missing, unexpected and reshaped leaves."""
    problems = {
        "missing from the checkpoint": params_first(expected.keys() - saved.keys()),
        "not in the template": params_first(saved.keys() - expected.keys()),
        "with different shapes (checkpoint vs template)": [
            f"{path} {saved[path]} vs {expected[path]}"
            for path in params_first(saved.keys() & expected.keys())
            if saved[path] != expected[path]
        ],
    }
    lines = [
        f"  {kind}: {', '.join(items[:MAX_LISTED])}"
        + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")
        for kind, items in problems.items()
        if items
    ]
    if lines:
        raise CheckpointMismatchError(
            f"Checkpoint step {step} does not fit the template state (a different model "
            "or optimizer?). Leaves\n" + "\n".join(lines)
        )


class Checkpointer:
    """Saves and restores training states (`TrainState`, ...) in `directory`, a folder per step.

    Keeps the newest `max_to_keep` checkpoints and, when `best_metric` is given, the
    `keep_best` best by that metric (`best_mode` "max" or "min"); a checkpoint that is
    both counts once. Every process must call `save` and `restore`.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        best_metric: str | None = None,
        best_mode: str = "max",
        keep_best: int = 1,
        async_save: bool = False,
    ):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', not {best_mode!r}")
        self.best_metric = best_metric
        policies = [checkpoint_managers.LatestN(n=max_to_keep)]
        best_fn = None
        if best_metric is not None:
            best_fn = operator.itemgetter(best_metric)
            policies.append(
                checkpoint_managers.BestN(
                    get_metric_fn=best_fn,
                    reverse=best_mode == "min",
                    n=keep_best,
                    # Saves without the metric are kept by LatestN only.
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            # best_fn also makes orbax write the metrics and answer best_step().
            best_fn=best_fn,
            best_mode=best_mode,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        path = epath.Path(directory)  # local or a cloud URL such as gs://
        self._manager = ocp.CheckpointManager(
            path if path.is_absolute() else path.absolute(),  # orbax needs absolute paths
            options=options,
            # Known handlers let a fresh manager read a checkpoint's metadata before restoring.
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "metadata": ocp.JsonCheckpointHandler(),
            },
        )

    @property
    def directory(self) -> str:
        return str(self._manager.directory)

    def save(
        self,
        step: int,
        state: State,
        *,
        metadata: dict,
        metrics: dict[str, float] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves `state`'s arrays and the JSON `metadata` as `step`; False if not saved.

        A step at or before the latest is skipped unless `force`; an existing step is
        never overwritten. `metrics` ranks the checkpoint when it holds `best_metric`.
        """
        if step in self._manager.all_steps():
            return False
        ranked = self.best_metric is not None and metrics and self.best_metric in metrics
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(jax.device_get(array_fields(state))),
            metadata=ocp.args.JsonSave(metadata),
        )
        return self._manager.save(
            step,
            args=args,
            metrics={k: float(v) for k, v in metrics.items()} if ranked else None,
            force=force,
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the best `best_metric`; None without a metric or ranked saves."""
        return self._manager.best_step() if self.best_metric is not None else None

    def restore(self, template: State, step: int | None = None) -> tuple[State, dict]:
        """(state, metadata) of `step`, or of the newest checkpoint that restores if None.

        The state takes `template`'s structure and each leaf the template leaf's sharding.
        Falling back past unreadable checkpoints deletes them, so that their steps can
        be saved again when training repeats them.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if step is not None:
            if step not in steps:
                raise CheckpointError(f"No step {step} in {self.directory}; it has {steps}.")
            return self._restore_step(template, step)
        for i, candidate in enumerate(steps):
            try:
                restored = self._restore_step(template, candidate)
            except CheckpointMismatchError:
                raise
            except CheckpointError as error:
                logger.warning("%s; falling back to an earlier checkpoint.", error)
                continue
            for bad in steps[:i]:
                logger.warning("Deleting unreadable checkpoint step %d in %s.", bad, self.directory)
                self._manager.delete(bad)
            return restored
        raise CheckpointError(
            f"No checkpoint in {self.directory} could be restored (steps tried: {steps})."
        )

    def _restore_step(self, template: State, step: int) -> tuple[State, dict]:
        """Restores one step; CheckpointError if it is unreadable or does not fit."""
        expected = array_fields(template)
        try:
            saved = self._manager.item_metadata(step)["state"].tree
        except Exception as error:  # orbax and tensorstore raise many types
            raise self._unreadable(step, error) from error
        check_compatible(leaf_shapes(saved), leaf_shapes(expected), step)
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), expected
        )
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()
        )
        try:
            restored = self._manager.restore(step, args=args)
        except Exception as error:
            raise self._unreadable(step, error) from error
        return template.replace(**restored["state"]), restored["metadata"]

    def _unreadable(self, step: int, error: Exception) -> CheckpointError:
        """Names the step and, briefly, what orbax reported (tensorstore errors run long)."""
        return CheckpointError(
            f"Checkpoint step {step} in {self.directory} is unreadable "
            f"({type(error).__name__}: {error!s:.300})"
        )

    def wait_until_finished(self) -> None:
        """Blocks until a background (async) save has been committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
