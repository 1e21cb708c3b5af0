"""Checkpointer: exact round trips, retention, compile-mode portability, and failure modes."""

import errno
import logging
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jdl.checkpointing import Checkpointer, CheckpointError, CheckpointSaveError, array_fields
from jdl.models import build_model
from jdl.optimizers import make_optimizer
from jdl.parallel.strategy import Strategy
from jdl.state import create_train_state
from jdl.steps import train_step

MODEL = {"name": "mlp", "hidden_sizes": (8,), "batch_norm": True}
# Clipping and masked weight decay put EmptyState and MaskedState nodes into opt_state.
OPTIMIZER = {
    "optimizer": "adamw",
    "learning_rate": 1e-3,
    "weight_decay": 1e-4,
    "grad_clip_norm": 1.0,
}
METADATA = {"epoch": 3, "step_in_epoch": 0, "config": {"model": {"name": "mlp"}, "lr": 1e-3}}


def make_state(model=MODEL, optimizer=OPTIMIZER, seed=0):
    model = build_model(model, 3)
    tx = make_optimizer(optimizer, 10)
    return create_train_state(model, tx, (4,), jax.random.key(seed))


@pytest.fixture(scope="module")
def trained():
    """A state after two steps: params, Adam moments, counts and batch stats all moved."""
    state = make_state()
    rng = jax.random.key(1)
    batch = {
        "features": jax.random.normal(rng, (8, 4)),
        "label": jax.random.randint(rng, (8,), 0, 3),
    }
    step = jax.jit(train_step)
    for _ in range(2):
        state, _ = step(state, batch, rng)
    return state


def template():
    """A fresh state of the same model whose values all differ from `trained`."""
    return make_state(seed=5)


def assert_states_equal(actual, expected):
    """Same array fields: tree structure (namedtuple types included), dtypes and bits."""
    actual, expected = array_fields(actual), array_fields(expected)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def save_steps(directory, state, steps, **kwargs):
    with Checkpointer(directory, **kwargs) as ckpt:
        for step in steps:
            assert ckpt.save(step, state.replace(step=state.step + step), metadata={"step": step})


def test_empty_directory(tmp_path):
    with Checkpointer(tmp_path / "ckpt", best_metric="eval/accuracy") as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.best_step() is None
        with pytest.raises(CheckpointError, match="No checkpoint"):
            ckpt.restore(template())
        with pytest.raises(CheckpointError, match="No step 7"):
            ckpt.restore(template(), step=7)


def test_save_restore_is_bit_identical(tmp_path, trained):
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(2, trained, metadata=METADATA)
        assert not ckpt.save(2, trained, metadata=METADATA, force=True)  # never overwrites
    # A new Checkpointer, as after a restart, reads what the first one wrote.
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 2
        restored, metadata = ckpt.restore(template())
    assert_states_equal(restored, trained)
    assert int(restored.opt_state[1].count) == 2  # Adam's count, inside a namedtuple
    assert metadata == METADATA


def test_round_trip_with_empty_subtrees(tmp_path):
    """No batch norm ({} batch_stats) and plain SGD (an EmptyState) survive a round trip."""
    state = make_state({**MODEL, "batch_norm": False}, {"optimizer": "sgd", "learning_rate": 0.1})
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state.replace(step=state.step + 1), metadata={})
        restored, _ = ckpt.restore(state)
    assert_states_equal(restored, state.replace(step=state.step + 1))


def test_async_save_round_trip(tmp_path, trained):
    with Checkpointer(tmp_path, async_save=True) as ckpt:
        ckpt.save(2, trained, metadata=METADATA)
        ckpt.wait_until_finished()
        restored, _ = ckpt.restore(template())
    assert_states_equal(restored, trained)


@pytest.mark.parametrize(
    ("metric", "mode", "values", "kept", "best"),
    [
        # The best (step 2) is older than the last two: three checkpoints stay.
        ("eval/accuracy", "max", [0.5, 0.9, 0.6, 0.7, 0.8], {2, 4, 5}, 2),
        ("eval/loss", "min", [0.5, 0.1, 0.4, 0.3, 0.2], {2, 4, 5}, 2),
        # The best is also among the last two and counts once.
        ("eval/accuracy", "max", [0.5, 0.6, 0.7, 0.8, 0.9], {4, 5}, 5),
    ],
)
def test_keeps_latest_and_best(tmp_path, trained, metric, mode, values, kept, best):
    kwargs = {"max_to_keep": 2, "best_metric": metric, "best_mode": mode, "keep_best": 1}
    with Checkpointer(tmp_path, **kwargs) as ckpt:
        for step, value in enumerate(values, start=1):
            ckpt.save(step, trained, metadata={}, metrics={metric: value, "eval/other": 0.0})
        assert {int(p.name) for p in tmp_path.iterdir()} == kept
        assert ckpt.best_step() == best
        # Saves without the metric are kept only while they are among the latest.
        for step in (6, 7, 8):
            ckpt.save(step, trained, metadata={}, metrics={"train/loss": 1.0})
    assert {int(p.name) for p in tmp_path.iterdir()} == {best, 7, 8}
    with Checkpointer(tmp_path, **kwargs) as ckpt:  # metrics are read back from disk
        assert ckpt.best_step() == best
        _, metadata = ckpt.restore(template(), step=best)
    assert metadata == {}


