"""In-memory datasets: users' own numpy arrays, and the base of the embedded datasets."""

from collections.abc import Iterator

import numpy as np

from jdl.data.dataset import (
    Batch,
    Dataset,
    DatasetInfo,
    epoch_seed,
    num_examples,
    shard_bounds,
)


def _local_shard(split: Batch, process_index: int, process_count: int) -> Batch:
    start, end = shard_bounds(num_examples(split), process_index, process_count)
    return {key: value[start:end] for key, value in split.items()}


class ArrayDataset(Dataset):
    """A dataset held in numpy arrays.

    Every process holds the arrays, shuffles the whole train split the same way and takes
    its slice of each global batch, so N processes train on exactly the batches of one.
    Eval examples are split into contiguous per-process shards (their sums are merged).
    """

    def __init__(self, info: DatasetInfo, train: Batch, eval_split: Batch, **batching):
        super().__init__(info, **batching)
        self._train = train
        self._eval = _local_shard(eval_split, self.process_index, self.process_count)

    def _train_batches(self, epoch: int, start_step: int) -> Iterator[Batch]:
        rng = np.random.default_rng(epoch_seed(self.seed, epoch))
        order = rng.permutation(num_examples(self._train))
        size, local = self.batch_size, self.local_batch_size
        offset = self.process_index * local
        for step in range(start_step, self.steps_per_epoch):
            indices = order[step * size + offset : step * size + offset + local]
            yield {key: value[indices] for key, value in self._train.items()}

    def _unpadded_eval_batches(self) -> Iterator[Batch]:
        size = self.local_eval_batch_size
        for start in range(0, num_examples(self._eval), size):
            yield {key: value[start : start + size] for key, value in self._eval.items()}

    def train_arrays(self) -> Batch:
        return dict(self._train)


def _checked_split(split: str, x, y) -> tuple[np.ndarray, np.ndarray]:
    """`x` as float32 and `y` as int32, after checking that they form a usable split."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2:
        raise ValueError(f"x_{split} must have shape (examples, ...); got shape {x.shape}")
    if len(x) != len(y):
        raise ValueError(f"x_{split} has {len(x)} examples but y_{split} has {len(y)} labels")
    if len(x) == 0:
        raise ValueError(f"The {split} split is empty")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"y_{split} must be a 1-D array of integer class labels; "
            f"got dtype {y.dtype} and shape {y.shape}"
        )
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"x_{split} must hold numbers; got dtype {x.dtype}")
    if y.min() < 0:
        raise ValueError(f"y_{split} has negative labels (smallest {y.min()})")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"x_{split} has NaN or Inf values (after conversion to float32)")
    return x, y.astype(np.int32)


def from_arrays(
    x_train,
    y_train,
    x_eval,
    y_eval,
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    name: str = "arrays",
    input_key: str | None = None,
    num_classes: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Dataset:
    """A `Dataset` over in-memory arrays: inputs `x_*` (cast to float32, not rescaled) and
    integer class labels `y_*`.

    `input_key` defaults to "image" for samples of rank 3 or more (HWC), else "features";
    `num_classes` defaults to the largest label + 1. Each process keeps its own shard.
    """
    x_train, y_train = _checked_split("train", x_train, y_train)
    x_eval, y_eval = _checked_split("eval", x_eval, y_eval)
    if x_train.shape[1:] != x_eval.shape[1:]:
        raise ValueError(
            f"Train inputs have shape {x_train.shape[1:]} per example but eval inputs have "
            f"{x_eval.shape[1:]}"
        )
    largest_label = int(max(y_train.max(), y_eval.max()))
    num_classes = largest_label + 1 if num_classes is None else num_classes
    if largest_label >= num_classes:
        raise ValueError(f"Label {largest_label} is out of range for {num_classes} classes")
    input_key = input_key or ("image" if x_train.ndim >= 4 else "features")
    info = DatasetInfo(
        name=name,
        input_shape=tuple(x_train.shape[1:]),
        num_classes=num_classes,
        num_train=len(y_train),
        num_eval=len(y_eval),
        input_key=input_key,
    )
    return ArrayDataset(
        info,
        {input_key: x_train, "label": y_train},
        {input_key: x_eval, "label": y_eval},
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
