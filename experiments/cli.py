"""The only flag parsing: `python -m experiments.<name> --workdir DIR --config.key=value`.

Also the only place with process-wide settings: the CPU allocator (before JAX starts), JAX's
persistent cache of compiled programs (`JDL_COMPILATION_CACHE`, default ~/.cache/jdl/jax;
empty turns it off), and the level and a filter of absl's logger (orbax logs through it).
A mistake in the command line, the config, the data or the workdir ends in one message and
exit status 2; `--traceback` (or JDL_TRACEBACK=1) shows where it was raised.
"""

import ast
import difflib
import logging as std_logging
import os
import sys
from collections.abc import Callable

import ml_collections

USAGE_ERROR = 2
TRACEBACK_ENV = "JDL_TRACEBACK"
COMPILATION_CACHE_ENV = "JDL_COMPILATION_CACHE"
DEFAULT_COMPILATION_CACHE = "~/.cache/jdl/jax"
COMPILATION_CACHE_BYTES = 2 * 1024**3  # the least recently used programs go beyond this
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")


class UsageError(ValueError):
    """A command line that names no workdir, an unknown flag or config key, or a bad value."""


class _QuietUnrankedSaves(std_logging.Filter):
    """Drops orbax's warning for saves without metrics: periodic saves between evals are fine."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


Job = Callable[[ml_collections.ConfigDict, str], object]  # (config, workdir) -> anything


def run(get_config: Callable[[], ml_collections.ConfigDict], job: Job | None = None) -> None:
    """Parses `--workdir` and `--config.*` overrides of `get_config()`, then runs `job`
    (default: `train_and_evaluate` on the validated config)."""
    from jdl.parallel.allocator import keep_freed_memory

    keep_freed_memory()  # before JAX starts its threads (see jdl.parallel.allocator)
    argv = sys.argv[1:]
    if "--help" in argv or "-h" in argv:
        print(help_text(get_config))
        return
    show_traceback = "--traceback" in argv or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    try:
        workdir, config = parse_command_line(argv, get_config())
        train(config, workdir, job)
    except Exception as error:
        if show_traceback or not is_user_mistake(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        print(
            f"(python -m {_experiment_name()} --help lists the config keys; "
            "--traceback shows where the error was raised)",
            file=sys.stderr,
        )
        sys.exit(USAGE_ERROR)


def is_user_mistake(error: Exception) -> bool:
    """Errors that name a wrong flag, config value, dataset, checkpoint or workdir, or a
    library the config needs that is not installed."""
    from jdl.checkpointing import CheckpointMismatchError
    from jdl.data import DatasetUnavailableError
    from jdl.onednn import OneDNNUnavailable

    mistakes = (ValueError, TypeError, CheckpointMismatchError, DatasetUnavailableError)
    return isinstance(error, (*mistakes, OneDNNUnavailable))


def train(config: ml_collections.ConfigDict, workdir: str, job: Job | None = None) -> None:
    """`job` (default: train_and_evaluate) with quiet library logs; a preemption exits with
    its own status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # tfds's TensorFlow, if it loads
    from absl import logging

    from jdl import train_and_evaluate
    from jdl.config import validate_config
    from jdl.preemption import PREEMPTED_EXIT_CODE, PreemptedError

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    logging.get_absl_logger().addFilter(_QuietUnrankedSaves())
    use_compilation_cache()
    try:
        if job is None:
            train_and_evaluate(validate_config(config), workdir)
        else:
            job(config, workdir)
    except PreemptedError as preempted:
        print(preempted, file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)


def use_compilation_cache() -> None:
    """JAX's persistent cache of compiled programs, so that a command run again skips most
    of its compiling (8-10 s for the documents' CNN on 2 cores, ~40 s for the DCGAN).
    `JDL_COMPILATION_CACHE` names the folder, empty turns it off; a config's own
    `compilation_cache_dir` takes over for its run."""
    directory = os.environ.get(COMPILATION_CACHE_ENV, DEFAULT_COMPILATION_CACHE)
    if not directory:
        return
    import jax

    from jdl.loop import use_compilation_cache as use_cache

    use_cache(os.path.expanduser(directory))
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)


