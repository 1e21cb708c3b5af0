"""One step's gradient over slices of its batch, one slice after another (a `lax.scan`).

Summing the gradients of `n` slices gives the gradient of the whole batch when the loss is
a sum over examples, so the update is the same (to float rounding) while only one slice's
activations are alive at a time: a batch too large for an accelerator's memory fits, and on
a CPU a slice's activations stay in the caches (the documents' CNN at batch 128, 4 slices
of 32: 4-10 % more examples/s on 2 cores, benchmarks/README.md). Batch norm normalises by
the statistics of what it sees, so a model with batch norm cannot be sliced.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax


def check_microbatches(microbatches: int, batch_size: int, batch_stats) -> None:
    """A ValueError, before any work, for a slicing that would not give the batch's update."""
    if microbatches < 1:
        raise ValueError(f"microbatches must be >= 1, got {microbatches}")
    if batch_size % microbatches:
        raise ValueError(
            f"A batch of {batch_size} examples does not split into {microbatches} equal "
            "microbatches; choose a divisor of the batch size (per device under pmap)"
        )
    if microbatches > 1 and batch_stats:
        raise ValueError(
            "microbatches > 1 needs a model without batch norm: batch norm would normalise "
            "each microbatch by its own statistics, not by the batch's"
        )


def split(tree, n: int):
    """[B, ...] leaves -> [n, B / n, ...]: example j goes to slice j % n.

    Interleaved rather than in blocks, so that with the batch sharded over devices in
    contiguous blocks every slice takes an equal share from every device.
    """
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), tree)


def unsplit(tree):
    """The inverse of `split`: [n, B / n, ...] leaves -> [B, ...] in the batch's order."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), tree)


def sliced_grad(loss_fn: Callable, params, batch, rng: jax.Array, microbatches: int):
    """`jax.grad(loss_fn, has_aux=True)(params, batch, rng)`, `microbatches` slices at a time.

    `loss_fn(params, batch, rng) -> (loss, aux)` must be a sum over the batch's examples
    (a mean divides by a constant computed from the whole batch) and its aux leaves must
    have the batch axis first; they come back in the batch's order. Slice i gets
    `fold_in(rng, i)`; one slice gets `rng` itself.
    """
    grad_fn = jax.grad(loss_fn, has_aux=True)
    if microbatches == 1:
        return grad_fn(params, batch, rng)

    def add_slice(total, indexed_slice):
        index, piece = indexed_slice
        grads, aux = grad_fn(params, piece, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, total, grads), aux

    zeros = jax.tree.map(jnp.zeros_like, params)
    slices = (jnp.arange(microbatches), split(batch, microbatches))
    grads, aux = lax.scan(add_slice, zeros, slices)
    return grads, unsplit(aux)
