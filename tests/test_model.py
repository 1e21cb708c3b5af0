"""jdl.Model: Keras's interface on users' own linen and NNX modules, over jdl's engine."""

import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import nnx

import jdl
from jdl.checkpointing import CheckpointMismatchError
from jdl.data.embedded import digits_splits
from jdl.keras import EarlyStopping, Model, ModelCheckpoint
from jdl.models import MLP

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


class DigitsCNN(nn.Module):
    """A user's own CNN: not in jdl's registry, no `train` keyword."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class BatchNormMLP(nn.Module):
    """Dense -> batch norm -> dense, averaging its statistics over `axis_name` under pmap."""

    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(16)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name)(x)
        return nn.Dense(10)(nn.relu(x))


class NoAxisBatchNorm(nn.Module):
    """Batch norm with no way to name the mapped axis: pmap must refuse it."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(10)(nn.BatchNorm(use_running_average=not train)(x))


class NNXMLP(nnx.Module):
    """A user's NNX MLP with batch norm and dropout."""

    def __init__(self, rngs: nnx.Rngs, dropout: float = 0.1, hidden: int = 64):
        self.hidden = nnx.Linear(64, hidden, rngs=rngs)
        self.norm = nnx.BatchNorm(hidden, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.norm(self.hidden(x.reshape(x.shape[0], -1))))
        return self.out(self.dropout(x))


@pytest.fixture(scope="module")
def digits():
    return digits_splits()


def compiled(module, parallel="jit", input_shape=None, optimizer=None, **options):
    model = Model(module, input_shape=input_shape)
    model.compile(
        optimizer=optimizer or optax.adam(1e-2),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        parallel=parallel,
        **options,
    )
    return model


@pytest.mark.parametrize(
    ("make_module", "epochs"),
    [(DigitsCNN, 6), (lambda: NNXMLP(nnx.Rngs(0), hidden=128), 8)],
    ids=["linen_cnn", "nnx_mlp"],
)
def test_users_modules_learn_digits(digits, make_module, epochs):
    x_train, y_train, x_eval, y_eval = digits
    steps = epochs * (len(x_train) // 32)
    optimizer = optax.adam(optax.cosine_decay_schedule(1e-2, steps))
    model = compiled(make_module(), optimizer=optimizer, steps_per_call=4)
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    loss, accuracy = model.evaluate(x_eval, y_eval, batch_size=64)
    assert accuracy >= 0.97, accuracy
    assert loss < 0.15


@pytest.mark.parametrize(
    "make_module",
    [lambda: BatchNormMLP(), lambda: NNXMLP(nnx.Rngs(0), dropout=0.0, hidden=16)],
    ids=["linen_batchnorm", "nnx_batchnorm"],
)
def test_fit_and_predict_agree_under_jit_sharded_pmap(digits, make_module):
    x_train, y_train, x_eval, _ = digits
    x_train, y_train = x_train[:256], y_train[:256]
    results = {}
    for parallel in ("jit", "sharded", "pmap"):
        # SGD: Adam's normalised updates would magnify float rounding in near-zero gradients.
        model = compiled(make_module(), parallel, optimizer=optax.sgd(0.1))
        history = model.fit(x_train, y_train, epochs=1, batch_size=64, shuffle=False, verbose=0)
        results[parallel] = (history.history["loss"], model.get_weights(), model.predict(x_eval))
    for parallel in ("sharded", "pmap"):
        jax.tree.map(
            lambda a, e: np.testing.assert_allclose(a, e, **TOLERANCE),
            results[parallel],
            results["jit"],
        )


def test_pmap_refuses_batch_norm_it_cannot_average(digits):
    model = compiled(NoAxisBatchNorm(), "pmap")
    with pytest.raises(ValueError, match="no `axis_name` field"):
        model.fit(digits[0].reshape(-1, 64), digits[1], epochs=1, batch_size=64, verbose=0)


def softmax_cross_entropy(logits, labels):
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def test_history_fit_again_and_evaluate_every_example_once(digits):
    x_train, y_train, x_eval, y_eval = digits
    model = compiled(MLP(hidden_sizes=(32,)), "pmap", steps_per_call=3)
    first = model.fit(x_train, y_train, epochs=2, batch_size=64, validation_split=0.2, verbose=0)
    assert set(first.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(values) == 2 for values in first.history.values())
    assert first.history["loss"][1] < first.history["loss"][0]
    second = model.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    assert set(second.history) == {"loss", "accuracy"}
    assert second.history["loss"][0] < first.history["loss"][1]  # not restarted
    assert int(model.state.step) == 2 * (1150 // 64) + 1437 // 64  # 287 held out, then none
    # 37 examples in batches of 8 over 8 devices: NumPy's mean over the 37 predictions.
    x, y = x_eval[:37], y_eval[:37]
    logits = model.predict(x, batch_size=8)
    assert logits.shape == (37, 10)
    results = model.evaluate(x, y, batch_size=8, return_dict=True)
    assert results["loss"] == pytest.approx(softmax_cross_entropy(logits, y).mean(), rel=1e-5)
    assert results["accuracy"] == pytest.approx((logits.argmax(-1) == y).mean())


def sigmoid_cross_entropy(logits, labels):
    return np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))


