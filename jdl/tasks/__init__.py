"""Tasks: what the loop needs to train one kind of model, looked up by `config.task.name`.

The loop knows no model family. A task factory turns the config and the dataset into a
`Task`: the initial state, the pure train and eval steps (with the config's options bound)
and an optional hook that runs after every evaluation (sample grids, generated text).
"""

import inspect
from collections.abc import Callable

import ml_collections

from jdl.data import Dataset
from jdl.tasks.base import Task
from jdl.tasks.classification import classification_task
from jdl.tasks.distillation import distillation_task
from jdl.tasks.gan import gan_task
from jdl.tasks.quantization import quantization_aware_task
from jdl.tasks.sequence import language_model, regression

TaskFactory = Callable[..., Task]  # (config, dataset, **task fields) -> Task

TASKS: dict[str, TaskFactory] = {
    "classification": classification_task,
    "regression": regression,
    "language_model": language_model,
    "gan": gan_task,
    "distillation": distillation_task,  # a student of a finished run (task.teacher_workdir)
    "quantization_aware": quantization_aware_task,  # classification, int8 forward (qwix)
}


def task_fields(factory: TaskFactory) -> list[str]:
    """The keyword-only fields a factory reads from `config.task`."""
    parameters = inspect.signature(factory).parameters.values()
    return sorted(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def make_task(config: ml_collections.ConfigDict, dataset: Dataset) -> Task:
    """The task `config.task` names, built for `dataset`; unknown names or fields raise."""
    fields = dict(config.task)
    name = fields.pop("name")
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    valid = task_fields(TASKS[name])
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(f"Unknown field(s) {unknown} for task {name!r}; valid fields: {valid}")
    return TASKS[name](config, dataset, **fields)


__all__ = ["TASKS", "Task", "make_task", "task_fields"]
