"""Keras-style inputs to jdl datasets: arrays (with a validation split), a Dataset or a name.

Arrays become an in-memory `ArrayDataset` whose batches hold the input under `image` (rank
3+ examples) or `features`, and `label` as given: integer classes, one-hot rows or float
targets, whatever the loss takes. The last partial train batch of an epoch is dropped,
as everywhere in jdl; evaluation and prediction count every example once.
"""

import numpy as np

from jdl.data import Dataset, DatasetInfo, load_dataset, pad_batch
from jdl.data.arrays import ArrayDataset

Split = tuple[np.ndarray, np.ndarray]


def as_inputs(x, name: str = "x") -> np.ndarray:
    """`x` as a float32 array of examples; a ValueError when it is not one."""
    x = np.asarray(x)
    if x.ndim < 2 or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(
            f"{name} must be a numeric array of shape (examples, ...); got dtype {x.dtype} "
            f"and shape {x.shape}"
        )
    return x.astype(np.float32)


def as_split(x, y, name: str = "x") -> Split:
    """(inputs float32, labels int32 or float32) after checking they pair up."""
    x = as_inputs(x, name)
    y = np.asarray(y)
    label_name = name.replace("x", "y", 1)
    if len(x) != len(y):
        raise ValueError(f"{name} has {len(x)} examples but {label_name} has {len(y)} labels")
    if len(x) == 0:
        raise ValueError(f"{name} is empty")
    return x, y.astype(np.int32 if np.issubdtype(y.dtype, np.integer) else np.float32)


def split_off_validation(train: Split, fraction: float) -> tuple[Split, Split]:
    """The last `fraction` of the examples (before shuffling) held out, as Keras does."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_split must be in (0, 1); got {fraction}")
    num_val = int(len(train[0]) * fraction)
    if num_val == 0:
        raise ValueError(f"validation_split {fraction} of {len(train[0])} examples is none")
    cut = len(train[0]) - num_val
    return (train[0][:cut], train[1][:cut]), (train[0][cut:], train[1][cut:])


def input_key(x: np.ndarray) -> str:
    """`image` for examples of rank 3 or more (HWC), else `features`."""
    return "image" if x.ndim >= 4 else "features"


class UnshuffledArrayDataset(ArrayDataset):
    """Train batches in the order of the arrays, every epoch (Keras's `shuffle=False`)."""

    def _train_batches(self, epoch: int, start_step: int):
        size, local = self.batch_size, self.local_batch_size
        offset = self.process_index * local
        for step in range(start_step, self.steps_per_epoch):
            start = step * size + offset
            yield {key: value[start : start + local] for key, value in self._train.items()}


def array_dataset(
    train: Split,
    validation: Split | None,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
) -> Dataset:
    """An in-memory dataset; without validation data its eval split is empty (no evaluation)."""
    key = input_key(train[0])
    if validation is None:
        validation = (train[0][:0], train[1][:0])
    info = DatasetInfo(
        name="arrays",
        input_shape=tuple(train[0].shape[1:]),
        num_classes=0,  # labels are checked against the loss by jdl.keras.objectives
        num_train=len(train[0]),
        num_eval=len(validation[0]),
        input_key=key,
    )
    dataset_class = ArrayDataset if shuffle else UnshuffledArrayDataset
    return dataset_class(
        info,
        {key: train[0], "label": train[1]},
        {key: validation[0], "label": validation[1]},
        batch_size=batch_size,
        eval_batch_size=batch_size,
        seed=seed,
    )


def named_dataset(name: str, *, batch_size: int, seed: int, data_dir: str | None) -> Dataset:
    """A dataset of `jdl.data.DATASETS` (tfds or embedded); its eval split validates."""
    return load_dataset(
        name, batch_size=batch_size, eval_batch_size=batch_size, seed=seed, data_dir=data_dir
    )


def padded_batches(arrays: dict[str, np.ndarray], batch_size: int):
    """Aligned arrays in batches of `batch_size`, the last padded, with a `mask`."""
    size = len(next(iter(arrays.values())))
    for start in range(0, size, batch_size):
        chunk = {key: value[start : start + batch_size] for key, value in arrays.items()}
        yield pad_batch(chunk, batch_size)


class EvalSplit:
    """(x, y) as the engine's `evaluate` reads a dataset: padded, masked eval batches."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int):
        self.arrays, self.batch_size = {input_key(x): x, "label": y}, batch_size
        # num_classes 0: labels are checked against the loss by jdl.keras.objectives.
        self.info = DatasetInfo("arrays", tuple(x.shape[1:]), 0, 0, len(x), input_key(x))

    def eval_batches(self):
        """Every example once, in padded batches with a `mask`."""
        return padded_batches(self.arrays, self.batch_size)
