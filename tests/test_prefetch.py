"""prefetch: a background producer, in order, bounded, with errors passed on."""

import threading

import pytest

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
