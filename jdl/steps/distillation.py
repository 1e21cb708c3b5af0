"""Knowledge distillation: a student trained on a frozen teacher's softened outputs.

`distillation_train_step` has the usual step signature once the teacher is bound in:

    step = functools.partial(
        distillation_train_step, teacher=teacher_module, teacher_variables=variables,
        temperature=4.0, alpha=0.9)

so it compiles under `jit`, `sharded` and `pmap` like every other step. The teacher's
variables are constants of the compiled step: never in the state, so never in the
optimizer nor in the student's checkpoints, and never updated. It is the classification
`train_step` with the distillation loss in place of the cross-entropy; evaluation is
the classification `eval_step` on the student.
"""

import functools

import flax.linen as nn
import jax

from jdl import losses
from jdl.state import TrainState
from jdl.steps.classification import model_kwargs, train_step


def teacher_loss(
    logits: jax.Array,
    batch: dict,
    inputs: jax.Array,
    *,
    teacher: nn.Module,
    teacher_variables: dict,
    temperature: float,
    alpha: float,
) -> jax.Array:
    """Per-example `losses.distillation_loss` against the teacher (in inference mode) on
    the same `inputs` the student saw."""
    teacher_logits = teacher.apply(teacher_variables, inputs, **model_kwargs(batch), train=False)
    return losses.distillation_loss(
        logits, teacher_logits, batch["label"], temperature=temperature, alpha=alpha
    )


def distillation_train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    teacher: nn.Module,
    teacher_variables: dict,
    temperature: float,
    alpha: float,
    axis_name: str | None = None,
    max_shift: int = 0,
    microbatches: int = 1,
) -> tuple[TrainState, dict]:
    """One gradient step of the student on the (weighted) mean distillation loss.

    Teacher and student see the same (translated, if `max_shift` > 0) images. Metrics are
    the student's plain cross-entropy and accuracy, as in classification; `microbatches`
    as in `train_step` (the teacher sees each slice with the student).
    """
    loss = functools.partial(
        teacher_loss,
        teacher=teacher,
        teacher_variables=teacher_variables,
        temperature=temperature,
        alpha=alpha,
    )
    return train_step(
        state,
        batch,
        rng,
        axis_name=axis_name,
        max_shift=max_shift,
        loss=loss,
        microbatches=microbatches,
    )
