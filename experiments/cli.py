"""The only flag parsing: `python -m experiments.<name> --workdir DIR --config.key=value`.

Also the only place with process-wide settings: the CPU allocator (before JAX starts) and
the log level and filter of absl's logger (orbax logs through it).
"""

import logging as std_logging
import sys
from collections.abc import Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags


class _QuietUnrankedSaves(std_logging.Filter):
    """Drops orbax's warning for saves without metrics: periodic saves between evals are fine."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


def run(get_config: Callable[[], ml_collections.ConfigDict]) -> None:
    """Parses `--workdir` and `--config.*` overrides of `get_config()`, then trains."""
    # First, before anything imports JAX (experiments import only jdl.config, which does not).
    from jdl.parallel.allocator import keep_freed_memory

    keep_freed_memory()
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
    flags.mark_flag_as_required("workdir")
    config_flags.DEFINE_config_dict("config", get_config(), "Experiment config.", lock_config=True)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        # Imported after flag parsing, so that --help answers at once.
        from jdl import train_and_evaluate
        from jdl.preemption import PREEMPTED_EXIT_CODE, PreemptedError

        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        logging.get_absl_logger().addFilter(_QuietUnrankedSaves())
        try:
            train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
        except PreemptedError as preempted:
            print(preempted, file=sys.stderr)
            sys.exit(PREEMPTED_EXIT_CODE)

    app.run(main)
