"""tfds image-classification datasets (features `image` uint8 and `label`) as jdl `Dataset`s.

The only jdl module that imports TensorFlow, when it first decodes a split or prepares a
dataset (the import takes seconds), and with accelerators hidden from it: TensorFlow only
reads data, JAX owns the devices.
"""

import contextlib
import functools
import io
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jdl.data.dataset import (
    Batch,
    Dataset,
    DatasetInfo,
    epoch_seed,
    num_examples,
    resolve_process,
)
from jdl.data.embedded import EMBEDDED


class DatasetUnavailableError(RuntimeError):
    """A tfds dataset is not prepared in its data_dir and could not be downloaded."""


def _tfds():
    """tensorflow_datasets alone: builders and their metadata do not import TensorFlow."""
    import tensorflow_datasets as tfds

    return tfds


@functools.cache
def _tf_and_tfds():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.config.set_visible_devices([], "GPU")
    return tf, tfds


def _unavailable_message(name: str, data_dir_root, reason: str) -> str:
    embedded = " or ".join(repr(key) for key in EMBEDDED)
    return (
        f"tfds dataset {name!r} is not available in data_dir {str(data_dir_root)!r}: {reason}. "
        f"Prepare it once on a machine with internet access, with "
        f'`python -c "import tensorflow_datasets as tfds; '
        f'tfds.builder({name!r}, data_dir={str(data_dir_root)!r}).download_and_prepare()"`, '
        f"copy that directory here "
        f"and pass it as data_dir. Or use a dataset that needs no download: {embedded}."
    )


DOWNLOAD_RETRIES = 3  # tfds's default of 10, with backoff, keeps an offline machine ~3 min


@contextlib.contextmanager
def _few_download_retries():
    """Lowers tfds's per-request download retries, so a machine offline fails in seconds."""
    from tensorflow_datasets.core.download import downloader

    default = downloader.MAX_RETRIES
    downloader.MAX_RETRIES = min(default, DOWNLOAD_RETRIES)
    try:
        yield
    finally:
        downloader.MAX_RETRIES = default


@contextlib.contextmanager
def _quiet():
    """Holds back tfds's progress bars and urllib3's retry warnings: offline, they are
    dozens of lines ahead of the one message that says what to do."""
    retries = logging.getLogger("urllib3")
    level = retries.level
    retries.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        retries.setLevel(level)


@contextlib.contextmanager
def _removed_if_failed(data_dir_root):
    """Removes what a failed download added to `data_dir_root` and its `downloads` folder
    (temporary files, an incomplete dataset folder); what was there before stays."""
    folders = [Path(data_dir_root), Path(data_dir_root) / "downloads"]
    before = {folder: set(folder.iterdir()) if folder.is_dir() else None for folder in folders}
    try:
        yield
    except Exception:
        for folder in reversed(folders):
            if before[folder] is None:
                shutil.rmtree(folder, ignore_errors=True)
            elif folder.is_dir():
                for path in set(folder.iterdir()) - before[folder]:
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
        raise


def prepared_builder(name: str, data_dir: str | None = None, download: bool = True):
    """The tfds builder of `name` in `data_dir` (tfds's default if None), prepared.

    Prepares it (download_and_prepare) when it is missing and `download` is true; raises
    `DatasetUnavailableError`, saying what to do, when that is not allowed or fails.
    """
    builder = _tfds().builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if not download:
        reason = "it has not been prepared there and download=False"
        raise DatasetUnavailableError(_unavailable_message(name, builder.data_dir_root, reason))
    _tf_and_tfds()  # TensorFlow, with the accelerators hidden from it, before tfds loads it
    print(f"Downloading and preparing tfds dataset {name!r} in {str(builder.data_dir_root)!r}...")
    try:
        with _few_download_retries(), _removed_if_failed(builder.data_dir_root), _quiet():
            builder.download_and_prepare()
    except Exception as err:
        reason = f"download_and_prepare failed with {type(err).__name__}: {err}"
        raise DatasetUnavailableError(
            _unavailable_message(name, builder.data_dir_root, reason)
        ) from err
    return builder


ARRAYS_FOLDER = "jdl_arrays"  # beside a prepared dataset's files: its splits, decoded
READ_BATCH = 4096  # examples per decoded batch while a split is read


