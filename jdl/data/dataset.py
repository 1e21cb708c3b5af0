"""What every jdl dataset offers: its info, per-process train and eval batches, and padding.

A `Dataset` serves one process's share of each global batch. Subclasses say how to read
their examples (`_train_batches`, `_unpadded_eval_batches`, `train_arrays`); this base class
owns the batching rules shared by all of them, so that in-memory and tfds data behave alike:
equal-size train batches with the last partial one dropped, and eval batches padded with a
`mask` so that every eval example counts exactly once on every process count.
"""

import abc
import dataclasses
from collections.abc import Iterator

import jax
import numpy as np

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: what a model and the loop need to size themselves."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    num_train: int
    num_eval: int
    input_key: str  # "image" or "features": the batch key of the model input


def shard_bounds(num_examples: int, index: int, count: int) -> tuple[int, int]:
    """[start, end) of shard `index` of `count` contiguous shards, as `tfds.even_splits` cuts.

    Shard sizes differ by at most one; the first `num_examples % count` shards get the extra.
    """
    size, extra = divmod(num_examples, count)
    start = index * size + min(index, extra)
    return start, start + size + (index < extra)


def epoch_seed(seed: int, epoch: int) -> int:
    """A shuffle seed that depends only on (seed, epoch), so any run replays any epoch."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def num_examples(batch: Batch) -> int:
    """Examples in a batch: the leading size of its arrays (labels, targets or tokens)."""
    return len(next(iter(batch.values())))


def pad_batch(batch: Batch, size: int) -> Batch:
    """`batch` padded with zeros to `size` examples, plus a float32 `mask` (1 real, 0 pad).

    Every entry is padded along its first axis, whatever its shape and dtype (int labels [B],
    float targets [B, K], tokens [B, T], lengths [B]).
    """
    num_real = num_examples(batch)
    if num_real > size:
        raise ValueError(f"Cannot pad a batch of {num_real} examples to {size}")
    padded = {
        key: np.concatenate([value, np.zeros((size - num_real, *value.shape[1:]), value.dtype)])
        for key, value in batch.items()
    }
    padded["mask"] = (np.arange(size) < num_real).astype(np.float32)
    return padded


def resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(index, count) of this process, defaulting to JAX's view of the job."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} is not in [0, process_count={count})")
    return index, count


class Dataset(abc.ABC):
    """One process's view of a classification dataset, batched for training and evaluation."""

    def __init__(
        self,
        info: DatasetInfo,
        *,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        self.info = info
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.process_index, self.process_count = resolve_process(process_index, process_count)
        for label, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if size <= 0 or size % self.process_count:
                raise ValueError(
                    f"{label} {size} must be a positive multiple of the process count "
                    f"{self.process_count}"
                )
        if batch_size > info.num_train:
            raise ValueError(
                f"batch_size {batch_size} is larger than the {info.num_train} training examples "
                f"of {info.name!r}"
            )

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch; the last partial batch is dropped."""
        return self.info.num_train // self.batch_size

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count

    @property
    def local_eval_batch_size(self) -> int:
        return self.eval_batch_size // self.process_count

    @property
    def num_eval_batches(self) -> int:
        """Eval batches on every process: enough for the largest process shard."""
        largest_shard = -(-self.info.num_eval // self.process_count)
        return max(1, -(-largest_shard // self.local_eval_batch_size))

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """This process's share of the global batches of `epoch`, from `start_step` on.

        The order depends only on (seed, epoch), so skipping `start_step` batches resumes an
        interrupted epoch exactly.
        """
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is not in [0, {self.steps_per_epoch}]")
        return self._train_batches(epoch, start_step)

    def eval_batches(self) -> Iterator[Batch]:
        """This process's eval shard in order, in full batches with a `mask` for padding.

        Every process yields `num_eval_batches` batches, padding with all-masked batches
        where its shard is shorter, so collective eval steps stay in lockstep.
        """
        size = self.local_eval_batch_size
        count = 0
        # All-masked batches copy the entries of a real one; an empty shard falls back to
        # a classification batch (input and int label).
        empty = {
            self.info.input_key: np.zeros((0, *self.info.input_shape), np.float32),
            "label": np.zeros((0,), np.int32),
        }
        for batch in self._unpadded_eval_batches():
            yield pad_batch(batch, size)
            empty = {key: value[:0] for key, value in batch.items()}
            count += 1
        for _ in range(count, self.num_eval_batches):
            yield pad_batch(empty, size)

    @abc.abstractmethod
    def _train_batches(self, epoch: int, start_step: int) -> Iterator[Batch]:
        """Exactly `steps_per_epoch - start_step` local train batches."""

    @abc.abstractmethod
    def _unpadded_eval_batches(self) -> Iterator[Batch]:
        """The local eval shard in order, in local eval batches; the last may be short."""

    @abc.abstractmethod
    def train_arrays(self) -> Batch:
        """This process's whole train shard in memory (input float32, label int32)."""
