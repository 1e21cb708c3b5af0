"""Losses against NumPy references in float64: values per example, stable at extreme logits."""

import numpy as np
import pytest

from jdl import losses

RNG = np.random.default_rng(0)


def reference_softmax_cross_entropy(logits, labels, label_smoothing):
    """-sum(targets * log_softmax) with targets (1 - s) * one_hot + s / C."""
    logits = np.asarray(logits, np.float64)
    num_classes = logits.shape[-1]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    targets = np.full_like(logits, label_smoothing / num_classes)
    targets[np.arange(len(labels)), labels] += 1.0 - label_smoothing
    return -(targets * log_probs).sum(axis=-1)


def reference_sigmoid_cross_entropy(logits, labels):
    """The textbook form -y log(p) - (1 - y) log(1 - p); only safe for moderate logits."""
    p = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
    return -labels * np.log(p) - (1 - labels) * np.log(1 - p)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
def test_softmax_cross_entropy_matches_numpy(label_smoothing):
    logits = RNG.normal(scale=3.0, size=(7, 5)).astype(np.float32)
    labels = RNG.integers(0, 5, size=7)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels, label_smoothing),
        reference_softmax_cross_entropy(logits, labels, label_smoothing),
        rtol=1e-5,
    )


def test_softmax_cross_entropy_is_log_c_for_uniform_logits_and_zero_for_certain_ones():
    uniform = np.zeros((2, 4), np.float32)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(uniform, np.array([0, 3])), np.log(4.0), rtol=1e-6
    )
    certain = np.array([[100.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(losses.softmax_cross_entropy(certain, np.array([0])), 0.0)
    # Label smoothing penalises certainty: a smoothed target keeps mass on every class.
    assert losses.softmax_cross_entropy(certain, np.array([0]), label_smoothing=0.1)[0] > 1.0


def test_sigmoid_binary_cross_entropy_matches_numpy():
    logits = RNG.normal(scale=3.0, size=9).astype(np.float32)
    labels = RNG.integers(0, 2, size=9)
    np.testing.assert_allclose(
        losses.sigmoid_binary_cross_entropy(logits, labels),
        reference_sigmoid_cross_entropy(logits, labels),
        rtol=1e-5,
        atol=1e-7,
    )


def test_sigmoid_binary_cross_entropy_stays_finite_and_exact_for_large_logits():
    logits = np.array([1000.0, 1000.0, -1000.0, -1000.0, 100.0], np.float32)
    labels = np.array([1, 0, 1, 0, 1])
    # log(1 + exp(x)) - y x: zero when confidently right, |x| when confidently wrong.
    np.testing.assert_allclose(
        losses.sigmoid_binary_cross_entropy(logits, labels),
        [0.0, 1000.0, 1000.0, 0.0, 0.0],
        atol=1e-6,
    )


def test_mean_squared_error_averages_over_all_but_the_batch_axis():
    predictions = RNG.normal(size=(3, 2, 4)).astype(np.float32)
    targets = RNG.integers(-2, 3, size=(3, 2, 4))  # integer targets are cast
    per_example = losses.mean_squared_error(predictions, targets)
    assert per_example.shape == (3,)
    np.testing.assert_allclose(
        per_example, ((predictions - targets) ** 2).reshape(3, -1).mean(axis=1), rtol=1e-6
    )
