"""Knowledge distillation: a student trained on a frozen teacher's softened outputs.

`distillation_train_step` has the usual step signature once the teacher is bound in:

    step = functools.partial(
        distillation_train_step, teacher=teacher_module, teacher_variables=variables,
        temperature=4.0, alpha=0.9)

so it compiles under `jit`, `sharded` and `pmap` like every other step. The teacher's
variables are constants of the compiled step: never in the state, so never in the
optimizer nor in the student's checkpoints, and never updated. Evaluation is the
classification `eval_step` on the student.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jdl import losses
from jdl.augment import random_translate
from jdl.state import TrainState
from jdl.steps.classification import (
    bind_axis,
    classification_metrics,
    example_weights,
    model_inputs,
    model_kwargs,
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
) -> tuple[TrainState, dict]:
    """One gradient step of the student on the (weighted) mean `losses.distillation_loss`.

    Teacher and student see the same (translated, if `max_shift` > 0) images; the
    teacher runs in inference mode. Metrics are the student's plain cross-entropy and
    accuracy, as in classification, so runs with and without a teacher compare.
    """
    rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
        # Different dropout masks and shifts on each device, as for one big batch.
        rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
    model = bind_axis(state.model, axis_name)
    labels = batch["label"]
    weights_B = example_weights(batch)
    dropout_rng, augment_rng = jax.random.split(rng)
    inputs = model_inputs(batch)
    if max_shift:
        inputs = random_translate(augment_rng, inputs, max_shift)
    teacher_logits = teacher.apply(teacher_variables, inputs, **model_kwargs(batch), train=False)

    def loss_fn(params):
        variables = {**state.variables, "params": params}
        logits, updates = model.apply(
            variables,
            inputs,
            **model_kwargs(batch),
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        per_example = losses.distillation_loss(
            logits, teacher_logits, labels, temperature=temperature, alpha=alpha
        )
        mean_loss = jnp.sum(per_example * weights_B) / jnp.maximum(jnp.sum(weights_B), 1.0)
        return mean_loss, (logits, updates.get("batch_stats", {}))

    grads, (logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
        grads = lax.pmean(grads, axis_name)
    state = state.apply_gradients(grads, batch_stats)
    metrics = classification_metrics(logits, labels, weights_B)
    if axis_name is not None:
        metrics = lax.psum(metrics, axis_name)
    return state, metrics
