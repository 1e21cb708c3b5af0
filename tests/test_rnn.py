"""Recurrent modules: each cell against a NumPy reference, padding invariance, bidirectional
layers on reversed sequences, parameter counts and bad configurations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl.models import build_model
from jdl.models.rnn import RecurrentLayer
from jdl.state import count_params

B, T, D, H = 3, 4, 5, 6
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# One step of each cell, written from the equations: x W + b is the input projection,
# U the recurrent kernel (c the GRU's recurrent bias), carries as the cells hold them.
def simple_step(x, carry, p):
    h = np.tanh(x @ p["W"] + p["b"] + carry @ p["U"])
    return h, h


def lstm_step(x, carry, p):
    c, h = carry
    z = x @ p["W"] + p["b"] + h @ p["U"]
    i, f, g, o = np.split(z, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    return (c, h), h


def gru_step(x, carry, p):
    xr, xz, xn = np.split(x @ p["W"] + p["b"], 3, axis=-1)
    hr, hz, hn = np.split(carry @ p["U"] + p["c"], 3, axis=-1)
    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    h = (1 - z) * n + z * carry
    return h, h


REFERENCE_STEPS = {"rnn": simple_step, "lstm": lstm_step, "gru": gru_step}


def random_variables(module, *args, seed: int = 0, **kwargs):
    """Variables of `module` for these inputs, every leaf (biases too, so that all matter)
    drawn from N(0, 0.5^2) with NumPy: shapes come from `jax.eval_shape`, nothing compiles."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (0.5 * rng.normal(size=x.shape)).astype(np.float32), shapes)


def reference_params(variables, direction: str = "forward") -> dict:
    p = variables["params"][direction]
    return {
        "W": np.asarray(p["input"]["kernel"]),
        "b": np.asarray(p["input"]["bias"]),
        "U": np.asarray(p["recurrent"]["kernel"]),
        "c": np.asarray(p["recurrent"].get("bias", 0.0)),
    }


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_each_cell_matches_a_numpy_reference_step_by_step(cell):
    layer = RecurrentLayer(cell, H)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    h0 = rng.normal(size=(B, H)).astype(np.float32)
    carry0 = (h0 * 0.5, h0) if cell == "lstm" else h0
    variables = random_variables(layer, x, None, (carry0,))
    (carry,), outputs = layer.apply(variables, x, None, (carry0,), True)

    p, carry_ref, outputs_ref = reference_params(variables), carry0, []
    for t in range(T):  # the first step alone is "one step"; the rest checks the scan wiring
        carry_ref, y = REFERENCE_STEPS[cell](x[:, t], carry_ref, p)
        outputs_ref.append(y)
        np.testing.assert_allclose(outputs[:, t], y, **TOLERANCE)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **TOLERANCE), carry, carry_ref)


def test_lstm_forget_gate_bias_starts_at_one():
    layer = RecurrentLayer("lstm", H, bidirectional=True)
    params = layer.init(jax.random.key(0), jnp.zeros((1, T, D)))["params"]
    for direction in ("forward", "backward"):
        bias = params[direction]["input"]["bias"]
        np.testing.assert_array_equal(bias, np.repeat([0.0, 1.0, 0.0, 0.0], H))


def sequence_model(cell="lstm", **fields):
    config = {"name": "rnn", "cell": cell, "hidden_size": H, **fields}
    return build_model(config, num_outputs=2)


@pytest.mark.parametrize(
    ("cell", "bidirectional", "pooling"),
    [
        ("rnn", False, "last"),
        ("lstm", True, "last"),
        ("gru", True, "mean"),
        ("lstm", False, "mean"),
    ],
)
def test_padding_never_changes_a_result(cell, bidirectional, pooling):
    """Each sequence of a padded batch gives what it gives alone, unpadded (2 layers)."""
    model = sequence_model(cell, bidirectional=bidirectional, pooling=pooling, num_layers=2)
    rng = np.random.default_rng(1)
    lengths = np.array([T + 3, 2, 1])
    x = rng.normal(size=(len(lengths), T + 3, D)).astype(np.float32)
    for row, length in enumerate(lengths):
        x[row, length:] = rng.normal(size=x[row, length:].shape) * 100  # garbage padding
    variables = random_variables(model, x)
    padded = model.apply(variables, x, lengths=jnp.asarray(lengths))
    for row, length in enumerate(lengths):
        alone = model.apply(variables, x[row : row + 1, :length])
        np.testing.assert_allclose(padded[row], alone[0], **TOLERANCE)


