"""Host-side checks of the batches the loop places on devices: cheap, and before any step."""

import numpy as np

from jdl.data.dataset import Batch, DatasetInfo


def check_labels(batch: Batch, info: DatasetInfo) -> Batch:
    """`batch`, unchanged, once its `label`s lie in [0, info.num_classes).

    A label past the model's outputs would otherwise train on an all-zero target: no error,
    nothing learned. Datasets without classes (`num_classes` 0, regression) pass.
    """
    if "label" not in batch or info.num_classes <= 0:
        return batch
    labels = np.asarray(batch["label"])
    outside = labels[(labels < 0) | (labels >= info.num_classes)]
    if outside.size:
        raise ValueError(
            f"Label {outside[0]} in a batch of {info.name!r} is outside [0, {info.num_classes}): "
            f"the model has {info.num_classes} classes; fix the labels or the dataset's "
            "num_classes"
        )
    return batch
