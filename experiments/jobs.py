"""Flags for experiments that run more than one training: `python -m experiments.<name>
--workdir DIR --config.key=value`, the same command line as `cli.run`."""

from collections.abc import Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags


def run_job(
    get_config: Callable[[], ml_collections.ConfigDict],
    job: Callable[[ml_collections.ConfigDict, str], None],
) -> None:
    """Parses `--workdir` and `--config.*` overrides of `get_config()`, then runs `job`."""
    flags.DEFINE_string("workdir", None, "Directory for the runs, results and tables.")
    flags.mark_flag_as_required("workdir")
    config_flags.DEFINE_config_dict("config", get_config(), "Experiment config.", lock_config=True)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        job(flags.FLAGS.config, flags.FLAGS.workdir)

    app.run(main)
