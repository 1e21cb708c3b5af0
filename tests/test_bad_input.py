"""Bad input gets an error naming the problem, and never costs the last good checkpoint."""

import hashlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import pytest
from loop_helpers import small_config

from jdl import train_and_evaluate
from jdl.checkpointing import Checkpointer, CheckpointMismatchError
from jdl.data import DatasetUnavailableError, from_arrays, load_dataset
from jdl.metrics import NonFiniteLossError
from jdl.models import build_model
from jdl.optimizers import make_optimizer
from jdl.state import create_train_state
from jdl.steps import train_step

X = np.random.default_rng(0).random((40, 8, 8, 1), np.float32)
Y = np.arange(40) % 4


def arrays(x=X, y=Y, **kwargs):
    """from_arrays on (x, y) for both splits."""
    options = {"batch_size": 8, "eval_batch_size": 8, "seed": 0, **kwargs}
    return from_arrays(x, y, x, y, **options)


def train_on(workdir, **overrides):
    return train_and_evaluate(small_config(**{"num_epochs": 2, **overrides}), workdir)


def step_on(batch):
    """One train step of a small CNN built for 8x8x1 images."""
    model = build_model({"name": "cnn", "widths": (4,)}, 4)
    tx = make_optimizer({"optimizer": "sgd", "learning_rate": 0.1}, 10)
    state = create_train_state(model, tx, (8, 8, 1), jax.random.key(0))
    return train_step(state, batch, jax.random.key(1))


class Case(NamedTuple):
    run: Callable[[Path], object]  # given a folder; for RUN_CASES, a workdir with checkpoints
    error: type[Exception]
    message: str  # a regex the error message must match


# Bad input to the parts under the loop: data, steps, the workdir path. No checkpoints involved.
INPUT_CASES = {
    "inputs that are not numbers": Case(
        lambda _: arrays(x=np.full((40, 2), "a")), ValueError, "must hold numbers.*<U1"
    ),
    "float labels": Case(
        lambda _: arrays(y=Y.astype(float)), ValueError, "integer class labels.*float64"
    ),
    "labels out of range": Case(
        lambda _: arrays(num_classes=3), ValueError, "Label 3 is out of range for 3 classes"
    ),
    "negative labels": Case(lambda _: arrays(y=Y - 1), ValueError, "negative labels"),
    "NaN in the inputs": Case(
        lambda _: arrays(x=np.where(X > 0.99, np.nan, X)), ValueError, "NaN or Inf"
    ),
    "an empty dataset": Case(lambda _: arrays(x=X[:0], y=Y[:0]), ValueError, "empty"),
    "a batch larger than the data": Case(
        lambda _: arrays(batch_size=64),
        ValueError,
        "batch_size 64 is larger than the 40 training examples",
    ),
    "a batch without an input": Case(
        lambda _: step_on({"pixels": X, "label": Y}), KeyError, "none of the input keys"
    ),
    "a tfds dataset that is not prepared": Case(
        lambda d: load_dataset(
            "mnist",
            batch_size=8,
            eval_batch_size=8,
            seed=0,
            data_dir=str(d / "tfds"),
            download=False,
        ),
        DatasetUnavailableError,
        "not available in data_dir.*'digits'",
    ),
    "a workdir that is not writable": Case(
        lambda _: train_on("/dev/null/run"), ValueError, "workdir '/dev/null/run' is not writable"
    ),
    "a workdir URL": Case(
        lambda _: train_on("gs://bucket/runs/x"), ValueError, "URLs such as gs:// are not supported"
    ),
}

