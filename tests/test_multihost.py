"""Several processes on jax.distributed (CPU, gloo) train exactly like one process."""

import socket
import subprocess

import jax
import numpy as np
from loop_helpers import start_experiment

from experiments import digits_cnn
from jdl.checkpointing import Checkpointer
from jdl.config import validate_config
from jdl.loop import create_state, load_config_dataset

EPOCHS = 2
COMMON_FLAGS = [
    "--config.parallel=sharded",
    f"--config.num_epochs={EPOCHS}",
    "--config.progress_bar=False",
    "--config.model.widths=(8, 16)",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, devices_per_process: int, extra_flags=()) -> subprocess.Popen:
    return start_experiment(
        "digits_cnn", workdir, *COMMON_FLAGS, *extra_flags, devices=devices_per_process
    )


def finish(process: subprocess.Popen) -> str:
    output, errors = process.communicate(timeout=300)
    assert process.returncode == 0, errors
    return output


def final_params(workdir):
    config = digits_cnn.get_config()
    config.model.widths = (8, 16)
    config.num_epochs = EPOCHS
    config = validate_config(config)
    template = create_state(config, load_config_dataset(config))
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        state, _ = checkpointer.restore(template)
    return jax.device_get(state.params), int(state.step)


def test_two_processes_of_two_devices_equal_one_process_of_four(tmp_path):
    port = free_port()
    workers = [
        launch(
            tmp_path / "two",
            devices_per_process=2,
            extra_flags=[
                "--config.distributed=True",
                f"--config.coordinator_address=127.0.0.1:{port}",
                "--config.num_processes=2",
                f"--config.process_id={index}",
            ],
        )
        for index in range(2)
    ]
    outputs = [finish(worker) for worker in workers]
    finish(launch(tmp_path / "one", devices_per_process=4))

    assert "parallel=sharded on 4 device(s)" in outputs[0]
    assert "Done:" in outputs[0] and "Done:" not in outputs[1]  # process 0 reports
    two, two_step = final_params(tmp_path / "two")
    one, one_step = final_params(tmp_path / "one")
    assert two_step == one_step == EPOCHS * (1437 // 32)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), two, one)
    metrics = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == len((tmp_path / "one" / "metrics.jsonl").read_text().splitlines())
