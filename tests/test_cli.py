"""The experiment command line: a mistake is one clear message and exit status 2."""

import logging
import os
import subprocess
import sys

import pytest

from experiments import binary_mlp, cli, digits_dcgan
from experiments.config_help import flat_items

MAX_LINES = 5


def run_in_process(monkeypatch, capsys, *args):
    """(exit status, stderr lines) of binary_mlp's command line, run in this process."""
    monkeypatch.setattr(sys, "argv", ["binary_mlp", *args])
    with pytest.raises(SystemExit) as exited:
        cli.run(binary_mlp.get_config)
    return exited.value.code, capsys.readouterr().err.strip().splitlines()


def run_experiment(name, *args, **env):
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{name}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
    )


def assert_one_clear_message(status, lines, *expected):
    assert status == cli.USAGE_ERROR
    assert 1 <= len(lines) <= MAX_LINES, lines
    assert not any("Traceback" in line for line in lines)
    for text in expected:
        assert text in lines[0]


def test_a_nested_typo_exits_2_in_one_message_with_a_did_you_mean(tmp_path):
    result = run_experiment("digits_cnn", f"--workdir={tmp_path}", "--config.model.widht=3")
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert_one_clear_message(result.returncode, lines, "'model.widht'", "'model.widths'")


def test_help_lists_every_config_key_with_its_default_and_comment():
    result = run_experiment("digits_dcgan", "--help")
    assert result.returncode == 0, result.stderr
    for key, value in flat_items(digits_dcgan.get_config()):
        shown = dict(value) if not isinstance(value, str | int | float | tuple | None) else value
        assert f"--config.{key}={shown!r}" in result.stdout
    help_lines = {
        line.split()[0]: line for line in result.stdout.splitlines() if "--config." in line
    }
    # A comment of jdl/config.py, one of experiments/dcgan.py, one of digits_dcgan.py.
    assert "global-norm clipping; 0 disables" in help_lines["--config.grad_clip_norm=0.0"]
    assert "discriminator updates per generator update" in help_lines["--config.task.d_steps=1"]
    assert "D aims at 0.9 on real images" in help_lines["--config.label_smoothing=0.1"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config.num_epoch=1"], ["'num_epoch'", "did you mean 'num_epochs'"]),
        (["--config.batch_size=abc"], ["batch_size", "int", "'abc'"]),
        (["--config.optimizer=adamx"], ["'adamx'", "valid optimizers"]),
        (["--config.model.name=nope"], ["'nope'", "valid models"]),
        ([], ["--workdir DIR is required"]),
    ],
    ids=["top-level typo", "wrong type", "unknown optimizer", "unknown model", "no workdir"],
)
def test_a_config_mistake_exits_2_in_one_message(monkeypatch, capsys, tmp_path, args, expected):
    workdir = [f"--workdir={tmp_path}"] if args else []
    status, lines = run_in_process(monkeypatch, capsys, *workdir, *args)
    assert_one_clear_message(status, lines, *expected)


@pytest.mark.parametrize(
    ("conv_impl", "env", "expected"),
    [
        ("onedn", {}, ["Unknown conv_impl 'onedn'"]),
        ("onednn", {"CXX": "no-such-compiler"}, ["No C++ compiler", "libdnnl-dev"]),
    ],
    ids=["typo", "oneDNN not buildable"],
)
def test_a_conv_impl_that_cannot_run_exits_2_before_training(tmp_path, conv_impl, env, expected):
    workdir = tmp_path / "run"
    result = run_experiment(
        "digits_dcgan",
        f"--workdir={workdir}",
        f"--config.model.conv_impl={conv_impl}",
        XDG_CACHE_HOME=str(tmp_path / "cache"),  # no library built by other tests
        **env,
    )
    lines = result.stderr.strip().splitlines()
    assert_one_clear_message(result.returncode, lines[-2:], *expected)
    assert not (workdir / "metrics.jsonl").exists()


def test_a_workdir_that_cannot_be_written_exits_2(monkeypatch, capsys, tmp_path):
    (tmp_path / "file").write_text("")
    status, lines = run_in_process(monkeypatch, capsys, f"--workdir={tmp_path / 'file' / 'run'}")
    assert_one_clear_message(status, lines, "is not writable")


def test_a_checkpoint_of_another_model_exits_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(
        sys, "argv", ["binary_mlp", f"--workdir={tmp_path}", "--config.num_steps=2"]
    )
    cli.run(binary_mlp.get_config)  # trains and saves
    capsys.readouterr()
    status, lines = run_in_process(
        monkeypatch, capsys, f"--workdir={tmp_path}", "--config.model.hidden_sizes=(3,)"
    )
    assert_one_clear_message(status, lines, "holds checkpoints of another model")


def test_the_traceback_flag_or_variable_lets_the_error_through(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["binary_mlp", f"--workdir={tmp_path}", "--config.nope=1"])
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(cli.UsageError, match="'nope'"):
        cli.run(binary_mlp.get_config)
    monkeypatch.delenv(cli.TRACEBACK_ENV)
    monkeypatch.setattr(sys, "argv", ["binary_mlp", "--traceback"])
    with pytest.raises(cli.UsageError, match="--workdir DIR is required"):
        cli.run(binary_mlp.get_config)


def test_a_failed_download_is_quiet_and_leaves_only_what_was_there(tmp_path, capsys, caplog):
    from jdl.data.tfds_data import _quiet, _removed_if_failed

    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "earlier.gz").write_text("kept")
    (tmp_path / "cifar10").mkdir()

    def failing_download():  # what tfds does offline: progress, retries, partial files
        (tmp_path / "mnist" / "3.0.1.incomplete").mkdir(parents=True)
        (tmp_path / "downloads" / "mnist.gz.tmp").write_text("partial")
        print("Dl Completed...: 0 url")
        print("Extraction completed...", file=sys.stderr)
        logging.getLogger("urllib3.connectionpool").warning("Retrying after NameResolutionError")
        raise ConnectionError("offline")

    with pytest.raises(ConnectionError), _removed_if_failed(tmp_path), _quiet():
        failing_download()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cifar10", "downloads", "earlier.gz"]
    assert capsys.readouterr() == ("", "")
    assert not [r for r in caplog.records if r.name.startswith("urllib3")]


SHORT = ("--config.num_steps=10", "--config.log_every=5")


def test_commands_keep_compiled_programs_for_the_next_run(tmp_path):
    home = tmp_path / "home"
    fonts = {"MPLCONFIGDIR": str(tmp_path / "matplotlib")}  # built once, not per home
    env = {"HOME": str(home), "JDL_COMPILATION_CACHE": "~/.cache/jdl/jax", **fonts}
    first = run_experiment("binary_mlp", f"--workdir={tmp_path / 'a'}", *SHORT, **env)
    assert first.returncode == 0, first.stderr[-2000:]
    cache = home / ".cache" / "jdl" / "jax"
    programs = sorted(path.name for path in cache.iterdir())
    assert programs  # the run's compiled programs
    second = run_experiment("binary_mlp", f"--workdir={tmp_path / 'b'}", *SHORT, **env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert sorted(path.name for path in cache.iterdir()) == programs  # all read, none new
    # The tests' JDL_COMPILATION_CACHE="" turns the cache off.
    off_home = tmp_path / "h2"
    off_env = {"HOME": str(off_home), **fonts}
    off = run_experiment("binary_mlp", f"--workdir={tmp_path / 'c'}", *SHORT, **off_env)
    assert off.returncode == 0 and not (off_home / ".cache" / "jdl").exists()
