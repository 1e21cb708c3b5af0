"""Multi-process start-up on JAX's own runtime (`jax.distributed`)."""

import os

import jax

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"


def initialize(
    enabled: bool,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins this process to a multi-process run; a no-op for a single process.

    Runs when `enabled` or when a coordinator is given (argument or JAX_COORDINATOR_ADDRESS).
    Arguments left None are auto-detected by JAX (Cloud TPU, SLURM, JAX_* variables).
    Must happen before JAX touches a device; a second call is ignored.
    """
    if not (enabled or coordinator_address or os.environ.get(COORDINATOR_ENV)):
        return
    if jax.distributed.is_initialized():
        return
    # Collectives between CPU processes need an implementation; accelerators ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