@pytest.mark.parametrize(
    ("save_mode", "restore_mode"),
    [("pmap", "jit"), ("sharded", "jit"), ("jit", "sharded"), ("jit", "pmap")],
)
def test_restore_across_compile_modes(tmp_path, trained, save_mode, restore_mode):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, Strategy(save_mode).put_replicated(trained), metadata={})
        target = Strategy(restore_mode).put_replicated(template())
        restored, _ = ckpt.restore(target)
    assert_states_equal(restored, trained)
    for leaf, target_leaf in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
        assert leaf.sharding == target_leaf.sharding
    assert len(restored.params["Dense_0"]["kernel"].devices()) == Strategy(restore_mode).num_devices


@pytest.mark.parametrize(
    ("model_change", "optimizer", "expected"),
    [
        ({"hidden_sizes": (16,)}, OPTIMIZER, r"params/Dense_0/kernel \(4, 8\) vs \(4, 16\)"),
        ({"batch_norm": False}, OPTIMIZER, "not in the template: params/BatchNorm_0/bias"),
        ({}, {"optimizer": "sgd", "learning_rate": 0.1}, "not in the template: opt_state/1/mu/"),
    ],
)
def test_different_model_is_a_clear_error(tmp_path, trained, model_change, optimizer, expected):
    save_steps(tmp_path, trained, [1])
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match=expected):
            ckpt.restore(make_state({**MODEL, **model_change}, optimizer))
        assert ckpt.latest_step() == 1  # a mismatch is not corruption: nothing is deleted


def truncate_files(step_dir: pathlib.Path) -> None:
    for f in (p for p in step_dir.rglob("*") if p.is_file()):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def delete_array_data(step_dir: pathlib.Path) -> None:
    for f in (p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"):
        f.unlink()


def garble_metadata(step_dir: pathlib.Path) -> None:
    (step_dir / "state" / "_METADATA").write_text("not json {")


def fingerprint(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("corrupt", [truncate_files, delete_array_data, garble_metadata])
def test_corrupt_latest_falls_back_and_stays_on_disk(tmp_path, trained, caplog, corrupt):
    save_steps(tmp_path, trained, [1, 2, 3])
    corrupt(tmp_path / "3")
    corrupted = fingerprint(tmp_path / "3")
    with Checkpointer(tmp_path) as ckpt, caplog.at_level(logging.WARNING, "jdl.checkpointing"):
        restored, metadata = ckpt.restore(template())
        assert metadata == {"step": 2}
        assert_states_equal(restored, trained.replace(step=trained.step + 2))
        assert "step 3" in caplog.text and "unreadable" in caplog.text
        assert fingerprint(tmp_path / "3") == corrupted  # read failed: nothing deleted
        # Training saves step 3 again when it gets there; the bad folder is renamed, not lost.
        assert ckpt.save(3, trained, metadata={"step": 3})
    assert fingerprint(tmp_path / "3.unreadable") == corrupted
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore(template())[1] == {"step": 3}


def test_a_transient_read_error_keeps_the_checkpoint_for_the_next_run(
    tmp_path, trained, caplog, monkeypatch
):
    save_steps(tmp_path, trained, [1, 2])
    saved = fingerprint(tmp_path / "2")
    read = ocp.StandardCheckpointHandler.restore
    failures = iter([OSError(5, "Input/output error")])

    def flaky_read(*args, **kwargs):  # a network filesystem hiccup, once
        for error in failures:
            raise error
        return read(*args, **kwargs)

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "restore", flaky_read)
    with Checkpointer(tmp_path) as ckpt, caplog.at_level(logging.WARNING, "jdl.checkpointing"):
        assert ckpt.restore(template())[1] == {"step": 1}
    assert "step 2" in caplog.text and "OSError: [Errno 5] Input/output error" in caplog.text
    assert fingerprint(tmp_path / "2") == saved
    with Checkpointer(tmp_path) as ckpt:  # the next run reads it
        restored, metadata = ckpt.restore(template())
    assert metadata == {"step": 2}
    assert_states_equal(restored, trained.replace(step=trained.step + 2))


def test_all_corrupt_is_an_error(tmp_path, trained):
    save_steps(tmp_path, trained, [1, 2])
    for step in ("1", "2"):
        garble_metadata(tmp_path / step)
    with Checkpointer(tmp_path) as ckpt, pytest.raises(CheckpointError, match="steps tried"):
        ckpt.restore(template())


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, trained, monkeypatch):
    save_steps(tmp_path, trained, [1])
    saved = fingerprint(tmp_path / "1")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # The state item is written, then the metadata writer finds the disk full.
    monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", disk_full)
    message = f"step 2 in {tmp_path} failed: no space left on device.*latest is step 1"
    with Checkpointer(tmp_path) as ckpt, pytest.raises(CheckpointSaveError, match=message):
        ckpt.save(2, trained, metadata={"step": 2})
    monkeypatch.undo()
    assert fingerprint(tmp_path / "1") == saved
    debris = sorted(p.name for p in tmp_path.iterdir())
    assert debris[0] == "1" and debris[1].startswith("2.orbax-checkpoint-tmp"), debris

    with Checkpointer(tmp_path) as ckpt:  # the restarted run ignores the debris
        assert ckpt.latest_step() == 1
        _, metadata = ckpt.restore(template())
        assert metadata == {"step": 1}
        assert ckpt.save(2, trained, metadata={"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]
