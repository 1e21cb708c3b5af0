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


GAN_LOSSES = ("non_saturating", "hinge")


def _check_gan_loss(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"Unknown GAN loss {kind!r}; valid losses: {list(GAN_LOSSES)}")


def gan_discriminator_loss(
    real_logits_B: jax.Array, fake_logits_B: jax.Array, kind: str, real_label: float = 1.0
) -> jax.Array:
    """Per-pair discriminator loss on D(x) and D(G(z)) logits.

    `non_saturating`: binary cross-entropy with targets `real_label` (below 1 for one-sided
    label smoothing) and 0, from logits, so it stays finite when D is sure. `hinge`:
    relu(1 - D(x)) + relu(1 + D(G(z))) (Lim & Ye, 2017); `real_label` does not apply.
    """
    _check_gan_loss(kind)
    if kind == "hinge":
        return jax.nn.relu(1.0 - real_logits_B) + jax.nn.relu(1.0 + fake_logits_B)
    real_targets_B = jnp.full_like(real_logits_B, real_label)
    return optax.sigmoid_binary_cross_entropy(
        real_logits_B, real_targets_B
    ) + sigmoid_binary_cross_entropy(fake_logits_B, jnp.zeros_like(fake_logits_B))


def gan_generator_loss(fake_logits_B: jax.Array, kind: str) -> jax.Array:
    """Per-example generator loss: -log D(G(z)) (non-saturating, from logits) or -D(G(z))."""
    _check_gan_loss(kind)
    if kind == "hinge":
        return -fake_logits_B
    return sigmoid_binary_cross_entropy(fake_logits_B, jnp.ones_like(fake_logits_B))


def check_distillation_settings(temperature: float, alpha: float) -> None:
    """Raises a ValueError unless temperature > 0 and 0 <= alpha <= 1."""
    if not temperature > 0:
        raise ValueError(f"Distillation temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"Distillation alpha must lie in [0, 1], got {alpha}")


def distillation_loss(
    student_logits_BxC: jax.Array,
    teacher_logits_BxC: jax.Array,
    labels_B: jax.Array,
    *,
    temperature: float,
    alpha: float,
) -> jax.Array:
    """Per-example alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
    + (1 - alpha) * cross-entropy on the labels (Hinton et al., 2015).

    T^2 keeps the soft term's gradient on the scale of the hard one's as T grows. The
    teacher's logits carry no gradient.
    """
    check_distillation_settings(temperature, alpha)
    if student_logits_BxC.shape != teacher_logits_BxC.shape:
        raise ValueError(
            f"Teacher logits {teacher_logits_BxC.shape} differ from the student's "
            f"{student_logits_BxC.shape}: both nets need the same number of outputs"
        )
    teacher_BxC = jax.lax.stop_gradient(teacher_logits_BxC) / temperature
    student_log_probs_BxC = jax.nn.log_softmax(student_logits_BxC / temperature)
    teacher_log_probs_BxC = jax.nn.log_softmax(teacher_BxC)
    kl_B = jnp.sum(
        jnp.exp(teacher_log_probs_BxC) * (teacher_log_probs_BxC - student_log_probs_BxC), axis=-1
    )
    hard_B = softmax_cross_entropy(student_logits_BxC, labels_B)
    return alpha * temperature**2 * kl_B + (1 - alpha) * hard_B
