"""Datasets by name: tfds downloads, embedded scikit-learn data, or your own arrays.

Every dataset is a `Dataset`: this process's share of shuffled global train batches
(`train_batches`), masked eval batches that cover the eval split exactly once
(`eval_batches`), and the whole local train split for on-device epochs (`train_arrays`).
"""

import functools
from collections.abc import Callable

from jdl.data.arrays import from_arrays
from jdl.data.dataset import Dataset, DatasetInfo, pad_batch
from jdl.data.embedded import EMBEDDED, load_embedded
from jdl.data.tfds_data import DatasetUnavailableError, load_tfds

DATASETS: dict[str, Callable[..., Dataset]] = {
    **{name: functools.partial(load_tfds, name) for name in ("mnist", "fashion_mnist", "cifar10")},
    **{name: functools.partial(load_embedded, name) for name in EMBEDDED},
}


def load_dataset(
    name: str,
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    data_dir: str | None = None,
    download: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Dataset:
    """The dataset registered as `name` in `DATASETS`, batched for this process.

    `batch_size` and `eval_batch_size` are global; `data_dir` and `download` concern tfds
    datasets only; the process index and count default to JAX's.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        data_dir=data_dir,
        download=download,
        process_index=process_index,
        process_count=process_count,
    )


__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "DatasetUnavailableError",
    "from_arrays",
    "load_dataset",
    "pad_batch",
]
