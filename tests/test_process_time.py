"""The process-time benchmark's bookkeeping: phases exclusive, compilation counted once."""

import pytest

from benchmarks.process_time import Coverage, PhaseClock


def test_overlapping_spans_count_once():
    coverage = Coverage()
    assert coverage.add(2.0, 3.0) == pytest.approx(1.0)  # an inner trace, reported first
    assert coverage.add(1.0, 5.0) == pytest.approx(3.0)  # its caller's trace around it
    assert coverage.add(4.0, 6.0) == pytest.approx(1.0)  # overlaps the end
    assert coverage.add(7.0, 8.0) == pytest.approx(1.0)  # apart
    assert coverage.spans == [(1.0, 6.0), (7.0, 8.0)]


def test_nested_phases_and_compilation_are_exclusive():
    ticks = iter([0.0, 1.0, 3.0, 7.0])  # enter training, enter evaluation, leave, leave
    clock = PhaseClock(now=lambda: next(ticks))
    with clock.phase("training steps"), clock.phase("evaluation"):
        clock.compiled(0.5)  # JAX reports a compilation that ran inside evaluation
    assert clock.seconds["training steps"] == pytest.approx(1.0 + 4.0)
    assert clock.seconds["evaluation"] == pytest.approx(2.0 - 0.5)
    assert clock.seconds["compilation"] == pytest.approx(0.5)
    assert sum(clock.seconds.values()) == pytest.approx(7.0)
    assert clock.stack == []
