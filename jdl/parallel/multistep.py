"""Many steps in one compiled call: K stacked batches, or a whole epoch of resident data."""

import itertools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Step = Callable  # (state, batch, rng, *, axis_name=None) -> (state, metrics)


def _sum_over_steps(metrics):
    return jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), metrics)


def scan_steps(step: Step) -> Step:
    """A step over batches stacked on a leading K axis; metrics are summed over the steps.

    `num_steps` (a traced int, all K by default) runs only the first that many batches, so
    an epoch's short tail goes through the same compiled program, padded to K, instead of
    compiling the single step too. The steps run in one loop, which compiles one step's
    program (jdl's convolutions are matmuls on CPU, as fast in a loop body as outside it).
    """

    def run(state, batches, rng, num_steps=None, *, axis_name=None):
        def one_step(state, batch):
            return step(state, batch, rng, axis_name=axis_name)

        def body(k, carry):
            state, totals = carry
            batch = jax.tree_util.tree_map(
                lambda x: lax.dynamic_index_in_dim(x, k, 0, False), batches
            )
            state, metrics = one_step(state, batch)
            return state, jax.tree_util.tree_map(jnp.add, totals, metrics)

        first = jax.tree_util.tree_map(lambda x: x[0], batches)
        zeros = jax.tree_util.tree_map(
            lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(one_step, state, first)[1]
        )
        if num_steps is None:
            num_steps = jax.tree_util.tree_leaves(batches)[0].shape[0]
        return lax.fori_loop(0, num_steps, body, (state, zeros))

    return run


def stacked_chunks(batches: Iterator[dict], k: int) -> Iterator[tuple[dict, int]]:
    """(K host batches stacked on a leading axis, how many of them to run) for `scan_steps`.

    A short last chunk is padded to K with copies of its last batch, which are not run, so
    every call has the same shapes and goes through one compiled program.
    """
    batches = iter(batches)
    while chunk := list(itertools.islice(batches, k)):
        padded = chunk + chunk[-1:] * (k - len(chunk))
        yield {key: np.stack([b[key] for b in padded]) for key in chunk[0]}, len(chunk)


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
