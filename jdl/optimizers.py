"""Optimizers and learning-rate schedules from a config, all built from optax."""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

# Each entry turns gradients into an update direction with a learning rate of 1;
# `make_optimizer` adds clipping, weight decay and the scheduled learning rate around it.
# `adamw` is adam plus decoupled weight decay (the `weight_decay` key).
OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": lambda momentum: optax.identity(),
    "momentum": lambda momentum: optax.trace(decay=momentum),
    "nesterov": lambda momentum: optax.trace(decay=momentum, nesterov=True),
    "adam": lambda momentum: optax.scale_by_adam(),
    "adamw": lambda momentum: optax.scale_by_adam(),
    "adagrad": lambda momentum: optax.scale_by_rss(initial_accumulator_value=0.1),
    "rmsprop": lambda momentum: optax.scale_by_rms(decay=0.9, eps=1e-7),
}

SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential", "step")


def make_schedule(config: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step.

    Reads `learning_rate`, `schedule` and, where they apply, `warmup_steps`,
    `decay_rate` and `decay_every` (in steps; exponential and step decay).
    """
    lr = config["learning_rate"]
    name = config.get("schedule", "constant")
    decay_steps = max(total_steps, 1)
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps)
    if name == "warmup_cosine":
        warmup = min(config.get("warmup_steps", 0), decay_steps - 1)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, decay_steps)
    if name == "exponential":
        return optax.exponential_decay(lr, config.get("decay_every", 1000), config["decay_rate"])
    if name == "step":
        return optax.exponential_decay(
            lr, config["decay_every"], config["decay_rate"], staircase=True
        )
    raise ValueError(f"Unknown schedule {name!r}; valid schedules: {list(SCHEDULES)}")


def decay_mask(params) -> Any:
    """True for kernels, False for biases and normalisation scales (1-D leaves)."""
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(config: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
    """An optax chain: [clip by global norm] -> optimizer -> [weight decay] -> -lr.

    Config keys: `optimizer` (one of OPTIMIZERS), `learning_rate`, `schedule`,
    `momentum` (momentum and nesterov), `weight_decay` (decoupled, skips
    biases and normalisation scales; for `sgd`-style and `adamw` alike),
    `grad_clip_norm` (0 or None disables clipping).
    """
    name = config["optimizer"]
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; valid optimizers: {sorted(OPTIMIZERS)}")
    schedule = make_schedule(config, total_steps)
    momentum = config.get("momentum", 0.9)
    weight_decay = config.get("weight_decay", 0.0)
    clip = config.get("grad_clip_norm", None)

    parts = []
    if clip:
        parts.append(optax.clip_by_global_norm(clip))
    # Weight decay is added before the schedule scales the update, as in AdamW.
    parts.append(OPTIMIZERS[name](momentum))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)
