"""The only place that compiles steps: `jit`, `sharded` (jit over a Mesh) and `pmap`.

A `Strategy` knows how to place the state and the batches for its mode and how
to compile a pure step for it. All modes give the same parameters, up to float
rounding, for the same global batch: under `pmap` the step is told the mapped
axis name and combines gradients, statistics and metrics across it; under
`jit` and `sharded` the step sees the whole global batch and XLA partitions it.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jdl.parallel.multistep import epoch_steps, scan_steps

MODES = ("jit", "sharded", "pmap")
DATA_AXIS = "data"
PMAP_AXIS = "batch"


def _put_global(x, sharding: NamedSharding) -> jax.Array:
    """A global array over devices of several processes, from this process's copy."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _put_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))


class Strategy:
    """Placement and compilation for one of `MODES`, over all (global) devices."""

    def __init__(self, mode: str, devices=None):
        if mode not in MODES:
            raise ValueError(f"Unknown compile mode {mode!r}; valid modes: {list(MODES)}")
        if mode != "sharded" and jax.process_count() > 1:
            raise ValueError(
                f"Compile mode {mode!r} runs on one process's devices; with "
                f"{jax.process_count()} processes use parallel='sharded'"
            )
        self.mode = mode
        self.devices = list(devices) if devices is not None else jax.devices()
        if mode == "jit":
            self.devices = self.devices[:1]
        # pmap returns its replicated outputs on a mesh named after its own axis; state placed
        # on that same mesh is taken as is, so the second call does not compile again.
        axis = PMAP_AXIS if mode == "pmap" else DATA_AXIS
        self.mesh = Mesh(np.array(self.devices), (axis,))
        self.replicated = NamedSharding(self.mesh, P())

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def local_devices(self) -> list:
        return [d for d in self.devices if d.process_index == jax.process_index()]

    def check_batch_size(self, global_batch_size: int) -> None:
        """Raises unless the global batch splits evenly over the devices."""
        if global_batch_size % self.num_devices:
            raise ValueError(
                f"Global batch size {global_batch_size} is not divisible by the "
                f"{self.num_devices} devices of compile mode {self.mode!r}"
            )

    # --- placement -------------------------------------------------------------------
    def put_replicated(self, tree: Any, copy: bool = False) -> Any:
        """State, keys and resident data: one full copy on every device of the mode.

        Every process passes the same values (same seed, same checkpoint). `copy` never
        hands back the caller's own arrays, which a compiled step would then donate.
        """
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated, may_alias=False if copy else None)
        return jax.tree_util.tree_map(lambda x: _put_global(x, self.replicated), tree)

    def put_batch(self, local_batch: dict, stacked: bool = False) -> dict:
        """Host batch of this process -> device batch; `stacked` batches have a leading K axis."""
        batch_axis = 1 if stacked else 0
        if self.mode == "pmap":
            n = len(self.local_devices)

            def split(x):
                x = np.asarray(x)
                b = x.shape[batch_axis]
                x = x.reshape(*x.shape[:batch_axis], n, b // n, *x.shape[batch_axis + 1 :])
                return np.moveaxis(x, batch_axis, 0)

            return jax.tree_util.tree_map(split, local_batch)
        spec = P(None, DATA_AXIS) if stacked else P(DATA_AXIS)
        sharding = NamedSharding(self.mesh, spec)
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
        )

    # --- compilation -----------------------------------------------------------------
    def compile_train(self, step: Callable, **step_kwargs) -> Callable:
        """(state, batch, rng) -> (state, metrics), state donated."""
        return self._compile(functools.partial(step, **step_kwargs), batch_spec=P(DATA_AXIS))

    def compile_train_steps(self, step: Callable, **step_kwargs) -> Callable:
        """(state, batches_KxB, rng, num_steps=K) -> (state, metrics summed over the steps).

        Runs the first `num_steps` of K stacked batches (see `scan_steps`); every count
        goes through one compiled program.
        """
        step = functools.partial(step, **step_kwargs)
        compiled = self._compile(scan_steps(step), batch_spec=P(None, DATA_AXIS), num_extra=1)
        placed_count = functools.cache(lambda n: self.put_replicated(np.int32(n)))

        def run(state, batches, rng, num_steps=None):
            if num_steps is None:  # all K; pmap's batches lead with the device axis
                num_steps = jax.tree_util.tree_leaves(batches)[0].shape[self.mode == "pmap"]
            return compiled(state, batches, rng, placed_count(num_steps))

        return run

    def compile_train_epoch(self, step: Callable, batch_size: int, **step_kwargs) -> Callable:
        """(state, data, rng) -> (state, metrics): one epoch over replicated resident data."""
        if jax.process_count() > 1:
            raise ValueError(
                "An epoch on the device needs the whole train split in every "
                "process; with several processes set data_on_device=False"
            )
        self.check_batch_size(batch_size)
        step = functools.partial(step, **step_kwargs)
        batch_sharding = NamedSharding(self.mesh, P(DATA_AXIS)) if self.mode == "sharded" else None
        run = epoch_steps(step, batch_size, batch_sharding)
        return self._compile(run, batch_spec=P(), data_replicated=True)

    def compile_eval(self, eval_step: Callable) -> Callable:
        """(state, batch) -> metrics."""
        if self.mode == "pmap":
            return jax.pmap(
                functools.partial(eval_step, axis_name=PMAP_AXIS),
                axis_name=PMAP_AXIS,
                in_axes=(None, 0),
                out_axes=None,
                devices=self.local_devices,
            )
        if self.mode == "sharded":
            return jax.jit(
                eval_step,
                in_shardings=(self.replicated, NamedSharding(self.mesh, P(DATA_AXIS))),
                out_shardings=self.replicated,
            )
        return jax.jit(eval_step)

    def compile_predict(self, predict_step: Callable) -> Callable:
        """(state, batch) -> per-example outputs of the whole batch, as host NumPy arrays.

        Under `pmap` each device predicts its slice and the slices are joined in order, so
        all modes return the same rows in the same order.
        """
        if self.mode == "pmap":
            pmapped = jax.pmap(
                predict_step, axis_name=PMAP_AXIS, in_axes=(None, 0), devices=self.local_devices
            )
            join = functools.partial(jax.tree.map, lambda y: y.reshape(-1, *y.shape[2:]))
            return lambda state, batch: join(jax.device_get(pmapped(state, batch)))
        if self.mode == "sharded":
            batch_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
            compiled = jax.jit(
                predict_step,
                in_shardings=(self.replicated, batch_sharding),
                out_shardings=batch_sharding,
            )
        else:
            compiled = jax.jit(predict_step)
        return lambda state, batch: jax.device_get(compiled(state, batch))

    def _compile(
        self, fn: Callable, batch_spec: P, data_replicated: bool = False, num_extra: int = 0
    ) -> Callable:
        """`fn(state, batch, rng, *extra)` compiled for the mode, state donated; the
        `num_extra` trailing arguments are replicated like the state."""
        if self.mode == "pmap":
            # pmap sizes its axis from a mapped argument, and replicated resident data maps
            # none, so every call also passes the (otherwise unused) local device indices.
            pmapped = jax.pmap(
                lambda device_index, state, batch, rng, *extra: fn(
                    state, batch, rng, *extra, axis_name=PMAP_AXIS
                ),
                axis_name=PMAP_AXIS,
                in_axes=(0, None, None if data_replicated else 0, None) + (None,) * num_extra,
                out_axes=(None, None),
                devices=self.local_devices,
                donate_argnums=(1,),
            )
            device_indices = np.arange(len(self.local_devices))
            return lambda *args: pmapped(device_indices, *args)
        if self.mode == "sharded":
            batch_sharding = NamedSharding(self.mesh, batch_spec)
            return jax.jit(
                fn,
                in_shardings=(self.replicated, batch_sharding, self.replicated)
                + (self.replicated,) * num_extra,
                out_shardings=(self.replicated, self.replicated),
                donate_argnums=(0,),
            )
        return jax.jit(fn, donate_argnums=(0,))

    def to_host(self, tree: Any) -> Any:
        """A device pytree as NumPy arrays on the host (one copy)."""
        return jax.device_get(tree)
