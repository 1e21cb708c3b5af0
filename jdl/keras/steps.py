"""The pure steps a `jdl.Model` trains, evaluates and predicts with.

The state is jdl's `TrainState` whose static `model` is an adapter (`jdl.keras.adapters`).
A batch holds the input under one of jdl's input keys, `label` (any dtype or shape the loss
takes) and an optional `mask`. The loss and metric functions are bound with
`functools.partial` before compilation; only a given `axis_name` makes the steps average
across devices, as every jdl step does.
"""

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jax import lax

from jdl import losses
from jdl.keras.objectives import PerExample
from jdl.state import TrainState
from jdl.steps.classification import example_weights, model_inputs


def metric_sums(outputs, labels, weights_B, loss: PerExample, metrics) -> dict:
    """Weighted sums of the loss and of every metric, and the count of real examples."""
    sums = {"loss": jnp.sum(loss(outputs, labels) * weights_B)}
    for name, metric in metrics.items():
        sums[name] = jnp.sum(metric(outputs, labels) * weights_B)
    sums["count"] = jnp.sum(weights_B)
    return sums


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    axis_name: str | None = None,
    loss: PerExample,
    metrics: Mapping[str, PerExample],
    teacher_loss: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None,
) -> tuple[TrainState, dict]:
    """One gradient step on the weighted mean loss of the batch.

    `teacher_loss(outputs, labels, inputs)`, when given, is the per-example loss trained on
    (`distillation_loss` with a teacher bound in); the summed `loss` stays the compiled one.
    """
    rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
        # Different dropout masks on each device, as for one big batch.
        rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
    labels, weights_B = batch["label"], example_weights(batch)

    def loss_fn(params):
        """Weighted mean loss of the batch and, as auxiliaries, outputs and batch statistics."""
        variables = {"params": params, "batch_stats": state.batch_stats}
        outputs, batch_stats = state.model.apply(
            variables, model_inputs(batch), train=True, rng=rng, axis_name=axis_name
        )
        if teacher_loss is None:
            per_example = loss(outputs, labels)
        else:
            per_example = teacher_loss(outputs, labels, model_inputs(batch))
        mean = jnp.sum(per_example * weights_B) / jnp.maximum(jnp.sum(weights_B), 1.0)
        return mean, (outputs, batch_stats)

    grads, (outputs, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
        grads = lax.pmean(grads, axis_name)
    state = state.apply_gradients(grads, batch_stats)
    sums = metric_sums(outputs, labels, weights_B, loss, metrics)
    if axis_name is not None:
        sums = lax.psum(sums, axis_name)
    return state, sums


def distillation_loss(
    outputs, labels, inputs, *, teacher: TrainState, temperature: float, alpha: float
) -> jax.Array:
    """Per-example `jdl.losses.distillation_loss` against `teacher` (a built `jdl.Model`'s
    state, in inference mode) on the same inputs; one-hot labels count as their classes."""
    teacher_outputs = inference_outputs(teacher, inputs)
    classes = jnp.argmax(labels, axis=-1) if labels.ndim == outputs.ndim else labels
    return losses.distillation_loss(
        outputs, teacher_outputs, classes.astype(jnp.int32), temperature=temperature, alpha=alpha
    )


def inference_outputs(state: TrainState, inputs: jax.Array) -> jax.Array:
    """The model's outputs in inference mode (batch norm uses its running statistics)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    outputs, _ = state.model.apply(variables, inputs, train=False)
    return outputs


def predict_step(state: TrainState, batch: dict, *, axis_name: str | None = None) -> jax.Array:
    """The model's outputs on the batch in inference mode."""
    del axis_name  # inference needs nothing from other devices
    return inference_outputs(state, model_inputs(batch))


def eval_step(
    state: TrainState,
    batch: dict,
    *,
    axis_name: str | None = None,
    loss: PerExample,
    metrics: Mapping[str, PerExample],
) -> dict:
    """Summed loss and metrics over the real (unmasked) examples of the batch."""
    outputs = predict_step(state, batch)
    sums = metric_sums(outputs, batch["label"], example_weights(batch), loss, metrics)
    if axis_name is not None:
        sums = lax.psum(sums, axis_name)
    return sums