def top5(logits, labels):
    return (np.argsort(-logits, axis=-1)[:, :5] == labels[:, None]).any(-1)


@pytest.mark.parametrize(
    ("loss", "outputs", "metric", "expected_loss", "expected_metric"),
    [
        (
            "categorical_crossentropy",
            10,
            "top_k_accuracy",
            lambda z, y: softmax_cross_entropy(z, y),
            lambda z, y: top5(z, y),
        ),
        (
            "binary_crossentropy",
            1,
            "accuracy",
            lambda z, y: sigmoid_cross_entropy(z[:, 0], y % 2),
            lambda z, y: (z[:, 0] > 0) == (y % 2),
        ),
        (
            "mse",
            10,
            "mae",
            lambda z, y: ((z - np.eye(10)[y]) ** 2).mean(-1),
            lambda z, y: np.abs(z - np.eye(10)[y]).mean(-1),
        ),
    ],
)
def test_named_losses_and_metrics_match_numpy(
    digits, loss, outputs, metric, expected_loss, expected_metric
):
    x, y = digits[2][:50].reshape(50, 64), digits[3][:50]
    labels = {"binary_crossentropy": y % 2}.get(loss, np.eye(10, dtype=np.float32)[y])
    model = Model(MLP(hidden_sizes=(8,), num_outputs=outputs), input_shape=(64,))
    model.compile(loss=loss, metrics=[metric])
    logits = model.predict(x, batch_size=16)
    loss_value, metric_value = model.evaluate(x, labels, batch_size=16)
    assert loss_value == pytest.approx(expected_loss(logits, y).mean(), rel=1e-5)
    assert metric_value == pytest.approx(expected_metric(logits, y).mean(), rel=1e-5)


