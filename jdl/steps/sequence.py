"""Pure steps for sequence regression and next-token language modelling, and text generation.

Sequence classification uses `jdl.steps.classification` unchanged (batches with `sequence` or
`tokens` and an optional `length`). Regression batches hold the model input (`sequence` [B, T, D]
or `tokens` [B, T]), a float `target` [B] or [B, K], optional `length` [B] and `mask` [B].
Language-model batches hold `tokens` [B, T+1] (the model reads tokens[:, :-1] and predicts
tokens[:, 1:]), an optional `token_mask` [B, T+1] (1 for real tokens, 0 for padding) and
`mask` [B]. Metrics are sums with a `count`: examples for regression, real target tokens for
the language model.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jdl import losses
from jdl.state import TrainState
from jdl.steps.classification import bind_axis, example_weights, model_inputs, model_kwargs


def _summed(tree, axis_name: str | None):
    """`tree` summed over the mapped axis (unchanged outside one)."""
    return tree if axis_name is None else lax.psum(tree, axis_name)


def _fit(
    state: TrainState,
    inputs: jax.Array,
    kwargs: dict,
    rng: jax.Array,
    axis_name: str | None,
    loss_terms: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
) -> tuple[TrainState, jax.Array]:
    """One gradient step on the weighted mean of `loss_terms(outputs)` = (losses, weights).

    Returns the new state and the (training-mode) model outputs for the metrics.
    """
    rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
    model = bind_axis(state.model, axis_name)

    def loss_fn(params):
        variables = {**state.variables, "params": params}
        outputs, updates = model.apply(
            variables, inputs, **kwargs, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
        )
        loss, weights = loss_terms(outputs)
        # Divided by the global weight (token counts differ between devices), so that the
        # gradients summed over devices are those of the mean over the whole batch.
        mean_loss = jnp.sum(loss * weights) / jnp.maximum(_summed(jnp.sum(weights), axis_name), 1)
        return mean_loss, (outputs, updates.get("batch_stats", {}))

    grads, (outputs, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = _summed(grads, axis_name)
    return state.apply_gradients(grads, batch_stats), outputs


# --- regression -------------------------------------------------------------------------
def _squared_errors(predictions_BxK: jax.Array, batch: dict) -> jax.Array:
    targets_BxK = batch["target"].reshape(predictions_BxK.shape[0], -1)
    if targets_BxK.shape != predictions_BxK.shape:
        raise ValueError(
            f"The model predicts {predictions_BxK.shape[1:]} values per example but the "
            f"target has {targets_BxK.shape[1:]}"
        )
    return losses.mean_squared_error(predictions_BxK, targets_BxK)


def regression_metrics(predictions_BxK: jax.Array, batch: dict) -> dict:
    """Summed squared error over real examples (`loss`: eval/loss is the MSE), and their count."""
    weights_B = example_weights(batch)
    total = jnp.sum(_squared_errors(predictions_BxK, batch) * weights_B)
    return {"loss": total, "count": jnp.sum(weights_B)}


def regression_train_step(
    state: TrainState, batch: dict, rng: jax.Array, *, axis_name: str | None = None
) -> tuple[TrainState, dict]:
    """One gradient step on the mean squared error of the real examples."""
    state, predictions = _fit(
        state,
        model_inputs(batch),
        model_kwargs(batch),
        rng,
        axis_name,
        lambda predictions: (_squared_errors(predictions, batch), example_weights(batch)),
    )
    return state, _summed(regression_metrics(predictions, batch), axis_name)


def regression_eval_step(state: TrainState, batch: dict, *, axis_name: str | None = None) -> dict:
    """Summed squared error over the real examples of the batch."""
    predictions = state.model.apply(
        state.variables, model_inputs(batch), **model_kwargs(batch), train=False
    )
    return _summed(regression_metrics(predictions, batch), axis_name)


# --- language model ---------------------------------------------------------------------
def target_weights(batch: dict) -> jax.Array:
    """[B, T] weights of the next-token targets: real target tokens of real examples."""
    tokens = batch["tokens"]
    weights_BxT = jnp.ones((tokens.shape[0], tokens.shape[1] - 1), jnp.float32)
    if "token_mask" in batch:
        weights_BxT = batch["token_mask"][:, 1:].astype(jnp.float32)
    return weights_BxT * example_weights(batch)[:, None]


def _token_losses(logits_BxTxV: jax.Array, batch: dict) -> jax.Array:
    return losses.softmax_cross_entropy(logits_BxTxV, batch["tokens"][:, 1:])


def language_model_metrics(logits_BxTxV: jax.Array, batch: dict) -> dict:
    """Summed next-token cross-entropy (nats) and accuracy over real tokens, and their count."""
    weights_BxT = target_weights(batch)
    correct_BxT = jnp.argmax(logits_BxTxV, axis=-1) == batch["tokens"][:, 1:]
    return {
        "loss": jnp.sum(_token_losses(logits_BxTxV, batch) * weights_BxT),
        "accuracy": jnp.sum(correct_BxT * weights_BxT),
        "count": jnp.sum(weights_BxT),
    }


def language_model_train_step(
    state: TrainState, batch: dict, rng: jax.Array, *, axis_name: str | None = None
) -> tuple[TrainState, dict]:
    """One gradient step on the mean next-token cross-entropy over the real tokens."""
    state, logits = _fit(
        state,
        batch["tokens"][:, :-1],
        {},
        rng,
        axis_name,
        lambda logits: (_token_losses(logits, batch), target_weights(batch)),
    )
    return state, _summed(language_model_metrics(logits, batch), axis_name)


def language_model_eval_step(
    state: TrainState, batch: dict, *, axis_name: str | None = None
) -> dict:
    """Summed next-token loss and accuracy over the real tokens of the batch."""
    logits = state.model.apply(state.variables, batch["tokens"][:, :-1], train=False)
    return _summed(language_model_metrics(logits, batch), axis_name)


# --- generation -------------------------------------------------------------------------
def sample_logits(
    key: jax.Array, logits_BxV: jax.Array, temperature: float = 1.0, top_k: int = 0
) -> jax.Array:
    """Tokens [B] drawn from softmax(logits / temperature) restricted to the `top_k` most
    likely (0: all); temperature 0 is greedy (arg-max)."""
    if temperature == 0:
        return jnp.argmax(logits_BxV, axis=-1)
    logits_BxV = logits_BxV / temperature
    if top_k:
        kth_largest_Bx1 = lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_largest_Bx1, -jnp.inf, logits_BxV)
    return jax.random.categorical(key, logits_BxV, axis=-1)


def generate(
    model,
    variables: dict,
    prompt_BxP: jax.Array,
    key: jax.Array,
    num_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
) -> jax.Array:
    """`num_tokens` tokens [B, num_tokens] continuing `prompt_BxP` (P >= 1) with a language
    model such as `RNNLanguageModel`; one `lax.scan` step per token, the i-th token drawn
    with `fold_in(key, i)`, so a key always gives the same text."""
    if prompt_BxP.ndim != 2 or prompt_BxP.shape[1] < 1:
        raise ValueError(f"The prompt must have shape [B, P] with P >= 1; got {prompt_BxP.shape}")
    logits_BxPxV, carries = model.apply(variables, prompt_BxP, return_carries=True)

    def body(carry, index):
        carries, logits_BxV = carry
        token_B = sample_logits(jax.random.fold_in(key, index), logits_BxV, temperature, top_k)
        logits_Bx1xV, carries = model.apply(
            variables, token_B[:, None], initial_carries=carries, return_carries=True
        )
        return (carries, logits_Bx1xV[:, 0]), token_B

    _, tokens_NxB = lax.scan(body, (carries, logits_BxPxV[:, -1]), jnp.arange(num_tokens))
    return tokens_NxB.T
