"""`import jdl` changes nothing outside jdl: no allocator setting, no backend, no log filter."""

import os
import subprocess
import sys
import textwrap

# Run in a fresh interpreter: this test process has long since imported everything.
PROGRAM = textwrap.dedent(
    """
    import importlib, logging, pkgutil, sys
    import experiments
    # What `python -m experiments.<name>` imports before its run() applies the allocator.
    for module in pkgutil.iter_modules(experiments.__path__):
        importlib.import_module(f"experiments.{module.name}")
        assert "jax" not in sys.modules, f"experiments.{module.name} imported JAX"
    import matplotlib
    backend = dict.__getitem__(matplotlib.rcParams, "backend")
    filters = list(logging.getLogger("absl").filters)

    import jdl, jdl.checkpointing, jdl.engine, jdl.loop, jdl.plots, jdl.workdir
    from jdl.parallel import allocator
    jdl.plots.plot_curves([{"step": 1, "train/loss": 1.0}], sys.argv[1])

    assert "jax" in sys.modules  # the imports above did load everything
    assert allocator._applied is None, "mallopt was called"
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend, "backend changed"
    assert logging.getLogger("absl").filters == filters, "absl logger filters changed"
    assert jdl.keep_freed_memory() == (sys.platform.startswith("linux"))  # explicit: applies
    print("clean")
    """
)


def test_importing_jdl_and_drawing_a_figure_leave_the_process_as_it_was(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "JDL_KEEP_FREED_MEMORY")}
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path / "curves.png")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0 and "clean" in result.stdout, result.stderr
    assert (tmp_path / "curves.png").stat().st_size > 1000
