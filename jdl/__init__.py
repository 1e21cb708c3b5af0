"""jdl: pure JAX training steps, compiled for jit, sharded jit or pmap, with a loop around them.

`import jdl` changes nothing outside jdl and imports JAX only when a name needs it. For the
faster CPU allocator setting in a notebook, call `jdl.keep_freed_memory()` first.
"""

from jdl.lazy import lazy_attributes
from jdl.parallel.allocator import keep_freed_memory

_EXPORTS = {
    "TrainResult": "engine",
    "evaluate": "engine",
    "base_config": "config",
    "train_and_evaluate": "loop",
    "load_workdir": "workdir",
    "Model": "keras",
    "load": "keras",
}
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

__all__ = [
    "Model",
    "TrainResult",
    "base_config",
    "evaluate",
    "keep_freed_memory",
    "load",
    "load_workdir",
    "train_and_evaluate",
]
