"""Tasks: what the loop needs to train one kind of model, looked up by `config.task.name`.

The loop knows no model family. A task factory turns the config and the dataset into a
`Task`: the initial state, the pure train and eval steps (with the config's options bound)
and an optional hook that runs after every evaluation (sample grids, generated text).
"""

import inspect
from collections.abc import Callable

import flax.linen as nn
import ml_collections

from jdl.config import base_config
from jdl.data import Dataset
from jdl.tasks.base import Task
from jdl.tasks.classification import classification_task
from jdl.tasks.distillation import distillation_task
from jdl.tasks.gan import gan_task
from jdl.tasks.quantization import quantization_aware_task
from jdl.tasks.sequence import language_model, regression

TaskFactory = Callable[..., Task]  # (config, dataset, [model], **task fields) -> Task

TASKS: dict[str, TaskFactory] = {
    "classification": classification_task,
    "regression": regression,
    "language_model": language_model,
    "gan": gan_task,
    "distillation": distillation_task,  # a student of a finished run (task.teacher_workdir)
    "quantization_aware": quantization_aware_task,  # classification, int8 forward (qwix)
}


# Top-level config keys a task does not read: a value away from the default is an error
# naming the key and the task, not a silent no-op. A task not listed is trusted to read all.
UNREAD_KEYS: dict[str, tuple[str, ...]] = {
    "classification": (),
    "regression": ("label_smoothing", "augment_shift", "microbatches"),
    "language_model": ("label_smoothing", "augment_shift", "microbatches"),
    "gan": ("augment_shift", "microbatches"),
}


def check_read_keys(config: ml_collections.ConfigDict, name: str) -> None:
    """A ValueError naming the first key of UNREAD_KEYS[name] set away from its default."""
    defaults = base_config()
    for key in UNREAD_KEYS.get(name, ()):
        if config[key] != defaults[key]:
            raise ValueError(
                f"Config {key}={config[key]!r} has no effect on the {name!r} task; "
                f"remove it (default {defaults[key]!r})"
            )


def task_fields(factory: TaskFactory) -> list[str]:
    """The keyword-only fields a factory reads from `config.task`."""
    parameters = inspect.signature(factory).parameters.values()
    return sorted(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def make_task(
    config: ml_collections.ConfigDict, dataset: Dataset, model: nn.Module | None = None
) -> Task:
    """The task `config.task` names, built for `dataset`; unknown names or fields raise.

    `model`, a linen module instance, replaces `config.model` in tasks that train one
    network (their factory takes a `model` argument).
    """
    fields = dict(config.task)
    name = fields.pop("name")
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    valid = task_fields(TASKS[name])
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(f"Unknown field(s) {unknown} for task {name!r}; valid fields: {valid}")
    check_read_keys(config, name)
    if model is None:
        return TASKS[name](config, dataset, **fields)
    if "model" not in inspect.signature(TASKS[name]).parameters:
        raise ValueError(
            f"Task {name!r} builds its networks from config.model and takes no model=; "
            "model= replaces the network of a one-network task such as 'classification'"
        )
    return TASKS[name](config, dataset, model, **fields)


__all__ = ["TASKS", "Task", "make_task", "task_fields"]
