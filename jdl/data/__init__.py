"""Datasets by name: tfds downloads, embedded scikit-learn data, or your own arrays.

Every dataset is a `Dataset`: this process's share of shuffled global train batches
(`train_batches`), masked eval batches that cover the eval split exactly once
(`eval_batches`), and the whole local train split for on-device epochs (`train_arrays`).
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any

from jdl.data.arrays import from_arrays
from jdl.data.dataset import Dataset, DatasetInfo, pad_batch
from jdl.data.embedded import EMBEDDED, load_embedded
from jdl.data.sequences import load_adding_problem, load_row_sequences
from jdl.data.tfds_data import DatasetUnavailableError, load_tfds
from jdl.data.tfds_text import TextDataset, load_imdb_reviews, load_tiny_shakespeare

DATASETS: dict[str, Callable[..., Dataset]] = {
    **{name: functools.partial(load_tfds, name) for name in ("mnist", "fashion_mnist", "cifar10")},
    **{name: functools.partial(load_embedded, name) for name in EMBEDDED},
    # Sequences (batches with `sequence` [B, T, D] or `tokens` [B, T]).
    "adding_problem": load_adding_problem,  # options: seq_len, num_train, num_eval, data_seed
    "seq_mnist": functools.partial(load_row_sequences, functools.partial(load_tfds, "mnist")),
    "seq_digits": functools.partial(load_row_sequences, functools.partial(load_embedded, "digits")),
    "imdb_reviews": load_imdb_reviews,  # options: max_len, tokenizer, vocab_size, vocab_file
    "tiny_shakespeare": load_tiny_shakespeare,  # options: seq_len
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
    **options: Any,
) -> Dataset:
    """The dataset registered as `name` in `DATASETS`, batched for this process.

    `batch_size` and `eval_batch_size` are global; `data_dir` and `download` concern tfds
    datasets only; the process index and count default to JAX's. `options` are the
    dataset's own (e.g. a sequence length); unknown ones raise a ValueError listing the valid.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    valid = dataset_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for dataset {name!r}; valid options: {valid or 'none'}"
        )
    return DATASETS[name](
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        data_dir=data_dir,
        download=download,
        process_index=process_index,
        process_count=process_count,
        **options,
    )


_COMMON_ARGUMENTS = set(inspect.signature(load_dataset).parameters) - {"name", "options"}


def dataset_options(name: str) -> list[str]:
    """The dataset-specific keyword options of `DATASETS[name]` (config.data's valid keys)."""
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = inspect.signature(DATASETS[name]).parameters.values()
    return sorted(p.name for p in parameters if p.kind in named and p.name not in _COMMON_ARGUMENTS)


__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "DatasetUnavailableError",
    "TextDataset",
    "dataset_options",
    "from_arrays",
    "load_dataset",
    "pad_batch",
]
