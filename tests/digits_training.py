"""A small, fast training harness for tests: a pure step over in-memory digits, one compiled
`lax.scan` per run (the loop's epoch machinery is tested elsewhere)."""

import functools

import jax
import numpy as np
import optax

from jdl.data import load_dataset
from jdl.state import create_train_state
from jdl.steps import eval_step


def digits():
    """(train arrays, eval batch) of the embedded 8x8 digits: 1,437 / 360 images."""
    dataset = load_dataset("digits", batch_size=32, eval_batch_size=360, seed=0)
    evaluation = next(iter(dataset.eval_batches()))
    return dataset.train_arrays(), {"image": evaluation["image"], "label": evaluation["label"]}


def train(model, step, data, *, epochs: int, seed: int, learning_rate: float, batch_size=32):
    """`model` trained by `step` for `epochs` shuffled epochs of `data` with Adam."""
    state = create_train_state(model, optax.adam(learning_rate), (8, 8, 1), jax.random.key(seed))
    order = np.random.RandomState(seed)
    steps = len(data["label"]) // batch_size
    index = np.concatenate(
        [order.permutation(len(data["label"]))[: steps * batch_size] for _ in range(epochs)]
    ).reshape(-1, batch_size)
    batches = {key: value[index] for key, value in data.items()}
    return jax.device_get(_run(step, state, batches, jax.random.key(seed + 1)))


@functools.partial(jax.jit, static_argnums=0)
def _run(step, state, batches, rng):
    """`step` over the stacked batches in one compiled scan (compiled once per step and
    model: seeds share it)."""
    return jax.lax.scan(lambda s, b: (step(s, b, rng)[0], None), state, batches)[0]


def accuracy(state, batch) -> float:
    """Eval accuracy of a trained state on one batch (compiled: qwix finds a quantization-aware
    model's weights by tracing, not in host NumPy arrays)."""
    metrics = jax.jit(eval_step)(state, batch)
    return float(metrics["accuracy"] / metrics["count"])