def test_binary_classifier_and_regression_learn():
    """The documents' 8-10-1 binary classifier, and an MSE regression, on known answers."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype(np.float32)
    w = rng.normal(size=(8,))
    classifier = Model(MLP(hidden_sizes=(10,), num_outputs=1))
    classifier.compile(optimizer=optax.adam(1e-2), loss="binary_crossentropy", metrics=["accuracy"])
    classifier.fit(x, (x @ w > 0).astype(np.int32), epochs=10, batch_size=32, verbose=0)
    assert classifier.evaluate(x, (x @ w > 0).astype(np.int32))[1] >= 0.95
    regressor = Model(MLP(hidden_sizes=(16,), num_outputs=1))
    regressor.compile(optimizer=optax.adam(1e-2), loss="mse", metrics=["mae"])
    history = regressor.fit(x, (x @ w)[:, None], epochs=10, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.05 * history.history["loss"][0]


def test_callbacks_stop_restore_and_keep_the_best(digits, tmp_path):
    x_train, y_train = digits[0][:512], digits[1][:512]
    weights = []

    class Recorder:  # the documented protocol: any object with on_epoch_end(epoch, logs)
        def set_model(self, model):
            self.model = model

        def on_epoch_end(self, epoch, logs):
            weights.append(self.model.get_weights())

    # Loss falls every epoch, so with mode="max" the first epoch stays the best.
    stopper = EarlyStopping(monitor="loss", mode="max", patience=2, restore_best_weights=True)
    keeper = ModelCheckpoint(tmp_path / "best", monitor="loss", mode="max")
    model = compiled(MLP(hidden_sizes=(16,)))
    history = model.fit(
        x_train,
        y_train,
        epochs=10,
        batch_size=64,
        callbacks=[Recorder(), stopper, keeper],
        verbose=0,
    )
    assert len(history.history["loss"]) == 3 == len(weights)  # epochs 0, 1, 2: stopped at 2
    jax.tree.map(np.testing.assert_array_equal, model.get_weights(), weights[0])
    jax.tree.map(
        np.testing.assert_array_equal, jdl.load(tmp_path / "best").get_weights(), weights[0]
    )


def test_workdir_gets_metrics_tensorboard_and_curves(digits, tmp_path):
    model = compiled(MLP(hidden_sizes=(8,)))
    model.fit(
        digits[0],
        digits[1],
        epochs=2,
        batch_size=128,
        validation_split=0.25,
        workdir=tmp_path,
        verbose=0,
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["epoch"] for r in records if "eval/loss" in r} == {1, 2}
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert any((tmp_path / "tensorboard").iterdir())


LOAD_AND_PREDICT = """
import sys, numpy as np, jdl
model = jdl.load(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), batch_size=32))
"""


@pytest.fixture(scope="module")
def saved_mlp(digits, tmp_path_factory):
    """A trained jdl.models.MLP with batch norm, saved; and its predictions on the eval set."""
    path = tmp_path_factory.mktemp("saved") / "model"
    model = compiled(MLP(hidden_sizes=(32,), batch_norm=True))
    model.fit(digits[0], digits[1], epochs=1, batch_size=64, verbose=0)
    model.save(path)
    return path, model.predict(digits[2])


def test_load_in_a_fresh_process_predicts_bit_identically(digits, saved_mlp, tmp_path):
    path, predictions = saved_mlp
    np.save(tmp_path / "x.npy", digits[2])
    subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_AND_PREDICT,
            str(path),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PATH": ""},
    )
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), predictions)


def test_load_refuses_an_incompatible_module(saved_mlp):
    with pytest.raises(CheckpointMismatchError, match=r"(?s)does not fit .*Dense_0/kernel"):
        jdl.load(saved_mlp[0], module=MLP(hidden_sizes=(16,), batch_norm=True))


def test_nnx_model_loads_with_its_module(digits, tmp_path):
    x_train, y_train, x_eval, _ = digits
    model = Model(NNXMLP(nnx.Rngs(0)))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    model.save(tmp_path / "nnx")
    with pytest.raises(ValueError, match="module=NNXMLP"):
        jdl.load(tmp_path / "nnx")
    loaded = jdl.load(tmp_path / "nnx", module=NNXMLP(nnx.Rngs(1)))
    np.testing.assert_array_equal(loaded.predict(x_eval), model.predict(x_eval))
    jax.tree.map(np.testing.assert_array_equal, loaded.state.opt_state, model.state.opt_state)


# --- bad input: a clear error before any training, nothing written ----------------------
def _fit(model_kwargs, fit_args, loss="sparse_categorical_crossentropy", **fit_kwargs):
    def run(workdir):
        model = Model(**model_kwargs)
        model.compile(loss=loss)
        model.fit(*fit_args, epochs=1, batch_size=8, workdir=workdir, verbose=0, **fit_kwargs)

    return run


X = np.zeros((16, 8, 8, 1), np.float32)
SMALL_MLP = MLP(hidden_sizes=(8,))
Y = np.arange(16) % 10


def teacher(num_outputs=10):
    return Model(MLP(hidden_sizes=(8,), num_outputs=num_outputs), input_shape=(8, 8, 1))


def test_fit_with_a_teacher_learns_from_the_teacher(digits):
    """alpha=1 trains on the teacher's soft targets alone: with shuffled labels the student
    still learns the digits, which it can only have from the teacher."""
    x_train, y_train, x_eval, y_eval = digits
    trained = compiled(MLP(hidden_sizes=(128,)))
    trained.fit(x_train, y_train, epochs=6, batch_size=32, verbose=0)
    assert trained.evaluate(x_eval, y_eval, return_dict=True)["accuracy"] > 0.93
    frozen = jax.tree.map(np.array, trained.state.params)
    wrong = np.random.default_rng(0).permutation(y_train)
    student = compiled(MLP(hidden_sizes=(32,)))
    student.fit(x_train, wrong, epochs=8, batch_size=32, verbose=0, teacher=trained, alpha=1.0)
    assert student.evaluate(x_eval, y_eval, return_dict=True)["accuracy"] > 0.9
    jax.tree.map(np.testing.assert_array_equal, trained.state.params, frozen)
    alone = compiled(MLP(hidden_sizes=(32,)))
    alone.fit(x_train, wrong, epochs=8, batch_size=32, verbose=0)
    assert alone.evaluate(x_eval, y_eval, return_dict=True)["accuracy"] < 0.3


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (_fit({"module": SMALL_MLP}, (X, Y[:15])), "x has 16 examples but y has 15"),
        (
            _fit({"module": SMALL_MLP}, (X, Y + 1)),
            r"labels in \[1, 10\], out of range .* 10 outputs",
        ),
        (_fit({"module": SMALL_MLP}, (X, np.eye(10)[Y])), "one-hot labels .* sparse_categorical"),
        (
            _fit({"module": SMALL_MLP}, (X, Y), loss="categorical_crossentropy"),
            "integer class labels .* categorical_crossentropy takes one-hot",
        ),
        (
            _fit({"module": SMALL_MLP}, (X, Y % 2), loss="binary_crossentropy"),
            "binary_crossentropy needs one output .* has 10",
        ),
        (
            _fit({"module": SMALL_MLP, "input_shape": (64,)}, (X, Y)),
            r"shape \(8, 8, 1\), but the model was built for \(64,\)",
        ),
        (lambda workdir: Model(SMALL_MLP).predict(X), "no parameters yet"),
        (lambda workdir: jdl.load(workdir), "No jdl.Model saved"),
        (
            _fit({"module": SMALL_MLP}, (X, Y), teacher=teacher(num_outputs=3)),
            "teacher has 3 outputs and this model 10",
        ),
        (
            _fit({"module": SMALL_MLP}, (X, Y), teacher=teacher(), temperature=0.0),
            "temperature must be > 0",
        ),
        (
            _fit({"module": SMALL_MLP}, (X, Y), teacher=teacher(), alpha=1.5),
            r"alpha must lie in \[0, 1\]",
        ),
        (
            _fit({"module": SMALL_MLP}, (X, Y), teacher=Model(SMALL_MLP)),
            "teacher must be a jdl.Model that has been built",
        ),
        (
            _fit({"module": MLP(num_outputs=1)}, (X, Y * 0.1), loss="mse", teacher=teacher(1)),
            "distils classifiers",
        ),
    ],
    ids=[
        "lengths",
        "label_range",
        "one_hot_sparse",
        "sparse_categorical",
        "binary_width",
        "input_shape",
        "predict_unbuilt",
        "load_nothing",
        "teacher_outputs",
        "temperature",
        "alpha",
        "teacher_unbuilt",
        "teacher_regression",
    ],
)
def test_bad_input_fails_clearly_before_writing(tmp_path, action, message):
    workdir = tmp_path / "run"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        action(workdir)
    assert not workdir.exists()


def test_keras_mnist_example_runs_on_mock_mnist(tmp_path, capsys):
    """examples/keras_mnist_mlp.py end to end on tfds's mock MNIST (random images)."""
    import tensorflow_datasets as tfds

    from examples import keras_mnist_mlp

    with tfds.testing.mock_data(num_examples=64):
        accuracy = keras_mnist_mlp.main(["--data_dir", str(tmp_path)])
    assert f"test accuracy {accuracy:.4f}" in capsys.readouterr().out
