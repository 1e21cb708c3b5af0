"""Int8 quantization through qwix: accuracy kept, bytes saved, checkpoints, bad input."""

import jax
import numpy as np
import pytest

from jdl import quantize
from jdl.checkpointing import CheckpointError
from jdl.models import CNN
from jdl.steps import train_step
from jdl.stored import read_float_variables
from tests.digits_training import accuracy, digits, train

EPOCHS, LEARNING_RATE = 20, 3e-3


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def trained(data):
    """The documents' CNN trained on digits, and its eval accuracy."""
    state = train(
        CNN(num_outputs=10), train_step, data[0], epochs=EPOCHS, seed=0, learning_rate=LEARNING_RATE
    )
    return state, accuracy(state, data[1])


@pytest.fixture(scope="module")
def static_int8(trained, data):
    state, _ = trained
    calibration = data[0]["image"][:512]
    return quantize.post_training_quantize(state.model, state.variables, (8, 8, 1), calibration)


def int8_accuracy(quantized, batch) -> float:
    logits = jax.jit(lambda x: quantized(x))(batch["image"])
    return float(np.mean(np.argmax(logits, -1) == batch["label"]))


def test_static_int8_loses_at_most_half_a_point(trained, static_int8, data):
    _, float_accuracy = trained
    assert float_accuracy > 0.97
    assert int8_accuracy(static_int8, data[1]) >= float_accuracy - 0.005


def test_static_int8_stores_int8_weights_in_a_quarter_of_the_bytes(trained, static_int8):
    kernels = [
        leaf
        for leaf in jax.tree.leaves(static_int8.variables)
        if leaf.dtype == np.int8  # every conv and dense kernel
    ]
    assert len(kernels) == 3
    raw_float_bytes = sum(x.nbytes for x in jax.tree.leaves(trained[0].variables))
    float_bytes = quantize.serialized_bytes(trained[0].variables)
    assert raw_float_bytes <= float_bytes <= raw_float_bytes + 2_000  # arrays, names, shapes
    assert quantize.serialized_bytes(static_int8.variables) <= 0.27 * float_bytes


def test_quantization_aware_training_within_0_3_points(trained, data):
    model = quantize.quantization_aware(CNN(num_outputs=10))
    state = train(model, train_step, data[0], epochs=EPOCHS, seed=0, learning_rate=LEARNING_RATE)
    assert accuracy(state, data[1]) >= trained[1] - 0.003


@pytest.mark.parametrize("mode", ["static", "weights_only"])
def test_int8_save_restore_predicts_the_same(trained, static_int8, data, mode, tmp_path):
    state, _ = trained
    quantized = static_int8
    if mode == "weights_only":
        quantized = quantize.post_training_quantize(
            state.model, state.variables, (8, 8, 1), mode="weights_only"
        )
    quantize.save_quantized(tmp_path / "int8", quantized)
    restored = quantize.load_quantized(tmp_path / "int8", CNN(num_outputs=10))
    images = data[1]["image"]
    expected = jax.jit(lambda x: quantized(x))(images)
    np.testing.assert_array_equal(jax.jit(lambda x: restored(x))(images), expected)
    with pytest.raises(FileExistsError, match="never replaces"):
        quantize.save_quantized(tmp_path / "int8", quantized)


@pytest.mark.parametrize("variables", [None, {}, {"params": {}}])
def test_quantizing_before_parameters_exist_raises(variables):
    with pytest.raises(quantize.QuantizationError, match="without parameters"):
        quantize.post_training_quantize(CNN(), variables, (8, 8, 1), np.zeros((4, 8, 8, 1)))


def test_empty_calibration_set_and_unknown_mode_raise(trained):
    state, _ = trained
    with pytest.raises(quantize.QuantizationError, match="calibration set is empty"):
        quantize.post_training_quantize(
            state.model, state.variables, (8, 8, 1), np.zeros((0, 8, 8, 1))
        )
    with pytest.raises(quantize.QuantizationError, match="valid modes"):
        quantize.post_training_quantize(state.model, state.variables, (8, 8, 1), mode="int4")


def listing(path):
    return sorted((p.relative_to(path), p.stat().st_size) for p in path.rglob("*"))


def test_int8_and_float_checkpoints_do_not_load_as_each_other(trained, static_int8, tmp_path):
    state, _ = trained
    quantize.save_quantized(tmp_path / "int8", static_int8)
    quantize.save_float(tmp_path / "float", state.variables)
    before = listing(tmp_path)
    with pytest.raises(CheckpointError, match="holds an int8 model"):
        read_float_variables(tmp_path / "int8", {"params": state.params})
    with pytest.raises(CheckpointError, match="holds float parameters"):
        quantize.load_quantized(tmp_path / "float", CNN(num_outputs=10))
    with pytest.raises(CheckpointError, match="does not fit"):
        quantize.load_quantized(tmp_path / "int8", CNN(widths=(8, 16), num_outputs=10))
    assert listing(tmp_path) == before
