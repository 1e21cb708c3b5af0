"""train_and_evaluate end to end on embedded digits: learning, workdir, resume, errors."""

import jax
import numpy as np
import pytest
from loop_helpers import small_config

from experiments import digits_cnn
from jdl import train_and_evaluate
from jdl.checkpointing import Checkpointer
from jdl.data import from_arrays
from jdl.loop import create_state, evaluate, load_config_dataset
from jdl.metrics import NonFiniteLossError, read_records
from jdl.parallel import Strategy
from jdl.steps import eval_step


def assert_trees_close(a, b, **tolerance):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, **tolerance), a, b)


def test_quickstart_reaches_real_accuracy_and_fills_the_workdir(tmp_path):
    config = digits_cnn.get_config()
    config.progress_bar = False
    result = train_and_evaluate(config, tmp_path)
    assert result.metrics["eval/accuracy"] >= 0.95
    records = read_records(tmp_path / "metrics.jsonl")
    assert {"step", "epoch", "train/loss", "train/accuracy"} <= set(records[0])
    evals = [r for r in records if "eval/accuracy" in r]
    assert [r["epoch"] for r in evals] == list(range(1, 41))
    assert evals[-1]["eval/accuracy"] == result.metrics["eval/accuracy"]
    train_losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert tensorboard_scalars(tmp_path / "tensorboard") == jsonl_scalars(records)
    with Checkpointer(tmp_path / "checkpoints") as checkpointer:
        assert checkpointer.latest_step() == result.metrics["step"] == 40 * (1437 // 32)


def tensorboard_scalars(logdir) -> dict:
    """{(step, tag): value} of every scalar in the TensorBoard event files under `logdir`."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    scalars = {}
    for path in logdir.glob("events.out.tfevents.*"):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                scalars[event.step, value.tag] = value.simple_value
    return scalars


def jsonl_scalars(records: list[dict]) -> dict:
    """The same mapping from metrics.jsonl records, rounded to float32 as TensorBoard keeps them."""
    return {
        (r["step"], name): float(np.float32(value))
        for r in records
        for name, value in r.items()
        if name not in ("step", "epoch")
    }


def test_evaluate_counts_every_example_once():
    config = small_config()
    dataset = load_config_dataset(config)
    strategy = Strategy("sharded")
    state = strategy.put_replicated(create_state(config, dataset))
    metrics = evaluate(strategy.compile_eval(eval_step), state, dataset, strategy)

    host = jax.device_get(state)
    images, labels = [], []
    for batch in dataset.eval_batches():
        keep = batch["mask"] > 0
        images.append(batch["image"][keep])
        labels.append(batch["label"][keep])
    logits = host.model.apply(host.variables, np.concatenate(images), train=False)
    expected = float(np.mean(np.argmax(logits, -1) == np.concatenate(labels)))
    assert len(np.concatenate(labels)) == 360
    assert metrics["eval/accuracy"] == pytest.approx(expected, abs=1e-6)


class Crash(Exception):
    pass


def crash_on_save_number(monkeypatch, n):
    """Makes the n-th checkpoint save of the process raise, as a killed run would stop."""
    original, calls = Checkpointer.save, []

    def save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise Crash
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", save)


@pytest.mark.parametrize(
    ("first_mode", "resume_mode"), [("jit", "jit"), ("pmap", "sharded"), ("sharded", "jit")]
)
def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, first_mode, resume_mode):
    full = train_and_evaluate(small_config(checkpoint_every=10), tmp_path / "full")

    with monkeypatch.context() as patch:
        crash_on_save_number(patch, 5)  # saves at 10, 20, 22 (epoch end), 30; dies at 40
        with pytest.raises(Crash):
            train_and_evaluate(
                small_config(checkpoint_every=10, parallel=first_mode), tmp_path / "cut"
            )
    resumed = train_and_evaluate(
        small_config(checkpoint_every=10, parallel=resume_mode), tmp_path / "cut"
    )

    assert resumed.metrics["step"] == full.metrics["step"]
    tolerance = {"rtol": 0, "atol": 0} if first_mode == resume_mode else {"atol": 1e-5}
    assert_trees_close(resumed.state.params, full.state.params, **tolerance)
    resumed_records = read_records(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in resumed_records] == [
        r["step"] for r in read_records(tmp_path / "full" / "metrics.jsonl")
    ]


def test_k_steps_per_call_equals_one_step_per_call(tmp_path):
    one = train_and_evaluate(small_config(num_epochs=1), tmp_path / "one")
    # 22 steps per epoch: five calls of 4 steps, then a tail of 2 single steps.
    four = train_and_evaluate(small_config(num_epochs=1, steps_per_call=4), tmp_path / "four")
    assert_trees_close(four.state.params, one.state.params, atol=1e-6)
    assert four.metrics["train/loss"] == pytest.approx(one.metrics["train/loss"], rel=1e-5)


@pytest.mark.parametrize("data_on_device", [False, True])
def test_num_steps_can_end_mid_epoch(tmp_path, data_on_device):
    result = train_and_evaluate(
        small_config(num_steps=30, steps_per_call=4, data_on_device=data_on_device), tmp_path
    )
    assert result.metrics["step"] == int(result.state.step) == 30  # 22 + 8 of epoch 2
    assert read_records(tmp_path / "metrics.jsonl")[-1]["epoch"] == 2


def test_epoch_on_device_trains_as_well(tmp_path):
    result = train_and_evaluate(small_config(data_on_device=True, parallel="sharded"), tmp_path)
    assert result.metrics["step"] == 3 * 22
    assert result.metrics["eval/accuracy"] > 0.6


def test_nan_loss_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path):
    good = small_config(num_epochs=1)
    train_and_evaluate(good, tmp_path)
    diverging = small_config(num_epochs=3, learning_rate=1e12, log_every=1, schedule="constant")
    with pytest.raises(NonFiniteLossError, match=r"step 2[3-9]"):
        train_and_evaluate(diverging, tmp_path)
    with Checkpointer(tmp_path / "checkpoints") as checkpointer:
        assert checkpointer.latest_step() == 22


def test_early_stopping_ends_a_run_that_stops_improving(tmp_path):
    config = small_config(num_epochs=10, learning_rate=0.0, early_stopping_patience=2)
    result = train_and_evaluate(config, tmp_path)
    assert result.metrics["early_stopped"]
    assert result.metrics["step"] == 3 * 22  # one evaluation to set the best, two without gain


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"model": {"name": "resnet9000"}}, r"Unknown model 'resnet9000'.*'cnn'.*'mlp'"),
        ({"optimizer": "adamax"}, r"Unknown optimizer 'adamax'.*'adam'"),
        ({"dataset": "imagenet"}, r"Unknown dataset 'imagenet'.*digits"),
        ({"parallel": "tpu"}, r"Unknown compile mode.*'pmap'"),
        ({"matmul_precision": "half"}, r"Unknown matmul_precision 'half'.*'bfloat16'"),
        ({"batch_size": 60, "parallel": "pmap"}, r"60 is not divisible by the 8 devices"),
    ],
)
def test_bad_config_raises_a_clear_error(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(small_config(**override), tmp_path)


def test_a_bfloat16_run_learns_with_float32_parameters_that_differ_from_a_float32_run(tmp_path):
    full = train_and_evaluate(small_config(), tmp_path / "float32")
    low = train_and_evaluate(small_config(matmul_precision="bfloat16"), tmp_path / "bfloat16")
    assert low.metrics["eval/accuracy"] >= 0.9
    kernels = [r.state.params["Conv_0"]["kernel"] for r in (full, low)]
    assert kernels[1].dtype == np.float32
    assert 0 < np.max(np.abs(kernels[1] - kernels[0])) < 0.1 * np.max(np.abs(kernels[0]))


def test_unknown_config_key_is_named(tmp_path):
    config = small_config().to_dict()
    config["learning_rte"] = 0.1
    with pytest.raises(ValueError, match="learning_rte"):
        train_and_evaluate(config, tmp_path)


def test_binary_task_uses_one_sigmoid_logit(tmp_path):
    from experiments import binary_mlp

    config = binary_mlp.get_config()
    config.update({"num_epochs": 15, "progress_bar": False})
    result = train_and_evaluate(config, tmp_path)
    assert result.state.params["Dense_1"]["kernel"].shape == (10, 1)
    assert result.metrics["eval/accuracy"] >= 0.93


def test_user_arrays_train_through_the_same_loop(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int32) + 2 * (x[:, 2] > 0)  # four classes
    dataset = from_arrays(
        x[:500], y[:500], x[500:], y[500:], batch_size=25, eval_batch_size=32, seed=0
    )
    config = small_config(
        model={"name": "mlp", "hidden_sizes": (32,)},
        num_epochs=20,
        learning_rate=1e-2,
        dataset="user arrays",
    )
    result = train_and_evaluate(config, tmp_path, dataset=dataset)
    assert result.metrics["eval/accuracy"] >= 0.9
