"""One FID classifier per run: two processes score exactly as one does."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from fid_helpers import quality_numbers
from test_multihost import free_port


def test_two_processes_train_the_classifier_and_score_fid_as_one_process():
    port = free_port()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    script = str(Path(__file__).with_name("fid_helpers.py"))
    workers = [
        subprocess.Popen(
            [sys.executable, script, str(index), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    one_process = quality_numbers()  # while the two processes run
    outputs = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr
        outputs.append([float(x) for x in stdout.split()[-2:]])
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6)  # one classifier per run
    np.testing.assert_allclose(outputs[0], one_process, rtol=1e-4)  # the one of one process
