"""Compilation of pure steps: jit, sharded jit over a Mesh, pmap; K-step and epoch calls.

Names are imported on first use: `jdl.parallel.allocator` loads without JAX.
"""

from jdl.lazy import lazy_attributes

_EXPORTS = {
    **dict.fromkeys(("DATA_AXIS", "MODES", "PMAP_AXIS", "Strategy"), "strategy"),
    **dict.fromkeys(("epoch_steps", "scan_steps", "stacked_chunks"), "multistep"),
}
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

__all__ = [
    "DATA_AXIS",
    "MODES",
    "PMAP_AXIS",
    "Strategy",
    "epoch_steps",
    "scan_steps",
    "stacked_chunks",
]
