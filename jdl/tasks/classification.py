"""Classification of images, features or sequences: softmax (C > 2 classes) or sigmoid (2)."""

import functools

import flax.linen as nn
import jax
import ml_collections

from jdl.config import total_train_steps
from jdl.data import Dataset
from jdl.models import build_model, for_task
from jdl.optimizers import make_optimizer
from jdl.state import TrainState, create_train_state
from jdl.steps import eval_step, train_step
from jdl.steps.microbatch import check_microbatches
from jdl.tasks.base import Task


def init_rng(config: ml_collections.ConfigDict) -> jax.Array:
    """The key every task initialises its parameters from (the seed's first fold)."""
    return jax.random.fold_in(jax.random.key(config.seed), 0)


def initial_train_state(
    config, dataset: Dataset, num_outputs: int, model: nn.Module | None = None
) -> TrainState:
    """`model` (default: the one `config.model` names) with `num_outputs` outputs,
    initialised for the dataset's input shape, and the config's optimizer scheduled over
    the whole run. A model that `config.microbatches` cannot slice is refused here, before
    the run starts."""
    if model is None:
        model = build_model(config.model, num_outputs)
    else:
        model = for_task(model, num_outputs)
    tx = make_optimizer(config, total_train_steps(config, dataset.steps_per_epoch))
    state = create_train_state(model, tx, dataset.info.input_shape, init_rng(config))
    check_microbatches(config.microbatches, config.batch_size, state.batch_stats)
    return state


def classification_task(
    config: ml_collections.ConfigDict, dataset: Dataset, model: nn.Module | None = None
) -> Task:
    """The model sized to the data's classes, the optimizer scheduled over the whole run.

    Two classes are one sigmoid logit; more are softmax logits. The config's
    `label_smoothing`, `augment_shift` and `microbatches` are bound into the train step.
    """
    if config.augment_shift and dataset.info.input_key != "image":
        raise ValueError(
            f"Config augment_shift={config.augment_shift} translates images, but "
            f"{dataset.info.name!r} gives {dataset.info.input_key!r} inputs; set it to 0"
        )
    num_classes = dataset.info.num_classes
    state = initial_train_state(config, dataset, 1 if num_classes == 2 else num_classes, model)
    step = functools.partial(
        train_step,
        label_smoothing=config.label_smoothing,
        max_shift=config.augment_shift,
        microbatches=config.microbatches,
    )
    return Task(state=state, train_step=step, eval_step=eval_step)
