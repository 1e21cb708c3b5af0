"""Read-only access to the checkpoints of finished runs: arrays and metadata, no template.

A teacher for distillation or a model to quantize comes from another run's workdir,
trained under a config (optimizer, schedule) this run does not know, so a full
`TrainState` template cannot be built. Orbax restores a checkpoint as saved (nested
dicts of NumPy arrays) when given no template; callers check the parts they use.
Nothing here writes: the manager is opened read-only and only existing folders are opened.
"""

import operator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jdl.checkpointing import CheckpointError, key_name

INT8_FORMAT = "jdl-int8"  # the metadata `format` of an int8 checkpoint (jdl.quantize)


def _read_only_manager(directory: Path, best_metric: str | None, best_mode: str):
    options = ocp.CheckpointManagerOptions(
        read_only=True,
        create=False,
        best_fn=operator.itemgetter(best_metric) if best_metric else None,
        best_mode=best_mode,
    )
    return ocp.CheckpointManager(
        epath.Path(directory.absolute()),
        options=options,
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "metadata": ocp.JsonCheckpointHandler(),
        },
    )


def read_checkpoint(
    directory: str | Path, *, best_metric: str | None = None, best_mode: str = "max"
) -> tuple[dict, dict, int]:
    """(saved arrays, metadata, step) of the best checkpoint by `best_metric` in
    `directory`, or of the latest when none is ranked; CheckpointError if there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"No checkpoint folder {directory}: expected a finished run's.")
    manager = _read_only_manager(directory, best_metric, best_mode)
    try:
        step = manager.best_step() if best_metric else None
        step = manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{directory} holds no checkpoint: expected a finished run's.")
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:  # orbax and tensorstore raise many types
            raise CheckpointError(
                f"Checkpoint step {step} in {directory} is unreadable "
                f"({type(error).__name__}: {error!s:.300})"
            ) from error
    finally:
        manager.close()
    return dict(restored["state"]), dict(restored["metadata"] or {}), step


def as_nested_dicts(tree: Any) -> dict:
    """The leaves of `tree` in nested dicts keyed by their path (qwix records flattened)."""
    nested: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        node = nested
        for key in path[:-1]:
            node = node.setdefault(key_name(key), {})
        node[key_name(path[-1])] = leaf
    return nested


def from_nested_dicts(template: Any, nested: dict, where: str) -> Any:
    """`template`'s structure with leaves read from `nested`; a CheckpointError on a mismatch."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, expected in paths_leaves:
        node = nested
        names = [key_name(key) for key in path]
        for name in names:
            node = node.get(name) if isinstance(node, dict) else None
        if node is None or tuple(np.shape(node)) != tuple(expected.shape):
            raise CheckpointError(
                f"{where} does not fit the model: {'/'.join(names)} is "
                f"{'missing' if node is None else np.shape(node)}, expected {expected.shape}"
            )
        leaves.append(jnp.asarray(node, expected.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def read_float_variables(
    directory: str | Path, template: dict, *, best_metric: str | None = None, best_mode: str = "max"
) -> dict:
    """Float variables shaped like `template` ({"params": ..., ...}) from a training run's
    checkpoint folder (its best by `best_metric`, or latest). An int8 checkpoint, or one
    of another model, raises a CheckpointError naming the problem."""
    saved, metadata, step = read_checkpoint(directory, best_metric=best_metric, best_mode=best_mode)
    if metadata.get("format") == INT8_FORMAT:
        raise CheckpointError(
            f"{directory} holds an int8 model, not float parameters; load it with "
            "jdl.quantize.load_quantized"
        )
    saved = saved.get("arrays", saved)  # jdl.quantize.save_float's layout or a TrainState's
    collections = {name: saved.get(name) for name in template}
    return from_nested_dicts(template, collections, f"Checkpoint step {step} in {directory}")