def swap_directions(variables):
    """Parameters of the same bidirectional layer with its two directions exchanged."""
    p = variables["params"]
    return {"params": {"forward": p["backward"], "backward": p["forward"]}}


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bidirectional_layer_on_a_reversed_sequence(cell):
    """Reversing the valid part of each sequence and exchanging the directions' parameters
    reverses the outputs in time and exchanges their halves."""
    layer = RecurrentLayer(cell, H, bidirectional=True)
    rng = np.random.default_rng(2)
    lengths = np.array([T, 2, 3])
    x = rng.normal(size=(len(lengths), T, D)).astype(np.float32)
    reversed_x = x.copy()
    for row, length in enumerate(lengths):
        reversed_x[row, :length] = x[row, :length][::-1]
    variables = random_variables(layer, x)
    _, outputs = layer.apply(variables, x, jnp.asarray(lengths))
    _, outputs_rev = layer.apply(swap_directions(variables), reversed_x, jnp.asarray(lengths))
    for row, length in enumerate(lengths):
        expected = outputs[row, :length][::-1]
        expected = np.concatenate([expected[:, H:], expected[:, :H]], axis=-1)
        np.testing.assert_allclose(outputs_rev[row, :length], expected, **TOLERANCE)


@pytest.mark.parametrize(
    ("fields", "num_outputs", "expected"),
    [
        # LSTM: input 2*(4*8) + 4*8 = 96, recurrent 8*32 = 256; head 8*1 + 1 = 9.
        ({"cell": "lstm", "hidden_size": 8}, 1, 361),
        # GRU: input 2*24 + 24 = 72, recurrent 8*24 + 24 = 216; head 9.
        ({"cell": "gru", "hidden_size": 8}, 1, 297),
        # Simple, 2 layers, bidirectional: layer 1 input 2*16+16 = 48, recurrent 2*64 = 128;
        # layer 2 input 16*16+16 = 272, recurrent 128; head 16*3 + 3 = 51.
        ({"cell": "rnn", "hidden_size": 8, "num_layers": 2, "bidirectional": True}, 3, 627),
    ],
)
def test_sequence_model_parameter_counts(fields, num_outputs, expected):
    model = build_model({"name": "rnn", **fields}, num_outputs)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 7, 2)))
    assert count_params(variables["params"]) == expected


def test_language_model_shapes_count_and_chunked_run():
    """Embedding 11*4 = 44; LSTM input 4*32+32 = 160, recurrent 8*32 = 256; head 8*11+11 = 99.
    Running a sequence in two chunks, the carries passed on, equals running it whole."""
    model = build_model({"name": "rnn_lm", "hidden_size": 8, "embed_dim": 4}, num_outputs=11)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 11, size=(2, 6)))
    variables = random_variables(model, tokens)
    assert count_params(variables["params"]) == 559
    whole = model.apply(variables, tokens)
    assert whole.shape == (2, 6, 11)
    first, carries = model.apply(variables, tokens[:, :4], return_carries=True)
    second = model.apply(variables, tokens[:, 4:], initial_carries=carries)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, **TOLERANCE)


def test_dropout_only_in_training():
    model = sequence_model(dropout_rate=0.5)
    x = jnp.ones((2, T, D))
    variables = random_variables(model, x)
    assert np.array_equal(model.apply(variables, x), model.apply(variables, x))
    a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)


@pytest.mark.parametrize(
    ("fields", "inputs", "message"),
    [
        ({"cell": "elman"}, jnp.zeros((1, T, D)), "Unknown cell 'elman'"),
        ({"pooling": "max"}, jnp.zeros((1, T, D)), "Unknown pooling 'max'"),
        ({}, jnp.zeros((1, T)), r"float sequences \[B, T, D\]"),
    ],
)
def test_bad_configurations_are_named(fields, inputs, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(sequence_model(**fields).init, jax.random.key(0), inputs)
