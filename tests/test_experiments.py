"""The experiment scripts: configs, the tfds path under mock data, and the command line."""

import subprocess

import jax
import pytest
import tensorflow_datasets as tfds
from loop_helpers import start_experiment

from experiments import binary_mlp, digits_cnn, mnist_cnn, mnist_mlp
from jdl import train_and_evaluate
from jdl.config import validate_config
from jdl.loop import use_cpu_devices
from jdl.metrics import read_records
from jdl.state import count_params

EXPERIMENTS = [mnist_cnn, mnist_mlp, binary_mlp, digits_cnn]


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda e: e.__name__)
def test_every_config_uses_only_the_shared_vocabulary(experiment):
    validate_config(experiment.get_config())


@pytest.mark.parametrize(
    ("experiment", "dataset", "num_params"),
    [
        # Conv 3*3*1*32+32, conv 3*3*32*64+64, dense 5*5*64*10+10.
        (mnist_cnn, "mnist", 320 + 18_496 + 16_010),
        # Same convs on 3 channels: 3*3*3*32+32; 32x32 -> 30 -> 15 -> 13 -> 6: dense 6*6*64*10+10.
        (mnist_cnn, "cifar10", 896 + 18_496 + 23_050),
        (mnist_mlp, "fashion_mnist", 784 * 256 + 256 + 256 * 10 + 10),
    ],
)
def test_experiment_runs_end_to_end_on_mock_tfds(tmp_path, experiment, dataset, num_params):
    config = experiment.get_config()
    config.update(
        dataset=dataset,
        num_epochs=1,
        batch_size=32,
        eval_batch_size=48,
        warmup_steps=2,
        log_every=2,
        progress_bar=False,
        data_dir=str(tmp_path / "tfds"),
    )
    with tfds.testing.mock_data(num_examples=160):
        result = train_and_evaluate(config, tmp_path / "run")
    assert count_params(result.state.params) == num_params
    assert result.metrics["step"] == 160 // 32
    # Mock labels are random, so accuracy says only that eval counted each of the 160 test
    # examples once: correct / 160, though 48 does not divide 160.
    correct = result.metrics["eval/accuracy"] * 160
    assert correct == pytest.approx(round(correct), abs=1e-3)
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["eval/loss"] == pytest.approx(result.metrics["eval/loss"])


def run_cli(workdir, *flags) -> subprocess.CompletedProcess:
    """Runs the binary_mlp experiment's command line to the end."""
    process = start_experiment("binary_mlp", workdir, *flags)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_command_line_trains_with_overrides_and_resumes(tmp_path):
    workdir = str(tmp_path / "binary")
    first = run_cli(workdir, "--config.num_epochs=30", "--config.progress_bar=False")
    assert first.returncode == 0, first.stderr
    assert "Done: eval accuracy 0.9" in first.stdout
    again = run_cli(workdir, "--config.num_epochs=30", "--config.progress_bar=False")
    assert again.returncode == 0, again.stderr
    assert "Resumed from" in again.stdout and "step 420" in again.stdout


def test_command_line_rejects_an_unknown_config_key(tmp_path):
    result = run_cli(tmp_path, "--config.learning_rat=0.1")
    assert result.returncode != 0
    assert "learning_rat" in result.stderr


def test_command_line_splits_the_cpu_into_the_devices_a_config_asks_for(tmp_path):
    # The subprocess starts with one CPU device; the config's count applies before JAX starts.
    process = start_experiment(
        "binary_mlp",
        tmp_path,
        "--config.cpu_devices=2",
        "--config.parallel=sharded",
        "--config.num_epochs=2",
        "--config.progress_bar=False",
    )
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "parallel=sharded on 2 device(s)" in stdout


def test_cpu_devices_after_jax_started_keep_the_count_and_warn(caplog):
    started = len(jax.devices("cpu"))
    use_cpu_devices(started + 1)
    assert len(jax.devices("cpu")) == started
    assert f"cpu_devices={started + 1} not applied" in caplog.text
