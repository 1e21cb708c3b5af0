"""jdl: pure JAX training steps, compiled for jit, sharded jit or pmap, with a loop around them."""

# Before JAX starts its CPU threads: they would otherwise take malloc arenas of their own,
# which glibc trims, so large XLA buffers are page-faulted in again on every call.
from jdl.parallel.allocator import keep_freed_memory

keep_freed_memory()

from jdl.config import base_config  # noqa: E402
from jdl.loop import TrainResult, evaluate, train_and_evaluate  # noqa: E402

__all__ = ["TrainResult", "base_config", "evaluate", "train_and_evaluate"]
