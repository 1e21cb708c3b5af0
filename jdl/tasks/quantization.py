"""Quantization-aware training: classification with int8 forward passes (qwix)."""

import dataclasses

import ml_collections

from jdl.data import Dataset
from jdl.tasks.base import Task
from jdl.tasks.classification import classification_task


def quantization_aware_task(config: ml_collections.ConfigDict, dataset: Dataset) -> Task:
    """The `classification` task, its model's matmuls and convolutions int8 in the forward
    pass (float gradients): the same steps, parameters and checkpoints, so the trained
    run quantizes after training (`jdl.quantize.post_training_quantize`) with little loss."""
    # qwix takes seconds to import (it loads Pallas): only quantization-aware runs pay for it.
    from jdl.quantize import quantization_aware

    task = classification_task(config, dataset)
    model = quantization_aware(task.state.model)
    return dataclasses.replace(task, state=task.state.replace(model=model))