class TfdsDataset(Dataset):
    """A prepared tfds builder's `train` and `test` splits, this process's share of each,
    held in memory as uint8 arrays and scaled batch by batch.

    Each split is decoded once and kept beside the dataset's files (`jdl_arrays/`), so later
    runs read plain arrays: no TensorFlow import, no tfds reader, seconds less per process.
    A kept split is used only while the files it was decoded from are unchanged. Every
    epoch's order depends only on the shuffle seed derived from (seed, epoch).
    """

    def __init__(self, builder, **batching):
        process = resolve_process(batching.get("process_index"), batching.get("process_count"))
        self._train, num_train = split_arrays(builder, "train", *process)
        self._eval, num_eval = split_arrays(builder, "test", *process)
        features = builder.info.features
        info = DatasetInfo(
            name=builder.name,
            input_shape=tuple(features["image"].shape),
            num_classes=features["label"].num_classes,
            num_train=num_train,
            num_eval=num_eval,
            input_key="image",
        )
        super().__init__(info, **batching)

    def _train_batches(self, epoch: int, start_step: int) -> Iterator[Batch]:
        rng = np.random.default_rng(epoch_seed(self.seed, epoch))
        order = rng.permutation(num_examples(self._train))
        size = self.local_batch_size
        for step in range(start_step, self.steps_per_epoch):
            yield scaled(self._train, order[step * size : (step + 1) * size])

    def _unpadded_eval_batches(self) -> Iterator[Batch]:
        size = self.local_eval_batch_size
        for start in range(0, num_examples(self._eval), size):
            yield scaled(self._eval, slice(start, start + size))

    def train_arrays(self) -> Batch:
        return scaled(self._train, slice(None))


def scaled(split: Batch, index) -> Batch:
    """Examples `index` of a uint8 split as model inputs: images float32 in [0, 1]."""
    return {
        "image": np.divide(split["image"][index], 255, dtype=np.float32),
        "label": split["label"][index].astype(np.int32),
    }


def split_arrays(builder, split: str, process_index: int, process_count: int):
    """(This process's part of `split` as uint8 arrays, the whole split's size): kept
    arrays if their source files are unchanged, else read with tfds and kept."""
    kept = _kept_path(builder, split, process_index, process_count)
    sources = _source_files(builder)
    arrays = _load_kept(kept, sources)
    if arrays is None:
        part = _tfds().split_for_jax_process(
            split, process_index=process_index, process_count=process_count
        )
        arrays = _read(builder, part)
        arrays["split_size"] = np.array(int(builder.as_dataset(split=split).cardinality()))
        if sources:  # a real prepared dataset (tfds mock data has no files to follow)
            _keep(kept, arrays, sources)
    size = int(arrays.pop("split_size"))
    return arrays, size


def _kept_path(builder, split: str, process_index: int, process_count: int) -> Path:
    part = "" if process_count == 1 else f"-{process_index}of{process_count}"
    return Path(builder.data_dir) / ARRAYS_FOLDER / f"{split}{part}.npz"


def _source_files(builder) -> list:
    """[name, size, mtime] of the dataset's record files: what kept arrays must match."""
    files = Path(builder.data_dir).glob(f"{builder.name}-*")
    return sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file())


def _load_kept(path: Path, sources: list) -> dict | None:
    """The arrays kept at `path` if they were decoded from `sources`, else None."""
    if not sources or not path.is_file():
        return None
    try:
        with np.load(path) as kept:
            if json.loads(str(kept["sources"])) != sources:
                return None
            return {key: kept[key] for key in ("image", "label", "split_size")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable: read the dataset again and keep it anew


def _keep(path: Path, arrays: dict, sources: list) -> None:
    """Writes `arrays` to `path` atomically; a folder that cannot be written is skipped."""
    try:
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as file:
            np.savez(file, sources=np.array(json.dumps(sources)), **arrays)
        os.replace(partial, path)
    except OSError:
        pass  # kept arrays only save time


def _read(builder, split) -> dict:
    """`split` decoded by tfds into uint8 images and labels."""
    _, tfds = _tf_and_tfds()
    batches = builder.as_dataset(
        split=split,
        batch_size=READ_BATCH,
        shuffle_files=False,
        read_config=tfds.ReadConfig(try_autocache=False),
    )
    parts = [(batch["image"], batch["label"]) for batch in tfds.as_numpy(batches)]
    images, labels = (np.concatenate(column) for column in zip(*parts, strict=True))
    return {"image": images, "label": labels}


def load_tfds(
    tfds_name: str,
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    data_dir: str | None = None,
    download: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Dataset:
    """The tfds dataset `tfds_name` from `data_dir`, prepared first if needed and allowed."""
    return TfdsDataset(
        prepared_builder(tfds_name, data_dir, download),
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
