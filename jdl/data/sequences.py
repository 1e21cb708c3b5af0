"""Sequence datasets without text: the generated adding problem, and images read row by row.

Sequence batches hold `sequence` [B, T, D] float32 and a `target` (regression) or `label`.
"""

from collections.abc import Iterator

import numpy as np

from jdl.data.arrays import ArrayDataset
from jdl.data.dataset import Batch, Dataset, DatasetInfo

# Predicting the mean sum 1 has MSE Var(U1 + U2) = 2 / 12 for U ~ Uniform(0, 1).
ADDING_TRIVIAL_MSE = 1 / 6


def adding_problem_arrays(num_examples: int, seq_len: int, seed: int) -> Batch:
    """The adding problem (Hochreiter & Schmidhuber 1997; as in Le et al. 2015).

    `sequence` [N, T, 2]: channel 0 holds T numbers drawn from U(0, 1), channel 1 marks two
    of them with 1, one in each half of the sequence; `target` [N] is the sum of the two
    marked numbers. A network must carry the first number across at least T/2 steps.
    """
    if seq_len < 2:
        raise ValueError(f"The adding problem needs seq_len >= 2; got {seq_len}")
    rng = np.random.default_rng(seed)
    values_NxT = rng.uniform(size=(num_examples, seq_len)).astype(np.float32)
    half = seq_len // 2
    first_N = rng.integers(0, half, size=num_examples)
    second_N = rng.integers(half, seq_len, size=num_examples)
    markers_NxT = np.zeros_like(values_NxT)
    rows = np.arange(num_examples)
    markers_NxT[rows, first_N] = 1.0
    markers_NxT[rows, second_N] = 1.0
    return {
        "sequence": np.stack([values_NxT, markers_NxT], axis=-1),
        "target": values_NxT[rows, first_N] + values_NxT[rows, second_N],
    }


def load_adding_problem(
    *,
    seq_len: int = 100,
    num_train: int = 20_000,
    num_eval: int = 2_000,
    data_seed: int = 0,
    data_dir: str | None = None,
    download: bool = True,
    **batching,
) -> Dataset:
    """The adding problem with sequences of `seq_len` steps, generated in memory.

    The examples depend only on `data_seed` (train and eval drawn from disjoint streams);
    `batching` as for `jdl.data.from_arrays` (batch sizes, shuffle seed, process).
    """
    del data_dir, download  # Generated: nothing to read or fetch.
    train = adding_problem_arrays(num_train, seq_len, seed=2 * data_seed)
    eval_split = adding_problem_arrays(num_eval, seq_len, seed=2 * data_seed + 1)
    info = DatasetInfo(
        name=f"adding_problem_T{seq_len}",
        input_shape=(seq_len, 2),
        num_classes=0,  # regression: one float target per sequence
        num_train=num_train,
        num_eval=num_eval,
        input_key="sequence",
    )
    return ArrayDataset(info, train, eval_split, **batching)


def rows_as_steps(batch: Batch) -> Batch:
    """Images [B, H, W, C] -> `sequence` [B, H, W*C]: each image row is one time step."""
    batch = dict(batch)
    image = batch.pop("image")
    batch["sequence"] = image.reshape(image.shape[0], image.shape[1], -1)
    return batch


class RowSequences(Dataset):
    """An image dataset read as sequences of rows (sequential MNIST: 28 steps of 28 pixels).

    Wraps another `Dataset` and reshapes its batches; batching, shuffling and process shards
    are the wrapped dataset's.
    """

    def __init__(self, images: Dataset):
        h, w, c = images.info.input_shape
        info = DatasetInfo(
            name=f"seq_{images.info.name}",
            input_shape=(h, w * c),
            num_classes=images.info.num_classes,
            num_train=images.info.num_train,
            num_eval=images.info.num_eval,
            input_key="sequence",
        )
        super().__init__(
            info,
            batch_size=images.batch_size,
            eval_batch_size=images.eval_batch_size,
            seed=images.seed,
            process_index=images.process_index,
            process_count=images.process_count,
        )
        self._images = images

    def _train_batches(self, epoch: int, start_step: int) -> Iterator[Batch]:
        return map(rows_as_steps, self._images.train_batches(epoch, start_step))

    def _unpadded_eval_batches(self) -> Iterator[Batch]:
        return map(rows_as_steps, self._images._unpadded_eval_batches())

    def train_arrays(self) -> Batch:
        return rows_as_steps(self._images.train_arrays())


def load_row_sequences(image_loader, **kwargs) -> Dataset:
    """`image_loader(**kwargs)` (an image dataset loader) read row by row."""
    return RowSequences(image_loader(**kwargs))
