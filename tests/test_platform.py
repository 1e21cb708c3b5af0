"""Every branch that depends on the platform, forced on this CPU machine.

Nothing here has run on a TPU or GPU: these tests pin which path each platform takes.
"""

import ctypes
import sys

import jax
import numpy as np
import pytest
from jax.random import key
from loop_helpers import small_config

from jdl import train_and_evaluate
from jdl.models import build_model
from jdl.parallel import allocator


@pytest.mark.parametrize(
    "backend, convolution_primitive", [("cpu", False), ("gpu", True), ("tpu", True)]
)
def test_auto_convolutions_are_patch_matmuls_on_cpu_only(
    monkeypatch, backend, convolution_primitive
):
    x = jax.random.normal(key(1), (2, 8, 8, 1))
    im2col, xla = (build_model({"name": "cnn", "conv_impl": c}, 10) for c in ("im2col", "xla"))
    variables = xla.init(key(0), x)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    auto = build_model({"name": "cnn", "conv_impl": "auto"}, 10)
    jaxpr = str(jax.make_jaxpr(auto.apply)(variables, x))
    assert ("conv_general_dilated" in jaxpr) == convolution_primitive
    same_as = xla if convolution_primitive else im2col
    np.testing.assert_allclose(auto.apply(variables, x), same_as.apply(variables, x), atol=1e-6)


class FakeLibc:
    """Records `mallopt(param, value)` calls; answers 1 (accepted) as glibc does."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

        def mallopt(param: int, value: int) -> int:  # a function: takes `argtypes` as ctypes'
            self.calls.append((param, value))
            return 1

        self.mallopt = mallopt


@pytest.fixture
def libc(monkeypatch) -> FakeLibc:
    """A fresh process as far as the allocator knows, with a recording C library."""
    fake = FakeLibc()
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    monkeypatch.delenv(allocator.ENV_VAR, raising=False)
    return fake


def test_on_linux_glibc_keeps_large_blocks_on_one_heap(monkeypatch, libc):
    monkeypatch.setattr(sys, "platform", "linux")
    assert allocator.keep_freed_memory() and allocator.keep_freed_memory()
    # glibc's malloc.h: M_MMAP_MAX -4, M_TRIM_THRESHOLD -1, M_ARENA_MAX -8; applied once.
    assert sorted(libc.calls) == sorted([(-4, 0), (-1, 1 << 30), (-8, 1)])


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_elsewhere_the_allocator_is_left_alone(monkeypatch, libc, platform):
    monkeypatch.setattr(sys, "platform", platform)
    assert not allocator.keep_freed_memory()
    assert libc.calls == []


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch, libc):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())  # musl: no mallopt
    assert not allocator.keep_freed_memory()


def test_the_environment_variable_turns_it_off(monkeypatch, libc):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv(allocator.ENV_VAR, "0")
    assert not allocator.keep_freed_memory()
    assert libc.calls == []


def test_a_second_run_with_the_compilation_cache_reads_its_programs_from_it(tmp_path):
    """What saves minutes of TPU compilation: the programs come from disk, not the compiler."""
    events: list[str] = []

    def listener(name, **kwargs):
        events.append(name)

    jax.monitoring.register_event_listener(listener)
    previous = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    config = small_config(num_epochs=1, compilation_cache_dir=str(tmp_path / "cache"))
    try:
        train_and_evaluate(config, tmp_path / "first")
        first = len(events)
        train_and_evaluate(config, tmp_path / "second")
    finally:
        jax.config.update("jax_compilation_cache_dir", previous[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
        jax.monitoring.unregister_event_listener(listener)
    second = events[first:]
    assert second.count("/jax/compilation_cache/cache_hits") > 0
    assert "/jax/compilation_cache/cache_misses" not in second
