"""Losses and metrics by their Keras names, and the label checks each one implies.

Every loss and metric here is per example: `(outputs_BxC, labels) -> values_B`, so that
steps weight and sum them (padding masked out) and means are taken only when reporting.
Model outputs are logits (Keras's `from_logits=True`): a softmax or sigmoid belongs to the
loss, as everywhere in jdl.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdl import losses

PerExample = Callable[[jax.Array, jax.Array], jax.Array]

TOP_K = 5  # Keras's default k for top_k_accuracy


def _binary_logits(outputs):
    return outputs.reshape(outputs.shape[0])


def sparse_categorical_crossentropy(outputs_BxC, labels_B):
    """Softmax cross-entropy of integer labels."""
    return losses.softmax_cross_entropy(outputs_BxC, labels_B)


def categorical_crossentropy(outputs_BxC, targets_BxC):
    """Softmax cross-entropy of one-hot (or soft) target distributions."""
    return optax.softmax_cross_entropy(outputs_BxC, targets_BxC.astype(outputs_BxC.dtype))


def binary_crossentropy(outputs_Bx1, labels_B):
    """Sigmoid cross-entropy of one logit per example against 0/1 labels."""
    return losses.sigmoid_binary_cross_entropy(_binary_logits(outputs_Bx1), labels_B.reshape(-1))


def mse(outputs, targets):
    """Squared error, averaged over all but the batch axis."""
    return losses.mean_squared_error(outputs, targets.reshape(outputs.shape))


LOSSES: dict[str, PerExample] = {
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "categorical_crossentropy": categorical_crossentropy,
    "binary_crossentropy": binary_crossentropy,
    "mse": mse,
    "mean_squared_error": mse,
}


def _class_labels(labels):
    """Integer labels from integer or one-hot labels."""
    return labels if labels.ndim == 1 else jnp.argmax(labels, axis=-1)


def accuracy_for(loss_name: str | None) -> PerExample:
    """Keras picks the accuracy that fits the loss: binary, categorical or sparse."""

    def accuracy(outputs, labels):
        """1 where the predicted class is the label's."""
        if loss_name == "binary_crossentropy" or outputs.shape[-1] == 1:
            predicted = (_binary_logits(outputs) > 0).astype(jnp.int32)
            return (predicted == labels.reshape(-1).astype(jnp.int32)).astype(jnp.float32)
        return (jnp.argmax(outputs, -1) == _class_labels(labels)).astype(jnp.float32)

    return accuracy


def top_k_accuracy(outputs_BxC, labels):
    """1 when the true class is among the TOP_K largest outputs."""
    k = min(TOP_K, outputs_BxC.shape[-1])
    true_B = _class_labels(labels)
    true_scores_B = jnp.take_along_axis(outputs_BxC, true_B[:, None], axis=-1)[:, 0]
    higher_B = jnp.sum(outputs_BxC > true_scores_B[:, None], axis=-1)
    return (higher_B < k).astype(jnp.float32)


def mae(outputs, targets):
    """Absolute error, averaged over all but the batch axis."""
    error = jnp.abs(outputs - targets.reshape(outputs.shape).astype(outputs.dtype))
    return error.reshape(error.shape[0], -1).mean(axis=-1)


METRICS = ("accuracy", "top_k_accuracy", "mae")


def resolve_loss(loss: str | PerExample) -> tuple[str, PerExample]:
    """(name, per-example function) of a loss given by name or as a callable."""
    if callable(loss):
        return getattr(loss, "__name__", "loss"), loss
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; valid names: {sorted(LOSSES)} or a callable")
    return loss, LOSSES[loss]


def resolve_metrics(metrics, loss_name: str) -> dict[str, PerExample]:
    """{name: per-example function} for metric names or callables; names must be unique."""
    resolved = {}
    for metric in metrics or ():
        if callable(metric):
            name, fn = getattr(metric, "__name__", "metric"), metric
        elif metric in ("accuracy", "acc"):
            name, fn = "accuracy", accuracy_for(loss_name)
        elif metric == "top_k_accuracy":
            name, fn = metric, top_k_accuracy
        elif metric in ("mae", "mean_absolute_error"):
            name, fn = "mae", mae
        else:
            raise ValueError(f"Unknown metric {metric!r}; valid names: {list(METRICS)}")
        if name in resolved or name == "loss":
            raise ValueError(f"Metric name {name!r} is given twice")
        resolved[name] = fn
    return resolved


def check_labels(loss_name: str, labels: np.ndarray, num_outputs: int, split: str) -> None:
    """Raises a ValueError when labels or the output width do not fit the named loss.

    Callables are the user's to check. `split` names the array in the message.
    """
    if loss_name in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
        _check_class_labels(loss_name, labels, num_outputs, split)
    elif loss_name == "binary_crossentropy":
        if num_outputs != 1:
            raise ValueError(
                f"binary_crossentropy needs one output (a logit) per example; the model has "
                f"{num_outputs}. Use sparse_categorical_crossentropy for {num_outputs} classes."
            )
        values = np.unique(labels)
        if labels.reshape(len(labels), -1).shape[1] != 1 or not np.isin(values, (0, 1)).all():
            raise ValueError(
                f"binary_crossentropy needs labels 0 or 1, one per example; {split} has shape "
                f"{labels.shape} and values {values[:5].tolist()}"
            )


def _check_class_labels(loss_name: str, labels: np.ndarray, num_classes: int, split: str):
    one_hot = labels.ndim == 2 and labels.shape[1] > 1
    if loss_name == "sparse_categorical_crossentropy":
        if one_hot:
            raise ValueError(
                f"{split} holds one-hot labels (shape {labels.shape}) but the loss "
                "sparse_categorical_crossentropy takes integer class labels: use "
                "loss='categorical_crossentropy', or pass labels.argmax(axis=1)"
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"sparse_categorical_crossentropy needs a 1-D integer array of class labels; "
                f"{split} has dtype {labels.dtype} and shape {labels.shape}"
            )
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{split} has labels in [{low}, {high}], out of range for the model's "
                f"{num_classes} outputs (classes 0..{num_classes - 1})"
            )
        return
    if not one_hot:
        raise ValueError(
            f"{split} holds integer class labels (shape {labels.shape}) but the loss "
            "categorical_crossentropy takes one-hot labels: use "
            "loss='sparse_categorical_crossentropy', or one-hot encode them"
        )
    if labels.shape[1] != num_classes:
        raise ValueError(
            f"{split} has one-hot labels of width {labels.shape[1]}, but the model has "
            f"{num_classes} outputs"
        )
