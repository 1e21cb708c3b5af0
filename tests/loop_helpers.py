"""What the end-to-end tests share: a small, fast config and a way to run experiments."""

import os
import subprocess
import sys

from experiments import digits_cnn


def small_config(**overrides):
    """The digits quickstart shrunk to a few seconds: a narrow CNN for a few epochs."""
    c = digits_cnn.get_config()
    c.model.widths = (16, 32)
    c.learning_rate = 1e-2
    c.label_smoothing = 0.0
    c.num_epochs = 3
    c.batch_size = 64
    c.eval_batch_size = 96  # does not divide the 360 test images
    c.warmup_steps = 5
    c.log_every = 5
    c.progress_bar = False
    c.data_on_device = False
    for key, value in overrides.items():  # assignment, so a `model` dict replaces the model
        c[key] = value
    return c


def start_experiment(name: str, workdir, *flags: str, devices: int = 1) -> subprocess.Popen:
    """`python -m experiments.<name> --workdir=... *flags` in a subprocess on `devices` CPUs."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    command = [sys.executable, "-m", f"experiments.{name}", f"--workdir={workdir}", *flags]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