# Bad runs on a workdir that holds good checkpoints: each must leave them byte for byte.
RUN_CASES = {
    "global batch not divisible by the devices": Case(
        lambda w: train_on(w, batch_size=60, parallel="sharded"),
        ValueError,
        "Global batch size 60 is not divisible by the 8 devices of compile mode 'sharded'",
    ),
    "eval batch not divisible by the devices": Case(
        lambda w: train_on(w, eval_batch_size=100, parallel="pmap"),
        ValueError,
        "Global batch size 100 is not divisible by the 8 devices of compile mode 'pmap'",
    ),
    "an unknown config key": Case(
        lambda w: train_and_evaluate({**small_config().to_dict(), "lr": 0.1}, w),
        ValueError,
        r"Unknown config key\(s\) \['lr'\]",
    ),
    "an unknown model": Case(
        lambda w: train_on(w, model={"name": "vgg"}), ValueError, "Unknown model 'vgg'.*'cnn'"
    ),
    "an unknown model field": Case(
        lambda w: train_on(w, model={"name": "mlp", "width": 3}), ValueError, "'width'.*hidden"
    ),
    "an unknown activation": Case(
        lambda w: train_on(w, model={"name": "mlp", "activation": "swishy"}),
        ValueError,
        "Unknown activation 'swishy'.*'gelu'",
    ),
    "an unknown optimizer": Case(
        lambda w: train_on(w, optimizer="lamb"), ValueError, "Unknown optimizer 'lamb'.*'sgd'"
    ),
    "an unknown schedule": Case(
        lambda w: train_on(w, schedule="linear"), ValueError, "Unknown schedule 'linear'"
    ),
    "an unknown dataset": Case(
        lambda w: train_on(w, dataset="mnist2"), ValueError, "Unknown dataset 'mnist2'.*digits"
    ),
    "an unknown compile mode": Case(
        lambda w: train_on(w, parallel="xmap"), ValueError, "Unknown compile mode.*'sharded'"
    ),
    "a checkpoint of a different model": Case(
        lambda w: train_on(w, model={"name": "cnn", "widths": (4, 8)}),
        CheckpointMismatchError,
        "(?s)another model.*params/Conv_0/kernel",
    ),
    "a loss that becomes NaN": Case(
        lambda w: train_on(w, num_epochs=3, learning_rate=1e12, schedule="constant", log_every=1),
        NonFiniteLossError,
        r"became nan at step 2[3-9]",
    ),
}


def checkpoint_fingerprint(workdir: Path) -> dict[str, str]:
    """A hash of every file under workdir/checkpoints."""
    root = workdir / "checkpoints"
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A workdir after one epoch (22 steps), with checkpoints at steps 10, 20 and 22."""
    workdir = tmp_path_factory.mktemp("good")
    train_and_evaluate(small_config(num_epochs=1, checkpoint_every=10), workdir)
    return workdir


@pytest.fixture
def workdir(good_run, tmp_path) -> Path:
    return Path(shutil.copytree(good_run, tmp_path / "run"))


@pytest.mark.parametrize("case", INPUT_CASES.values(), ids=INPUT_CASES.keys())
def test_bad_input_is_named(tmp_path, case):
    with pytest.raises(case.error, match=case.message):
        case.run(tmp_path)


@pytest.mark.parametrize("case", RUN_CASES.values(), ids=RUN_CASES.keys())
def test_a_bad_run_is_named_and_keeps_the_checkpoints(workdir, case):
    before = checkpoint_fingerprint(workdir)
    assert len(before) > 20  # three checkpoints of several files each
    with pytest.raises(case.error, match=case.message):
        case.run(workdir)
    assert checkpoint_fingerprint(workdir) == before


def test_corrupt_latest_checkpoint_falls_back_and_is_kept_aside(workdir, caplog, capsys):
    data_files = [p for p in (workdir / "checkpoints" / "22" / "state").rglob("*") if p.is_file()]
    for path in data_files:
        path.write_bytes(b"garbage")
    corrupted = {path.relative_to(workdir / "checkpoints" / "22") for path in data_files}
    with caplog.at_level(logging.WARNING):
        train_on(workdir)
    assert "step 22" in caplog.text and "falling back to an earlier checkpoint" in caplog.text
    assert "at step 20." in capsys.readouterr().out  # resumed from the previous good one
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        assert checkpointer.latest_step() == 2 * 22
    # Step 22 was saved again; the unreadable one is renamed, never deleted.
    kept = workdir / "checkpoints" / "22.unreadable"
    assert all((kept / path).read_bytes() == b"garbage" for path in corrupted)
