"""Compilation happens in the first call and epoch only, and can be cached across runs."""

import jax
import numpy as np
import optax
import pytest
from jax.random import key
from loop_helpers import small_config

from jdl import engine, train_and_evaluate
from jdl.models import build_model
from jdl.parallel import MODES, Strategy
from jdl.state import create_train_state
from jdl.steps import train_step

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@pytest.fixture
def compile_count():
    """A callable returning how many XLA compilations ran since the fixture started."""
    events = []

    def listener(name, *args, **kwargs):
        if name == BACKEND_COMPILE:
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield lambda: len(events)
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize(
    "overrides",
    [{"parallel": "jit", "steps_per_call": 4}, {"parallel": "pmap"}, {"data_on_device": True}],
    ids=["jit-4-steps-per-call", "pmap", "epoch-on-device"],
)
def test_nothing_compiles_after_the_first_epoch(tmp_path, monkeypatch, compile_count, overrides):
    counts_after_epoch = []

    def counting_evaluate(*args, **kwargs):  # runs at the end of every epoch
        metrics = real_evaluate(*args, **kwargs)
        counts_after_epoch.append(compile_count())
        return metrics

    real_evaluate = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", counting_evaluate)
    train_and_evaluate(small_config(num_epochs=3, checkpoint_every=10, **overrides), tmp_path)
    assert len(counts_after_epoch) == 3
    assert counts_after_epoch[0] > 0
    assert counts_after_epoch[1] == counts_after_epoch[2] == counts_after_epoch[0]


def test_an_epochs_short_tail_compiles_nothing_more(tmp_path, compile_count):
    """22 steps at 4 per call end in a tail of 2, run by the 4-step program; 20 have none."""
    compiled = []
    for num_steps in (20, 22):
        before = compile_count()
        config = small_config(num_steps=num_steps, parallel="jit", steps_per_call=4)
        result = train_and_evaluate(config, tmp_path / str(num_steps))
        assert int(result.state.step) == num_steps
        compiled.append(compile_count() - before)
    assert compiled[0] > 0
    assert compiled[1] == compiled[0]


def test_compilation_cache_dir_fills_with_compiled_programs(tmp_path):
    previous = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    try:
        config = small_config(num_epochs=1, compilation_cache_dir=str(tmp_path / "cache"))
        train_and_evaluate(config, tmp_path / "run")
    finally:
        jax.config.update("jax_compilation_cache_dir", previous[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
    assert any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("form", ["step", "steps", "epoch"])
@pytest.mark.parametrize("mode", MODES)
def test_the_second_call_compiles_nothing(compile_count, mode, form):
    """State placed by `put_replicated` matches what the compiled call returns (pmap included)."""
    strategy = Strategy(mode)
    model = build_model({"name": "mlp", "hidden_sizes": [8]}, 3)
    state = strategy.put_replicated(create_train_state(model, optax.sgd(0.1), (4,), key(0)))
    rng = strategy.put_replicated(key(1))
    data = {"features": np.ones((16, 4), np.float32), "label": np.zeros(16, np.int32)}
    if form == "epoch":
        fn, batch = strategy.compile_train_epoch(train_step, 8), strategy.put_replicated(data)
    elif form == "steps":
        stacked = {k: v.reshape(2, 8, *v.shape[1:]) for k, v in data.items()}
        fn, batch = strategy.compile_train_steps(train_step), strategy.put_batch(stacked, True)
    else:
        fn, batch = strategy.compile_train(train_step), strategy.put_batch(data)
    state, _ = fn(state, batch, rng)
    after_first_call = compile_count()
    for _ in range(2):
        state, metrics = fn(state, batch, rng)
    jax.block_until_ready(metrics)
    assert compile_count() == after_first_call
