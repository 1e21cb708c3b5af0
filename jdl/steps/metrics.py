"""Step metrics are sums with a `count`; means are taken only when reporting."""

from collections.abc import Mapping

import jax
import numpy as np


def summarize(metric_sums: Mapping[str, jax.Array]) -> dict[str, float]:
    """Turns summed metrics into means over `count` (host floats, `count` dropped)."""
    sums = jax.device_get(dict(metric_sums))
    count = float(np.sum(sums["count"]))
    return {k: float(np.sum(v)) / max(count, 1.0) for k, v in sums.items() if k != "count"}


def merge(a: Mapping[str, jax.Array] | None, b: Mapping[str, jax.Array]) -> dict:
    """Adds two metric dicts elementwise (None is the empty sum)."""
    if a is None:
        return dict(b)
    return jax.tree_util.tree_map(lambda x, y: x + y, dict(a), dict(b))
