"""Sequence steps: regression and language-model metrics against NumPy, masks and lengths,
generation (deterministic for a key, within the top k), and jit == sharded == pmap on 8 fake
CPU devices for sequence classification, regression and the language model."""

import functools

import jax
import numpy as np
import pytest

from jdl.models import build_model
from jdl.optimizers import make_optimizer
from jdl.parallel import MODES, Strategy
from jdl.state import create_train_state
from jdl.steps import classification
from jdl.steps import sequence as seq
from tests.test_parallel import assert_trees_close, host_result, stack, sum_metrics

B, T, V = 16, 5, 7
NUM_STEPS = 2


def make_state(model_config: dict, num_outputs: int, input_shape: tuple):
    # Momentum, not Adam: Adam turns rounding noise in near-zero gradients into full steps.
    tx = make_optimizer({"optimizer": "momentum", "learning_rate": 0.1}, total_steps=100)
    model = build_model(model_config, num_outputs)
    return create_train_state(model, tx, input_shape, jax.random.key(0))


def lstm_state(num_outputs: int = 1, **fields):
    return make_state({"name": "rnn", "hidden_size": 4, **fields}, num_outputs, (T, 2))


@functools.cache
def lm_state():
    """On the host, so that a compiled step donating its device copy leaves it intact."""
    return jax.device_get(make_state({"name": "rnn_lm", "hidden_size": 8, "embed_dim": 4}, V, (T,)))


def regression_batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "sequence": rng.normal(size=(B, T, 2)).astype(np.float32),
        "target": rng.normal(size=B).astype(np.float32),
        "length": rng.integers(1, T + 1, size=B).astype(np.int32),
    }


def lm_batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, size=(B, T + 1)).astype(np.int32)
    lengths = rng.integers(2, T + 2, size=B)
    return {
        "tokens": tokens,
        "token_mask": (np.arange(T + 1)[None] < lengths[:, None]).astype(np.float32),
    }


def classification_batch(seed: int = 0) -> dict:
    batch = lm_batch(seed)
    rng = np.random.default_rng(seed)
    return {
        "tokens": batch["tokens"][:, :T],
        "length": rng.integers(1, T + 1, size=B).astype(np.int32),
        "label": rng.integers(0, 3, size=B).astype(np.int32),
    }


def test_regression_metrics_sum_squared_errors_of_real_examples():
    state, batch = lstm_state(), regression_batch()
    batch["mask"] = (np.arange(B) < 11).astype(np.float32)
    predictions = np.asarray(
        state.model.apply(state.variables, batch["sequence"], lengths=batch["length"])
    )[:, 0]
    expected = np.sum((predictions - batch["target"])[:11] ** 2)
    metrics = seq.regression_eval_step(state, batch)
    assert float(metrics["count"]) == 11
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)


def test_regression_rejects_a_target_of_the_wrong_width():
    state, batch = lstm_state(num_outputs=2), regression_batch()
    with pytest.raises(ValueError, match=r"predicts \(2,\) values per example"):
        seq.regression_eval_step(state, batch)


