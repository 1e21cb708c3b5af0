"""Tasks: the registry, config validation, and a task's hooks running inside the loop."""

import dataclasses
import json

import numpy as np
import pytest
from loop_helpers import small_config

from jdl import tasks, train_and_evaluate
from jdl.data import load_dataset
from jdl.metrics import NonFiniteLossError, check_finite, read_records
from jdl.plots import metric_names, plot_curves
from jdl.tasks import TASKS, make_task


def test_unknown_task_lists_the_valid_ones():
    config = small_config(task={"name": "translation"})
    dataset = load_dataset("digits", batch_size=32, eval_batch_size=64, seed=0)
    with pytest.raises(ValueError, match=r"Unknown task 'translation'.*'classification'"):
        make_task(config, dataset)


def test_unknown_task_field_is_named():
    config = small_config(task={"name": "classification", "temperature": 0.5})
    dataset = load_dataset("digits", batch_size=32, eval_batch_size=64, seed=0)
    with pytest.raises(ValueError, match=r"Unknown field\(s\) \['temperature'\]"):
        make_task(config, dataset)


def test_unknown_dataset_option_is_named():
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['seq_len'\] for dataset 'digits'"):
        load_dataset("digits", batch_size=32, eval_batch_size=64, seed=0, seq_len=10)


def test_after_eval_metrics_and_files_reach_the_workdir(tmp_path, monkeypatch):
    """A task's hook runs after every evaluation; what it returns is logged as eval/<name>."""
    seen_epochs = []

    def with_hook(config, dataset, *, label="probe"):
        task = tasks.classification_task(config, dataset)

        def after_eval(state, epoch, workdir):
            seen_epochs.append(epoch)
            (workdir / f"{label}-{epoch}.json").write_text(json.dumps({"step": int(state.step)}))
            return {"hook_epoch": float(epoch)}

        return dataclasses.replace(task, after_eval=after_eval)

    monkeypatch.setitem(TASKS, "hooked", with_hook)
    config = small_config(task={"name": "hooked", "label": "seen"})
    result = train_and_evaluate(config, tmp_path)

    assert seen_epochs == [1, 2, 3]
    records = read_records(tmp_path / "metrics.jsonl")
    assert [r["eval/hook_epoch"] for r in records if "eval/hook_epoch" in r] == [1.0, 2.0, 3.0]
    assert result.metrics["eval/hook_epoch"] == 3.0
    steps_per_epoch = 1437 // config.batch_size
    saved = json.loads((tmp_path / "seen-2.json").read_text())
    assert saved == {"step": 2 * steps_per_epoch}
    assert result.metrics["eval/accuracy"] > 0.5  # still a real classifier underneath


def test_every_loss_metric_is_checked_for_nan():
    check_finite({"d_loss": 0.7, "g_loss": 1.2, "d_real": float("nan")}, 1, 5)  # not a loss
    with pytest.raises(NonFiniteLossError, match=r"g_loss became inf at steps 1-5"):
        check_finite({"d_loss": 0.7, "g_loss": float("inf")}, 1, 5)


def test_curves_get_one_panel_per_metric(tmp_path):
    records = [
        {"step": s, "train/d_loss": 1 / s, "train/g_loss": s, "train/examples_per_sec": 9}
        for s in range(1, 5)
    ] + [{"step": 4, "eval/fid": 3.0, "eval/d_loss": 0.5}]
    assert metric_names(records) == ["d_loss", "g_loss", "fid"]
    from PIL import Image

    three = Image.open(plot_curves(records, tmp_path / "three.png"))
    one = Image.open(plot_curves([{"step": 1, "train/loss": 1.0}], tmp_path / "one.png"))
    # Panels side by side: three metrics make a figure three panels wide.
    assert three.size == (3 * one.size[0], one.size[1])
    assert np.asarray(three).std() > 0
