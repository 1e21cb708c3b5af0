"""Train and eval steps for classification with softmax (C > 1 logits) or sigmoid (1 logit).

A batch is a dict with `label` (int, shape [B]), the model input under `image`
(or `features` for tabular data, `sequence` [B, T, D] or `tokens` [B, T] for recurrent
models, with optional int `length` [B]), and an optional float `mask` [B] that is 0
for padding examples. Both steps are pure; `axis_name` is given only when the
step runs under a mapped axis (pmap), and then gradients, batch-norm statistics
and metrics are combined across that axis.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jdl import losses
from jdl.augment import random_translate
from jdl.state import TrainState
from jdl.steps.microbatch import check_microbatches, sliced_grad

INPUT_KEYS = ("image", "features", "sequence", "tokens")


def model_inputs(batch: dict) -> jax.Array:
    """The model input of a batch: its `image`, `features`, `sequence` or `tokens` entry."""
    for key in INPUT_KEYS:
        if key in batch:
            return batch[key]
    raise KeyError(f"Batch has none of the input keys {INPUT_KEYS}; it has {sorted(batch)}")


def checked_inputs(state: TrainState, batch: dict) -> jax.Array:
    """`model_inputs(batch)`, after checking that an image or feature example has the shape
    the model was built for (a static check while tracing: it costs nothing per step).

    Without it, flax reports a parameter shape deep inside the model, naming neither shape.
    Sequences and tokens are not checked: recurrent models take any length.
    """
    inputs = model_inputs(batch)
    expected = state.input_shape
    fixed_shape = "image" in batch or "features" in batch
    if fixed_shape and expected is not None and tuple(inputs.shape[1:]) != tuple(expected):
        raise ValueError(
            f"Input examples have shape {tuple(inputs.shape[1:])} but the model was built "
            f"for {tuple(expected)}; build the state for this data or reshape the inputs"
        )
    return inputs


def model_kwargs(batch: dict) -> dict:
    """Keyword inputs of the model beyond `model_inputs`: sequence `lengths` when the batch
    has a `length` entry (variable-length sequences padded at the end)."""
    return {"lengths": batch["length"]} if "length" in batch else {}


def example_weights(batch: dict) -> jax.Array:
    """1 for real examples, 0 for padding."""
    if "mask" in batch:
        return batch["mask"].astype(jnp.float32)
    return jnp.ones(model_inputs(batch).shape[0], jnp.float32)


def per_example_loss(logits, labels, label_smoothing: float = 0.0) -> jax.Array:
    """Sigmoid cross-entropy for one logit per example, softmax cross-entropy otherwise.

    A label outside the model's classes gets a NaN loss, not the silent 0 of its all-zero
    one-hot target, so that the loop's NaN guard stops a run that would learn nothing.
    """
    num_classes = max(logits.shape[-1], 2)
    if logits.shape[-1] == 1:
        loss = losses.sigmoid_binary_cross_entropy(logits[:, 0], labels)
    else:
        loss = losses.softmax_cross_entropy(logits, labels, label_smoothing)
    return jnp.where((labels >= 0) & (labels < num_classes), loss, jnp.nan)


def predictions(logits) -> jax.Array:
    """Predicted class: the sign of a single logit, or the arg-max of several."""
    if logits.shape[-1] == 1:
        return (logits[:, 0] > 0).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1)


def classification_metrics(logits, labels, weights_B) -> dict:
    """Summable metrics: weighted sums of loss and correct predictions, and the count.

    The loss is the plain (unsmoothed) cross-entropy, so train and eval losses compare.
    """
    correct_B = (predictions(logits) == labels).astype(jnp.float32)
    return {
        "loss": jnp.sum(per_example_loss(logits, labels) * weights_B),
        "accuracy": jnp.sum(correct_B * weights_B),
        "count": jnp.sum(weights_B),
    }


def bind_axis(model: nn.Module, axis_name: str | None) -> nn.Module:
    """The model with its batch norm averaging over `axis_name` (models that have one)."""
    if axis_name is None or "axis_name" not in getattr(model, "__dataclass_fields__", {}):
        return model
    return model.clone(axis_name=axis_name)


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    axis_name: str | None = None,
    label_smoothing: float = 0.0,
    max_shift: int = 0,
    loss: Callable[[jax.Array, dict, jax.Array], jax.Array] | None = None,
    microbatches: int = 1,
) -> tuple[TrainState, dict]:
    """One gradient step on the (weighted) mean loss of the batch.

    `max_shift` > 0 translates each training image by up to that many pixels.
    `loss(logits, batch, inputs)`, when given, returns the per-example losses in place of
    the cross-entropy; it sees the (translated) inputs the model saw, so a distillation
    loss can ask a teacher about the same images. Metrics stay the plain cross-entropy
    and accuracy, so runs with different losses compare. `microbatches` > 1 computes the
    gradient over that many slices of the batch in turn (`jdl.steps.microbatch`): the same
    update with one slice's activations alive at a time; dropout then draws its masks per
    slice.
    """
    check_microbatches(microbatches, batch["label"].shape[0], state.batch_stats)
    rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
        # Different dropout masks and shifts on each device, as for one big batch.
        rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
    model = bind_axis(state.model, axis_name)
    labels = batch["label"]
    weights_B = example_weights(batch)
    dropout_rng, augment_rng = jax.random.split(rng)
    inputs = checked_inputs(state, batch)
    if max_shift:
        inputs = random_translate(augment_rng, inputs, max_shift)

    total_weight = jnp.maximum(jnp.sum(weights_B), 1.0)

    def loss_fn(params, piece, dropout_rng):
        """The examples' weighted loss over the whole batch's weight: summable over slices."""
        variables = {**state.variables, "params": params}
        logits, updates = model.apply(
            variables,
            piece["inputs"],
            **model_kwargs(piece["batch"]),
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        if loss is None:
            per_example = per_example_loss(logits, piece["batch"]["label"], label_smoothing)
        else:
            per_example = loss(logits, piece["batch"], piece["inputs"])
        weighted_loss = jnp.sum(per_example * piece["weights"]) / total_weight
        return weighted_loss, (logits, updates.get("batch_stats", {}))

    whole = {"inputs": inputs, "batch": batch, "weights": weights_B}
    grads, (logits, batch_stats) = sliced_grad(
        loss_fn, state.params, whole, dropout_rng, microbatches
    )
    if axis_name is not None:
        grads = lax.pmean(grads, axis_name)
    state = state.apply_gradients(grads, batch_stats)
    metrics = classification_metrics(logits, labels, weights_B)
    if axis_name is not None:
        metrics = lax.psum(metrics, axis_name)
    return state, metrics


def eval_step(state: TrainState, batch: dict, *, axis_name: str | None = None) -> dict:
    """Summed loss and accuracy over the real (unmasked) examples of the batch."""
    logits = state.model.apply(
        state.variables, checked_inputs(state, batch), **model_kwargs(batch), train=False
    )
    metrics = classification_metrics(logits, batch["label"], example_weights(batch))
    if axis_name is not None:
        metrics = lax.psum(metrics, axis_name)
    return metrics
