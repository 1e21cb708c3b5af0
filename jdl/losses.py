"""Pure per-example losses. Each returns a vector over the batch; callers weight and reduce."""

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(
    logits_BxC: jax.Array, labels_B: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Cross-entropy of integer labels, optionally against smoothed one-hot targets."""
    num_classes = logits_BxC.shape[-1]
    targets_BxC = optax.smooth_labels(jax.nn.one_hot(labels_B, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits_BxC, targets_BxC)


def sigmoid_binary_cross_entropy(logits_B: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Binary cross-entropy on logits (stable for large |logits|); labels are 0 or 1."""
    return optax.sigmoid_binary_cross_entropy(logits_B, labels_B.astype(logits_B.dtype))


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Squared error averaged over all but the batch axis."""
    squared = jnp.square(predictions - targets.astype(predictions.dtype))
    return squared.reshape(squared.shape[0], -1).mean(axis=-1)
