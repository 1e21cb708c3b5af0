"""The engine under train_and_evaluate: no workdir, callbacks, your own model, workdir records."""

import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from loop_helpers import small_config

from jdl import engine, train_and_evaluate
from jdl.data import from_arrays
from jdl.loop import load_config_dataset, settings_from_config
from jdl.models import MODELS, register
from jdl.parallel import Strategy
from jdl.tasks import make_task
from jdl.workdir import load_workdir

MLP_CONFIG = {"model": {"name": "mlp", "hidden_sizes": (32,)}, "num_epochs": 2}


class TwoLayers(nn.Module):
    """A user's module, not in the registry: sized by its own `num_outputs` field."""

    width: int = 32
    num_outputs: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(self.width)(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.num_outputs)(x)


def assert_trees_equal(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def digits_inputs(dataset) -> np.ndarray:
    batch = next(dataset.eval_batches())
    return batch["image"][batch["mask"] > 0]


class StopAt:
    """A callback that records what the engine tells it and stops after epoch `last`."""

    def __init__(self, last: int):
        self.last, self.calls = last, []

    def on_train_begin(self, state):
        self.calls.append(("begin", int(jax.device_get(state.step))))

    def on_epoch_end(self, epoch, logs, state):
        self.calls.append(("epoch", epoch, int(jax.device_get(state.step)), sorted(logs)))
        return epoch == self.last

    def on_train_end(self, state, logs):
        self.calls.append(("end", logs["step"]))


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """(config, result, workdir) of a finished two-epoch run of a registry MLP on digits."""
    config = small_config(**MLP_CONFIG)
    workdir = tmp_path_factory.mktemp("mlp")
    return config, train_and_evaluate(config, workdir), workdir


def test_engine_without_workdir_writes_nothing_and_equals_train_and_evaluate(
    mlp_run, tmp_path, monkeypatch
):
    config, with_workdir, _ = mlp_run
    dataset = load_config_dataset(config)
    monkeypatch.chdir(tmp_path)
    settings = settings_from_config(config, "mlp")
    task = make_task(config, dataset)
    result = engine.train(task, dataset, Strategy("jit"), settings)
    assert list(tmp_path.iterdir()) == []  # no checkpoints, metrics or figures anywhere
    assert [(h["epoch"], h["step"]) for h in result.history] == [(1, 22), (2, 44)]
    assert result.history[1]["train/loss"] < result.history[0]["train/loss"]
    assert result.history[-1]["eval/accuracy"] == result.metrics["eval/accuracy"] > 0.8
    assert_trees_equal(with_workdir.state.params, result.state.params)  # one engine
    again = engine.train(task, dataset, Strategy("jit"), settings)  # its state is not used up
    assert_trees_equal(again.state.params, result.state.params)


def test_a_metric_after_eval_adds_ranks_checkpoints_declared_or_not(mlp_run):
    config, _, _ = mlp_run
    dataset = load_config_dataset(config)
    settings = settings_from_config(config, "mlp")
    settings = dataclasses.replace(settings, best_metric="eval/margin", best_mode="max")
    task = make_task(config, dataset)  # one task for every run: training leaves its state alone
    with pytest.raises(ValueError, match=r"'eval/margin' is not produced"):
        engine.train(task, dataset, Strategy("jit"), settings)
    for declared in (("margin",), None):  # None: checked at the first evaluation instead
        margin = dataclasses.replace(
            task,
            after_eval=lambda *_: {"margin": 0.5},
            after_eval_metrics=declared,
        )
        result = engine.train(margin, dataset, Strategy("jit"), settings)
        assert result.metrics["eval/margin"] == 0.5


def test_a_callback_sees_every_epoch_and_can_stop_training():
    config = small_config(**{**MLP_CONFIG, "num_epochs": 4})
    dataset = load_config_dataset(config)
    callback = StopAt(last=2)
    settings = settings_from_config(config, "mlp")
    result = engine.train(
        make_task(config, dataset),
        dataset,
        Strategy("jit"),
        settings,
        callbacks=[callback, object()],
    )
    logs = ["eval/accuracy", "eval/loss", "train/accuracy", "train/loss"]
    assert callback.calls == [
        ("begin", 0),
        ("epoch", 1, 22, logs),
        ("epoch", 2, 44, logs),
        ("end", 44),
    ]
    assert result.metrics["early_stopped"] and int(result.state.step) == 44


def test_your_own_module_trains_and_reloads_only_with_it(tmp_path):
    config = small_config(**MLP_CONFIG)
    result = train_and_evaluate(config, tmp_path, model=TwoLayers(width=48))
    assert result.metrics["eval/accuracy"] > 0.8
    assert result.state.params["Dense_1"]["kernel"].shape == (48, 10)  # sized to the 10 digits
    recorded = json.loads((tmp_path / "config.json").read_text())["model"]
    assert recorded == {"name": f"{__name__}.TwoLayers", "rebuild": False}
    with pytest.raises(ValueError, match=r"not in jdl\.models\.MODELS.*model=MyModule"):
        load_workdir(tmp_path)
    restored = load_workdir(tmp_path, which="latest", model=TwoLayers(width=48))
    assert_trees_equal(restored.state.params, result.state.params)


def test_a_registered_model_reloads_from_the_workdir_alone(mlp_run):
    config, result, workdir = mlp_run
    restored = load_workdir(workdir, which="latest")
    images = digits_inputs(load_config_dataset(config))
    expected = result.state.model.apply(result.state.variables, images, train=False)
    assert restored.step == 44
    np.testing.assert_array_equal(restored.predict(images, batch_size=100), expected)
    accuracy = {h["step"]: h["eval/accuracy"] for h in result.history}
    assert accuracy[load_workdir(workdir, which="best").step] == max(accuracy.values())


def test_register_adds_a_name_and_refuses_to_take_one(monkeypatch):
    monkeypatch.setattr("jdl.models.MODELS", dict(MODELS))
    import jdl.models

    register("two_layers")(TwoLayers)
    assert jdl.models.MODELS["two_layers"] is TwoLayers
    with pytest.raises(ValueError, match=r"'mlp' is already registered.*replace=True"):
        register("mlp")(TwoLayers)
    register("mlp", replace=True)(TwoLayers)
    assert jdl.models.MODELS["mlp"] is TwoLayers


def test_a_module_without_a_train_keyword_is_refused_before_training(tmp_path):
    class NoTrain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(x.reshape((x.shape[0], -1)))

    with pytest.raises(ValueError, match="must take a `train` keyword"):
        train_and_evaluate(small_config(), tmp_path, model=NoTrain())
    assert not (tmp_path / "config.json").exists()


def test_a_finished_workdir_only_evaluates_and_a_foreign_one_is_refused(mlp_run, capsys):
    config, first, workdir = mlp_run
    before = (workdir / "metrics.jsonl").read_text()
    again = train_and_evaluate(config, workdir)
    assert "at step 44: training finished there, so only evaluating" in capsys.readouterr().out
    assert again.metrics["eval/accuracy"] == first.metrics["eval/accuracy"]
    with pytest.raises(ValueError, match=r"use a new workdir, or delete .* to start afresh"):
        train_and_evaluate(small_config(num_epochs=1), workdir)  # the CNN
    assert (workdir / "metrics.jsonl").read_text() == before


def test_evaluation_keeps_at_most_two_calls_in_flight():
    # With hundreds of sharded eval calls queued, XLA:CPU's all-reduce over CPU devices timed
    # out and aborted the process; evaluation now waits as training does. Each call here
    # takes milliseconds and returns at once, so without waiting they pile up.
    rng = np.random.default_rng(0)
    images, labels = rng.normal(size=(160, 4)).astype(np.float32), rng.integers(0, 2, 160)
    dataset = from_arrays(images, labels, images, labels, batch_size=8, eval_batch_size=8, seed=0)
    weights = jax.numpy.ones((384, 384))

    @jax.jit
    def slow_metrics(batch):
        product = jax.lax.fori_loop(0, 20, lambda _, w: jax.numpy.tanh(w @ weights), weights)
        count = jax.numpy.sum(batch["mask"])
        return {"loss": count * product[0, 0] * 0, "accuracy": count, "count": count}

    outputs, pending_at_call = [], []

    def eval_fn(state, batch):
        pending_at_call.append(sum(not out["count"].is_ready() for out in outputs))
        outputs.append(slow_metrics(batch))
        return outputs[-1]

    metrics = engine.evaluate(eval_fn, None, dataset, Strategy("jit"))
    assert metrics["eval/accuracy"] == pytest.approx(1.0)
    assert len(pending_at_call) == 20
    assert max(pending_at_call) <= 2
