"""Compilation of pure steps: jit, sharded jit over a Mesh, pmap; K-step and epoch calls."""

from jdl.parallel.multistep import epoch_steps, scan_steps
from jdl.parallel.strategy import DATA_AXIS, MODES, PMAP_AXIS, Strategy

__all__ = ["DATA_AXIS", "MODES", "PMAP_AXIS", "Strategy", "epoch_steps", "scan_steps"]
