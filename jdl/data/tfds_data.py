"""tfds image-classification datasets (features `image` uint8 and `label`) as jdl `Dataset`s.

The only jdl module that imports TensorFlow, on first use (the import takes seconds), and
with accelerators hidden from it: TensorFlow only reads data, JAX owns the devices.
"""

import contextlib
import functools
import io
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from jdl.data.dataset import Batch, Dataset, DatasetInfo, epoch_seed
from jdl.data.embedded import EMBEDDED


class DatasetUnavailableError(RuntimeError):
    """A tfds dataset is not prepared in its data_dir and could not be downloaded."""


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
    _, tfds = _tf_and_tfds()
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if not download:
        reason = "it has not been prepared there and download=False"
        raise DatasetUnavailableError(_unavailable_message(name, builder.data_dir_root, reason))
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


def _image_and_label(example: dict) -> dict:
    return {"image": example["image"], "label": example["label"]}


def _model_inputs(batch: dict) -> dict:
    """uint8 images scaled to float32 in [0, 1]; int32 labels."""
    tf, _ = _tf_and_tfds()
    return {
        "image": tf.cast(batch["image"], tf.float32) / 255.0,
        "label": tf.cast(batch["label"], tf.int32),
    }


class TfdsDataset(Dataset):
    """A prepared tfds builder's `train` and `test` splits, this process's share of each.

    Each split is read once in file order and cached in memory as uint8, so every epoch's
    order depends only on the shuffle seed derived from (seed, epoch).
    """

    def __init__(self, builder, **batching):
        features = builder.info.features
        info = DatasetInfo(
            name=builder.name,
            input_shape=tuple(features["image"].shape),
            num_classes=features["label"].num_classes,
            # Counted from the readers rather than builder.info, so that they always match
            # what is read (also under tfds.testing.mock_data).
            num_train=int(builder.as_dataset(split="train").cardinality()),
            num_eval=int(builder.as_dataset(split="test").cardinality()),
            input_key="image",
        )
        super().__init__(info, **batching)
        self._train = self._read_local(builder, "train")
        self._eval = self._read_local(builder, "test")
        self._num_local_train = int(self._train.cardinality())

    def _read_local(self, builder, split: str):
        """This process's part of `split` (as `tfds.split_for_jax_process` cuts), cached."""
        _, tfds = _tf_and_tfds()
        local_split = tfds.split_for_jax_process(
            split, process_index=self.process_index, process_count=self.process_count
        )
        return (
            builder.as_dataset(
                split=local_split,
                shuffle_files=False,
                read_config=tfds.ReadConfig(try_autocache=False),
            )
            .map(_image_and_label)
            .cache()
        )

    def _train_batches(self, epoch: int, start_step: int) -> Iterator[Batch]:
        tf, tfds = _tf_and_tfds()
        batches = (
            self._train.shuffle(
                self._num_local_train,
                seed=epoch_seed(self.seed, epoch),
                reshuffle_each_iteration=False,
            )
            .batch(self.local_batch_size, drop_remainder=True)
            .take(self.steps_per_epoch)
            .skip(start_step)
            .map(_model_inputs)
            .prefetch(tf.data.AUTOTUNE)
        )
        return iter(tfds.as_numpy(batches))

    def _unpadded_eval_batches(self) -> Iterator[Batch]:
        tf, tfds = _tf_and_tfds()
        batches = (
            self._eval.batch(self.local_eval_batch_size)
            .map(_model_inputs)
            .prefetch(tf.data.AUTOTUNE)
        )
        return iter(tfds.as_numpy(batches))

    def train_arrays(self) -> Batch:
        _, tfds = _tf_and_tfds()
        whole = self._train.batch(self._num_local_train).map(_model_inputs)
        return tfds.as_numpy(whole.get_single_element())


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
