"""Many steps in one compiled call: K stacked batches, or a whole epoch of resident data."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

Step = Callable  # (state, batch, rng, *, axis_name=None) -> (state, metrics)


def _sum_over_steps(metrics):
    return jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), metrics)


def scan_steps(step: Step, unroll: bool = False) -> Step:
    """A step over batches stacked on a leading K axis; metrics are summed over the K steps.

    The K steps run as a `lax.scan`, which compiles one step's program. `unroll` writes
    them out in one straight-line program instead, for steps whose XLA:CPU convolutions
    run an order of magnitude slower inside a loop body (the GAN's strided and transposed
    ones; jdl's CNN computes its convolutions as matmuls on CPU and has no such problem).
    """

    def run(state, batches, rng, *, axis_name=None):
        def body(state, batch):
            return step(state, batch, rng, axis_name=axis_name)

        if not unroll:
            state, metrics = lax.scan(body, state, batches)
            return state, _sum_over_steps(metrics)
        num_steps = jax.tree_util.tree_leaves(batches)[0].shape[0]
        totals = None
        for k in range(num_steps):
            state, metrics = body(state, jax.tree_util.tree_map(lambda x, k=k: x[k], batches))
            totals = metrics if totals is None else jax.tree_util.tree_map(jnp.add, totals, metrics)
        return state, totals

    return run


def epoch_steps(step: Step, batch_size: int, batch_sharding=None) -> Step:
    """A step over one whole epoch of `data` (a dict of arrays resident on the device).

    The epoch is `state.step // steps_per_epoch`; its shuffle is a permutation drawn
    on the device from the key folded with the epoch, so no data crosses the host.
    The last partial batch is dropped, as in the streamed path. Under a mapped axis
    each device takes its slice of every global batch; `batch_sharding` (sharded jit)
    tells XLA to split each gathered batch across the mesh.
    """

    def run(state, data, rng, *, axis_name=None):
        num_examples = jax.tree_util.tree_leaves(data)[0].shape[0]
        steps = num_examples // batch_size
        shuffle_rng, step_rng = jax.random.split(rng)
        epoch = state.step // steps
        order = jax.random.permutation(jax.random.fold_in(shuffle_rng, epoch), num_examples)
        indices_SxB = order[: steps * batch_size].reshape(steps, batch_size)
        if axis_name is not None:
            per_device = batch_size // lax.axis_size(axis_name)
            start = lax.axis_index(axis_name) * per_device
            indices_SxB = lax.dynamic_slice_in_dim(indices_SxB, start, per_device, axis=1)

        def body(state, indices_B):
            batch = jax.tree_util.tree_map(lambda x: x[indices_B], data)
            if batch_sharding is not None:
                batch = lax.with_sharding_constraint(batch, batch_sharding)
            return step(state, batch, step_rng, axis_name=axis_name)

        state, metrics = lax.scan(body, state, indices_SxB)
        return state, _sum_over_steps(metrics)

    return run