def help_text(get_config: Callable) -> str:
    from experiments.config_help import help_text as describe

    usage = f"usage: python -m {_experiment_name()} --workdir DIR [--config.KEY=VALUE ...]"
    return describe(get_config, usage + " [--traceback]", sys.modules["__main__"].__doc__ or "")


def _experiment_name() -> str:
    spec = sys.modules["__main__"].__spec__
    return spec.name if spec else "experiments.<name>"


def parse_command_line(argv: list[str], config: ml_collections.ConfigDict):
    """(workdir, config with the overrides) from `--workdir DIR` and `--config.KEY=VALUE`
    (or `--flag value`) arguments; a UsageError names the first one that is wrong."""
    workdir = None
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--traceback":
            continue
        name, has_value, value = arg.partition("=")
        if not has_value and name.startswith("--") and args and not args[0].startswith("--"):
            value, has_value = args.pop(0), True
        if name == "--workdir" and has_value:
            workdir = value
        elif name.startswith("--config.") and has_value:
            override(config, name.removeprefix("--config."), value)
        else:
            raise UsageError(
                f"Unexpected argument {arg!r}: give --workdir DIR and --config.KEY=VALUE"
            )
    if not workdir:
        raise UsageError("--workdir DIR is required: where checkpoints, metrics and plots go")
    return workdir, config


def override(config: ml_collections.ConfigDict, dotted_key: str, text: str) -> None:
    """Sets `config[dotted_key]` from command-line `text`, read as the key's type.

    Unknown keys raise with the nearest known ones; only `data` (the loader's own
    options, free-form) takes keys the experiment's config does not list.
    """
    *parents, key = dotted_key.split(".")
    node = config
    for depth, parent in enumerate(parents):
        node = _child(node, parent, ".".join(parents[: depth + 1]))
    free_form = parents[:1] == ["data"]
    if key not in node and not free_form:
        _unknown_key(node, key, dotted_key)
    if key not in node:
        node[key] = _literal(text)
        return
    try:
        node[key] = parse_value(text, node.get_type(key))
    except (TypeError, ValueError) as error:
        kind = node.get_type(key).__name__
        raise UsageError(
            f"--config.{dotted_key} takes type {kind}, not {text!r} ({error})"
        ) from None


def _child(node, key: str, dotted: str):
    if key not in node:
        _unknown_key(node, key, dotted)
    child = node[key]
    if not isinstance(child, ml_collections.ConfigDict):
        raise UsageError(f"Config key {dotted!r} is a {type(child).__name__}, not a sub-config")
    return child


def _unknown_key(node, key: str, dotted: str) -> None:
    prefix = dotted[: -len(key)]
    close = difflib.get_close_matches(key, list(node), n=3, cutoff=0.6)
    if close:
        hint = f"did you mean {' or '.join(repr(prefix + c) for c in close)}?"
    else:
        hint = f"valid keys here: {sorted(node)}"
    raise UsageError(f"Unknown config key {dotted!r}; {hint}")


def parse_value(text: str, kind: type):
    """`text` as a value of type `kind`: words for bools, Python literals for tuples,
    "None" for an unset optional value."""
    if text in ("None", "none"):
        return None
    if kind is bool:
        if text.lower() not in (*TRUE_WORDS, *FALSE_WORDS):
            raise ValueError(f"use one of {[*TRUE_WORDS, *FALSE_WORDS]}")
        return text.lower() in TRUE_WORDS
    if kind in (int, float):
        return kind(text)
    if kind is str:
        return text
    value = _literal(text)
    if kind in (tuple, list) and isinstance(value, list | tuple):
        return tuple(value)
    if kind is ml_collections.ConfigDict and isinstance(value, dict):
        return ml_collections.ConfigDict(value)
    if not isinstance(value, kind):
        raise TypeError(f"{value!r} is a {type(value).__name__}")
    return value


def _literal(text: str):
    """A Python literal (number, tuple, dict, ...) or, failing that, the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
