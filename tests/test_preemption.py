"""Runs survive preemption: signals and time budgets save and stop; SIGKILL loses nothing."""

import os
import random
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from loop_helpers import start_experiment

from experiments import digits_cnn
from jdl import train_and_evaluate
from jdl.checkpointing import Checkpointer
from jdl.metrics import read_records
from jdl.preemption import PREEMPTED_EXIT_CODE, PreemptedError

FLAGS = ["--config.progress_bar=False", "--config.model.widths=(8, 16)", "--config.log_every=1"]


def start(workdir, *extra_flags) -> subprocess.Popen:
    return start_experiment("digits_cnn", workdir, *FLAGS, *extra_flags)


def wait_for_step(workdir, step: int, process: subprocess.Popen) -> None:
    """Blocks until the run has logged `step` (metrics are written every step here)."""
    path = workdir / "metrics.jsonl"
    while not (path.exists() and any(r["step"] >= step for r in read_records(path))):
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)


def latest_params(workdir):
    """(step, params) of the newest checkpoint, read without a template."""
    import orbax.checkpoint as ocp

    with Checkpointer(workdir / "checkpoints") as checkpointer:
        step = checkpointer.latest_step()
    restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return step, restored["params"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_at_the_current_step_and_exits_preempted(tmp_path, signum):
    run = start(tmp_path, "--config.num_epochs=400")
    wait_for_step(tmp_path, 3, run)
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=120)

    assert run.returncode == PREEMPTED_EXIT_CODE, stderr
    assert f"received {signal.Signals(signum).name}" in stderr and "Preempted at step" in stderr
    stopped_at = int(stderr.split("Preempted at step ")[1].split(" ")[0])
    logged = max(r["step"] for r in read_records(tmp_path / "metrics.jsonl"))
    step, _ = latest_params(tmp_path)
    assert step == stopped_at == logged  # saved at the step it had reached, nothing lost

    resumed = start(tmp_path, "--config.num_epochs=4")  # same run, continued and shortened
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert f"Resumed from {tmp_path / 'checkpoints'} at step {stopped_at}" in stdout


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path):
    uninterrupted = start(tmp_path / "full", "--config.num_epochs=3")
    assert uninterrupted.wait(timeout=120) == 0

    checkpoint_every = 7  # the kill comes after the first checkpoint, so there is one to resume
    kill_at = random.Random(os.getpid()).randint(checkpoint_every + 1, 3 * 44 - 5)
    run = start(
        tmp_path / "cut", "--config.num_epochs=3", f"--config.checkpoint_every={checkpoint_every}"
    )
    wait_for_step(tmp_path / "cut", kill_at, run)
    run.kill()
    run.wait()
    resumed = start(
        tmp_path / "cut", "--config.num_epochs=3", f"--config.checkpoint_every={checkpoint_every}"
    )
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert "Resumed from" in stdout, f"killed at step {kill_at} before any checkpoint"

    full_step, full = latest_params(tmp_path / "full")
    cut_step, cut = latest_params(tmp_path / "cut")
    assert full_step == cut_step == 3 * 44
    jax.tree_util.tree_map(np.testing.assert_array_equal, cut, full)


def test_time_budget_stops_and_saves_before_the_deadline(tmp_path):
    config = digits_cnn.get_config()
    config.update(num_epochs=1000, progress_bar=False, time_budget_s=4.0)
    started = time.monotonic()
    with pytest.raises(PreemptedError, match=r"time budget of 4 s") as preempted:
        train_and_evaluate(config, tmp_path)
    assert time.monotonic() - started < 4.0 + 6.0  # near the deadline, far from the end
    stopped_at = int(str(preempted.value).split("Preempted at step ")[1].split(" ")[0])
    assert latest_params(tmp_path)[0] == stopped_at > 0