def test_language_model_metrics_count_only_real_target_tokens():
    state, batch = lm_state(), lm_batch()
    batch["mask"] = (np.arange(B) < 12).astype(np.float32)
    logits = np.asarray(state.model.apply(state.variables, batch["tokens"][:, :-1]), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = batch["tokens"][:, 1:]
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    weights = batch["token_mask"][:, 1:] * batch["mask"][:, None]
    metrics = seq.language_model_eval_step(state, batch)
    assert float(metrics["count"]) == weights.sum()
    np.testing.assert_allclose(metrics["loss"], (nll * weights).sum(), rtol=1e-5)
    correct = (logits.argmax(-1) == targets) * weights
    np.testing.assert_allclose(metrics["accuracy"], correct.sum())


def test_language_model_ignores_tokens_after_the_mask():
    state, batch = lm_state(), lm_batch()
    changed = dict(batch, tokens=np.where(batch["token_mask"] > 0, batch["tokens"], 3))
    expected = seq.language_model_eval_step(state, batch)
    assert_trees_close(seq.language_model_eval_step(state, changed), expected)


@functools.cache
def generate_fn(num_tokens: int, temperature: float, top_k: int):
    state = lm_state()
    return jax.jit(
        lambda variables, prompt, key: seq.generate(
            state.model, variables, prompt, key, num_tokens, temperature, top_k
        )
    )


PROMPT = np.array([[1, 2], [3, 3], [0, 6]], np.int32)


def test_generation_is_deterministic_for_a_key():
    state = lm_state()
    generate = generate_fn(12, 1.0, 0)
    first = generate(state.variables, PROMPT, jax.random.key(4))
    assert first.shape == (3, 12)
    np.testing.assert_array_equal(first, generate(state.variables, PROMPT, jax.random.key(4)))
    assert not np.array_equal(first, generate(state.variables, PROMPT, jax.random.key(5)))


def test_generation_respects_top_k_and_top_1_is_greedy():
    state = lm_state()
    tokens = generate_fn(10, 2.0, 3)(state.variables, PROMPT, jax.random.key(0))
    # Teacher-forced logits of prompt + generated text: token i was drawn from position P-1+i.
    text = np.concatenate([PROMPT, np.asarray(tokens)], axis=1)
    logits = np.asarray(state.model.apply(state.variables, text[:, :-1]))
    top3 = np.argsort(-logits, axis=-1)[:, PROMPT.shape[1] - 1 :, :3]
    assert (top3 == np.asarray(tokens)[..., None]).any(-1).all()
    top1 = generate_fn(10, 1.0, 1)(state.variables, PROMPT, jax.random.key(0))
    greedy = generate_fn(10, 0.0, 0)(state.variables, PROMPT, jax.random.key(1))
    np.testing.assert_array_equal(top1, greedy)


# name: (train step, initial state, batches)
STEPS = {
    "classification": (
        classification.train_step,
        lambda: make_state({"name": "rnn", "hidden_size": 4, "vocab_size": V}, 3, (T,)),
        classification_batch,
    ),
    "regression": (seq.regression_train_step, lstm_state, regression_batch),
    "language_model": (seq.language_model_train_step, lm_state, lm_batch),
}


@functools.cache
def train(mode: str, name: str) -> dict:
    step_fn, init, make_batch = STEPS[name]
    strategy = Strategy(mode)
    step = strategy.compile_train(step_fn)
    state = strategy.put_replicated(init())
    rng = strategy.put_replicated(jax.random.key(5))
    metrics = []
    for i in range(NUM_STEPS):
        state, m = step(state, strategy.put_batch(make_batch(i)), rng)
        metrics.append(m)
    return host_result(state, sum_metrics(metrics))


@pytest.mark.parametrize("name", sorted(STEPS))
@pytest.mark.parametrize("mode", ["sharded", "pmap"])
def test_data_parallel_modes_train_like_jit(mode, name):
    assert_close_but_accuracy(train(mode, name), train("jit", name))


def assert_close_but_accuracy(result: dict, reference: dict):
    """Parameters and metrics agree; an accuracy may differ by one, as an arg-max can flip
    on a near tie when parameters differ by float rounding."""
    result, reference = dict(result), dict(reference)
    result["metrics"], reference["metrics"] = dict(result["metrics"]), dict(reference["metrics"])
    accuracy = result["metrics"].pop("accuracy", 0.0)
    assert abs(accuracy - reference["metrics"].pop("accuracy", 0.0)) <= 1
    assert_trees_close(result, reference)


@pytest.mark.parametrize("mode", MODES)
def test_k_language_model_steps_in_one_call_equal_k_single_steps(mode):
    strategy = Strategy(mode)
    steps = strategy.compile_train_steps(seq.language_model_train_step)
    state = strategy.put_replicated(lm_state())
    batches = strategy.put_batch(stack([lm_batch(i) for i in range(NUM_STEPS)]), stacked=True)
    state, metrics = steps(state, batches, strategy.put_replicated(jax.random.key(5)))
    assert_close_but_accuracy(host_result(state, metrics), train("jit", "language_model"))
