"""Distillation: a student classifier trained on a finished run's best model (the teacher)."""

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jdl.checkpointing import CheckpointError
from jdl.data import Dataset
from jdl.losses import check_distillation_settings
from jdl.metrics import metric_mode
from jdl.models import build_model
from jdl.steps import eval_step
from jdl.steps.distillation import distillation_train_step
from jdl.stored import read_float_variables
from jdl.tasks.base import Task
from jdl.tasks.classification import initial_train_state

DOCUMENTS_CNN = {"name": "cnn"}  # Conv32-pool-Conv64-pool-Dense, the default teacher


def load_teacher(
    config: ml_collections.ConfigDict,
    dataset: Dataset,
    teacher_workdir: str | Path,
    teacher_model: Mapping[str, Any],
    num_outputs: int,
):
    """(teacher module, its float variables) from the best checkpoint of `teacher_workdir`,
    ranked by `config.best_metric`; the teacher is built with the student's outputs."""
    teacher = build_model(teacher_model, num_outputs)
    dummy = jnp.zeros((1, *dataset.info.input_shape))
    template = jax.eval_shape(lambda key: teacher.init(key, dummy, train=False), jax.random.key(0))
    try:
        variables = read_float_variables(
            Path(teacher_workdir) / "checkpoints",
            dict(template),
            best_metric=config.best_metric,
            best_mode=metric_mode(config.best_metric, config.best_mode),
        )
    except CheckpointError as error:
        raise CheckpointError(
            f"No usable teacher in task.teacher_workdir={str(teacher_workdir)!r} for "
            f"task.teacher_model={dict(teacher_model)} with {num_outputs} outputs (the "
            f"student's): {error}"
        ) from error
    return teacher, variables


def distillation_task(
    config: ml_collections.ConfigDict,
    dataset: Dataset,
    *,
    teacher_workdir: str | None = None,
    teacher_model: Mapping[str, Any] = DOCUMENTS_CNN,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Task:
    """`config.model` trained on `losses.distillation_loss` against the teacher.

    `teacher_workdir` names a finished run (its `checkpoints/`), `teacher_model` the
    model config it trained (a workdir does not record it). `config.augment_shift`
    applies to both nets' shared inputs; evaluation is plain classification.
    """
    check_distillation_settings(temperature, alpha)
    if not teacher_workdir:
        raise ValueError("The distillation task needs task.teacher_workdir: a finished run's")
    num_classes = dataset.info.num_classes
    if num_classes == 2:
        raise ValueError("Distillation needs softmax outputs: a dataset with more than 2 classes")
    state = initial_train_state(config, dataset, num_classes)
    teacher, variables = load_teacher(config, dataset, teacher_workdir, teacher_model, num_classes)
    step = functools.partial(
        distillation_train_step,
        teacher=teacher,
        teacher_variables=variables,
        temperature=temperature,
        alpha=alpha,
        max_shift=config.augment_shift,
        microbatches=config.microbatches,
    )
    return Task(state=state, train_step=step, eval_step=eval_step)
