"""prefetch: a background producer, in order, bounded, with errors passed on."""

import subprocess
import sys
import threading

import pytest

from jdl.parallel import prefetch as prefetch_module
from jdl.parallel.prefetch import prefetch


def test_items_arrive_in_order():
    assert list(prefetch(iter(range(100)), size=3)) == list(range(100))


def test_producer_runs_ahead_but_only_size_items():
    produced = []

    def items():
        for i in range(10):
            produced.append(i)
            yield i

    stream = prefetch(items(), size=2)
    assert next(stream) == 0
    threading.Event().wait(0.2)  # time for the producer to run ahead as far as it may
    assert len(produced) <= 4  # one taken, two buffered, one waiting to be put
    assert list(stream) == list(range(1, 10))


def test_producer_errors_reach_the_consumer():
    def items():
        yield 1
        raise RuntimeError("disk on fire")

    stream = prefetch(items())
    assert next(stream) == 1
    with pytest.raises(RuntimeError, match="disk on fire"):
        next(stream)


def test_stopping_early_ends_the_producer():
    before = threading.active_count()
    stream = prefetch(iter(range(1000)), size=2)
    next(stream)
    stream.close()
    assert threading.active_count() == before


# A stream left open (as a traceback keeps a preempted run's) and collected at exit, with its
# producer blocked on the full buffer. prefetch.py is loaded alone so the child starts at once.
OPEN_AT_EXIT = """
import gc, importlib.util, sys
spec = importlib.util.spec_from_file_location("prefetch", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
gc.disable()  # the cycle below is collected only at interpreter exit
stream = module.prefetch(iter(range(1000)), size=2)
next(stream)
cycle = [stream, None]
cycle[1] = cycle
del stream, cycle
"""


def test_a_stream_still_open_at_interpreter_exit_does_not_hang_it():
    """Python 3.13 parks daemon threads at exit; a preempted run hung waiting for one."""
    command = [sys.executable, "-c", OPEN_AT_EXIT, prefetch_module.__file__]
    assert subprocess.run(command, timeout=30, capture_output=True).returncode == 0
