"""Classification of images, features or sequences: softmax (C > 2 classes) or sigmoid (2)."""

import functools

import jax
import ml_collections

from jdl.config import total_train_steps
from jdl.data import Dataset
from jdl.models import build_model
from jdl.optimizers import make_optimizer
from jdl.state import create_train_state
from jdl.steps import eval_step, train_step
from jdl.tasks.base import Task


def init_rng(config: ml_collections.ConfigDict) -> jax.Array:
    """The key every task initialises its parameters from (the seed's first fold)."""
    return jax.random.fold_in(jax.random.key(config.seed), 0)


def classification_task(config: ml_collections.ConfigDict, dataset: Dataset) -> Task:
    """The model sized to the data's classes, the optimizer scheduled over the whole run.

    Two classes are one sigmoid logit; more are softmax logits. The config's
    `label_smoothing` and `augment_shift` are bound into the train step.
    """
    info = dataset.info
    model = build_model(config.model, 1 if info.num_classes == 2 else info.num_classes)
    tx = make_optimizer(config, total_train_steps(config, dataset.steps_per_epoch))
    step = functools.partial(
        train_step, label_smoothing=config.label_smoothing, max_shift=config.augment_shift
    )
    state = create_train_state(model, tx, info.input_shape, init_rng(config))
    return Task(state=state, train_step=step, eval_step=eval_step)
