"""Tests for jdl.data: batching contracts on in-memory and real tfds data, embedded datasets,
validation, and the tfds load / prepare / unavailable paths (all offline)."""

import functools
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from data_helpers import (
    EVAL_IDS,
    TRAIN_IDS,
    batch_ids,
    id_arrays_dataset,
    id_images,
    labels_of,
    write_tiny_images_source,
)

from jdl.data import (
    DATASETS,
    DatasetInfo,
    DatasetUnavailableError,
    from_arrays,
    load_dataset,
    pad_batch,
)
from jdl.data.dataset import shard_bounds
from jdl.data.embedded import digits_splits
from jdl.data.tfds_data import load_tfds, prepared_builder

ROOT = Path(__file__).resolve().parent.parent
BATCHING = {"batch_size": 8, "eval_batch_size": 5, "seed": 0}  # 45 train -> 5 steps; 17 eval


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory) -> str:
    """A data_dir holding the prepared `jdl_tiny_images` tfds dataset."""
    data_dir = tmp_path_factory.mktemp("tfds")
    write_tiny_images_source(data_dir)
    prepared_builder("jdl_tiny_images", str(data_dir))
    return str(data_dir)


@pytest.fixture(params=["arrays", "tfds"])
def make_id_dataset(request):
    """Builds the id-carrying dataset, in memory or read from a prepared tfds directory."""
    if request.param == "arrays":
        return id_arrays_dataset
    data_dir = request.getfixturevalue("tiny_tfds_dir")
    return functools.partial(load_tfds, "jdl_tiny_images", data_dir=data_dir)


def epoch_ids(dataset, epoch: int, start_step: int = 0) -> list[list[int]]:
    return [batch_ids(batch).tolist() for batch in dataset.train_batches(epoch, start_step)]


def real_examples(batches: list[dict]) -> dict:
    """The unmasked examples of padded eval batches, concatenated."""
    keep = np.concatenate([batch["mask"] for batch in batches]) == 1
    return {
        key: np.concatenate([batch[key] for batch in batches])[keep]
        for key in batches[0]
        if key != "mask"
    }


# --- Batching contracts, checked on both in-memory and tfds data ---------------------------


def test_train_batches_depend_only_on_seed_and_epoch(make_id_dataset):
    dataset = make_id_dataset(**BATCHING)
    key = dataset.info.input_key
    batches = list(dataset.train_batches(0))
    assert dataset.steps_per_epoch == 45 // 8 == len(batches)
    for batch in batches:
        assert set(batch) == {key, "label"}
        assert batch[key].shape == (8, *dataset.info.input_shape)
        assert batch[key].dtype == np.float32 and batch["label"].dtype == np.int32
        np.testing.assert_array_equal(batch["label"], labels_of(batch_ids(batch)))
    ids = np.concatenate([batch_ids(batch) for batch in batches])
    assert len(np.unique(ids)) == len(ids) == 40  # each example at most once
    assert set(ids) <= set(TRAIN_IDS)

    assert epoch_ids(make_id_dataset(**BATCHING), 0) == epoch_ids(dataset, 0)
    assert epoch_ids(dataset, 1) != epoch_ids(dataset, 0)
    assert epoch_ids(make_id_dataset(**{**BATCHING, "seed": 1}), 0) != epoch_ids(dataset, 0)


def test_start_step_resumes_the_tail_of_the_same_epoch(make_id_dataset):
    dataset = make_id_dataset(**BATCHING)
    assert epoch_ids(dataset, 2, start_step=3) == epoch_ids(dataset, 2)[3:]
    assert epoch_ids(dataset, 2, start_step=5) == []
    with pytest.raises(ValueError, match="start_step 6"):
        dataset.train_batches(2, start_step=6)


def test_eval_batches_cover_the_split_once_with_a_mask(make_id_dataset):
    dataset = make_id_dataset(**BATCHING)
    key = dataset.info.input_key
    batches = list(dataset.eval_batches())
    assert len(batches) == 4  # ceil(17 / 5)
    assert all(len(batch["label"]) == len(batch[key]) == 5 for batch in batches)
    assert all(batch["mask"].dtype == np.float32 for batch in batches)
    mask = np.concatenate([batch["mask"] for batch in batches])
    np.testing.assert_array_equal(mask, [1] * 17 + [0] * 3)
    last = batches[-1]
    assert not last[key][2:].any() and not last["label"][2:].any()  # padding is zeros

    real = real_examples(batches)
    np.testing.assert_array_equal(np.sort(batch_ids(real)), EVAL_IDS)
    np.testing.assert_array_equal(real["label"], labels_of(batch_ids(real)))
    assert batch_ids(real_examples(list(dataset.eval_batches()))).tolist() == (
        batch_ids(real).tolist()
    )


def test_processes_split_the_data_between_them(make_id_dataset):
    shards = [
        make_id_dataset(**{**BATCHING, "eval_batch_size": 4}, process_index=index, process_count=2)
        for index in range(2)
    ]
    # 17 eval examples: shards of 9 and 8, so 5 and 4 batches of 2; the second process adds
    # an all-padding batch to stay in step with the first.
    eval_batches = [list(shard.eval_batches()) for shard in shards]
    assert len(eval_batches[0]) == len(eval_batches[1]) == 5
    assert all(len(batch["label"]) == 2 for batches in eval_batches for batch in batches)
    assert not eval_batches[1][-1]["mask"].any()
    eval_ids = np.concatenate([batch_ids(real_examples(batches)) for batches in eval_batches])
    np.testing.assert_array_equal(np.sort(eval_ids), EVAL_IDS)

    for shard in shards:
        batches = list(shard.train_batches(0))
        assert len(batches) == shard.steps_per_epoch == 5
        assert all(len(batch["label"]) == 4 for batch in batches)

    # Batch size 2: the 23-example shard holds 23 local batches, but an epoch is 45 // 2.
    for index in range(2):
        shard = make_id_dataset(
            **{**BATCHING, "batch_size": 2, "eval_batch_size": 4},
            process_index=index,
            process_count=2,
        )
        assert len(list(shard.train_batches(0))) == 22


TWO_PROCESS_BATCHING = {**BATCHING, "eval_batch_size": 4}


def test_tfds_processes_read_disjoint_train_shards(tiny_tfds_dir):
    shard_ids = []
    for index in range(2):
        shard = load_tfds(
            "jdl_tiny_images",
            data_dir=tiny_tfds_dir,
            **TWO_PROCESS_BATCHING,
            process_index=index,
            process_count=2,
        )
        local_ids = batch_ids(shard.train_arrays())
        start, end = shard_bounds(45, index, 2)
        assert len(local_ids) == end - start  # the same cut as tfds.even_splits
        batches = list(shard.train_batches(0))
        assert set(np.concatenate([batch_ids(b) for b in batches])) <= set(local_ids)
        shard_ids.append(local_ids)
    np.testing.assert_array_equal(np.sort(np.concatenate(shard_ids)), TRAIN_IDS)


def test_array_processes_take_their_slice_of_the_single_process_batches():
    whole = epoch_ids(id_arrays_dataset(**TWO_PROCESS_BATCHING), epoch=1)
    slices = [
        epoch_ids(
            id_arrays_dataset(**TWO_PROCESS_BATCHING, process_index=i, process_count=2), epoch=1
        )
        for i in range(2)
    ]
    assert [a + b for a, b in zip(*slices, strict=True)] == whole


def test_train_arrays_hold_the_whole_local_split(make_id_dataset):
    dataset = make_id_dataset(**BATCHING)
    arrays = dataset.train_arrays()
    key = dataset.info.input_key
    assert arrays[key].dtype == np.float32 and arrays["label"].dtype == np.int32
    np.testing.assert_array_equal(np.sort(batch_ids(arrays)), TRAIN_IDS)
    np.testing.assert_array_equal(arrays["label"], labels_of(batch_ids(arrays)))


# --- Embedded datasets -----------------------------------------------------------------------


def test_digits_is_a_fixed_stratified_split_of_real_images():
    dataset = load_dataset("digits", batch_size=32, eval_batch_size=100, seed=0)
    assert dataset.info == DatasetInfo("digits", (8, 8, 1), 10, 1437, 360, "image")
    train = dataset.train_arrays()
    assert train["image"].shape == (1437, 8, 8, 1) and train["image"].dtype == np.float32
    assert train["image"].min() == 0.0 and train["image"].max() == 1.0
    evaluation = real_examples(list(dataset.eval_batches()))
    assert len(evaluation["label"]) == 360
    eval_counts = np.bincount(evaluation["label"], minlength=10)
    assert np.all(np.abs(eval_counts - 36) <= 1)  # stratified: ~10% of each class
    assert np.all(np.bincount(train["label"], minlength=10) > 0)
    for first, second in zip(digits_splits(), digits_splits(), strict=True):
        np.testing.assert_array_equal(first, second)


def test_breast_cancer_is_standardised_with_train_statistics():
    dataset = load_dataset("breast_cancer", batch_size=32, eval_batch_size=50, seed=0)
    assert dataset.info == DatasetInfo("breast_cancer", (30,), 2, 455, 114, "features")
    train = dataset.train_arrays()
    np.testing.assert_allclose(train["features"].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train["features"].std(axis=0), 1.0, atol=1e-5)
    evaluation = real_examples(list(dataset.eval_batches()))
    assert set(evaluation["label"]) == set(train["label"]) == {0, 1}


# --- from_arrays and helpers -----------------------------------------------------------------


def arrays_kwargs(**overrides) -> dict:
    kwargs = {
        "x_train": np.zeros((10, 3)),
        "y_train": np.arange(10) % 2,
        "x_eval": np.zeros((4, 3)),
        "y_eval": np.arange(4) % 2,
        "batch_size": 4,
        "eval_batch_size": 4,
        "seed": 0,
    }
    return {**kwargs, **overrides}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"y_train": np.zeros(9, int)}, "x_train has 10 examples but y_train has 9"),
        ({"y_eval": np.array([0, -1, 0, 1])}, "y_eval has negative labels"),
        ({"y_train": np.zeros(10)}, "y_train must be a 1-D array of integer class labels"),
        ({"x_eval": np.array([[0, 0, np.nan]] * 4)}, "x_eval has NaN or Inf"),
        ({"x_train": np.full((10, 3), np.inf)}, "x_train has NaN or Inf"),
        ({"x_eval": np.zeros((0, 3)), "y_eval": np.zeros(0, int)}, "eval split is empty"),
        ({"x_eval": np.zeros((4, 2))}, "eval inputs have"),
        ({"num_classes": 1}, "Label 1 is out of range for 1 classes"),
        ({"batch_size": 3, "process_count": 2, "process_index": 0}, "multiple of the process"),
        ({"eval_batch_size": 0}, "eval_batch_size 0 must be a positive multiple"),
        ({"batch_size": 11}, "batch_size 11 is larger than the 10 training examples"),
        ({"process_index": 2, "process_count": 2}, "process_index 2 is not in"),
    ],
)
def test_from_arrays_rejects_bad_input(overrides, message):
    with pytest.raises(ValueError, match=message):
        from_arrays(**arrays_kwargs(**overrides))


def test_from_arrays_defaults():
    features = from_arrays(**arrays_kwargs())
    assert features.info == DatasetInfo("arrays", (3,), 2, 10, 4, "features")
    images = from_arrays(
        **arrays_kwargs(
            x_train=np.zeros((10, 2, 2, 1), np.uint8), x_eval=np.zeros((4, 2, 2, 1), np.uint8)
        )
    )
    assert images.info.input_key == "image" and images.info.input_shape == (2, 2, 1)
    assert images.train_arrays()["image"].dtype == np.float32


def test_pad_batch_adds_zeros_and_a_mask():
    padded = pad_batch({"features": np.ones((2, 3), np.float32), "label": np.ones(2, np.int32)}, 4)
    np.testing.assert_array_equal(padded["mask"], [1, 1, 0, 0])
    np.testing.assert_array_equal(padded["features"][2:], 0)
    assert padded["label"].dtype == np.int32 and padded["mask"].dtype == np.float32
    with pytest.raises(ValueError, match="Cannot pad a batch of 2 examples to 1"):
        pad_batch({"label": np.ones(2)}, 1)


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError, match="Unknown dataset 'mnits'") as error:
        load_dataset("mnits", **BATCHING)
    assert all(name in str(error.value) for name in DATASETS)


# --- tfds: mock, prepare from local files, unavailable ---------------------------------------


def test_mnist_loads_under_tfds_mock_data():
    with tfds.testing.mock_data(num_examples=20):
        dataset = load_dataset("mnist", batch_size=8, eval_batch_size=6, seed=0)
        train = list(dataset.train_batches(0))
        evaluation = list(dataset.eval_batches())
        arrays = dataset.train_arrays()
    assert dataset.info == DatasetInfo("mnist", (28, 28, 1), 10, 20, 20, "image")
    assert len(train) == dataset.steps_per_epoch == 2
    for batch in train:
        assert batch["image"].shape == (8, 28, 28, 1) and batch["image"].dtype == np.float32
        assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
        assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(10))
    assert len(evaluation) == 4 and sum(batch["mask"].sum() for batch in evaluation) == 20
    assert arrays["image"].shape == (20, 28, 28, 1)


def test_prepares_a_tfds_dataset_from_local_files(tmp_path, monkeypatch):
    # The real download_and_prepare path (the one that needs importlib_resources), offline.
    write_tiny_images_source(tmp_path)
    monkeypatch.setitem(DATASETS, "tiny", functools.partial(load_tfds, "jdl_tiny_images"))
    kwargs = {**BATCHING, "data_dir": str(tmp_path)}
    with pytest.raises(DatasetUnavailableError, match="download=False"):
        load_dataset("tiny", download=False, **kwargs)

    load_dataset("tiny", **kwargs)
    assert tfds.builder("jdl_tiny_images", data_dir=str(tmp_path)).is_prepared()
    # Once prepared, the directory loads with downloads off, as on an offline machine.
    arrays = load_dataset("tiny", download=False, **kwargs).train_arrays()
    by_id = np.argsort(batch_ids(arrays))
    np.testing.assert_allclose(arrays["image"][by_id], id_images(TRAIN_IDS) / 255.0, rtol=1e-6)


def all_batches(dataset) -> list[dict]:
    return [*dataset.train_batches(1), *dataset.eval_batches()]


def test_decoded_splits_are_kept_and_reread_without_tensorflow(tmp_path):
    write_tiny_images_source(tmp_path)
    first = load_tfds("jdl_tiny_images", data_dir=str(tmp_path), **BATCHING)
    kept = sorted(tmp_path.rglob("jdl_arrays/*.npz"))
    assert [path.name for path in kept] == ["test.npz", "train.npz"]
    # A fresh process reads the kept arrays: the same batches, and TensorFlow never imported.
    script = (
        "import sys, pickle, data_helpers\n"
        "from jdl.data.tfds_data import load_tfds\n"
        f"dataset = load_tfds('jdl_tiny_images', data_dir={str(tmp_path)!r}, **{BATCHING!r})\n"
        "batches = [*dataset.train_batches(1), *dataset.eval_batches()]\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
        "sys.stdout.buffer.write(pickle.dumps((dataset.info, batches)))\n"
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, env=environment, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    info, batches = pickle.loads(done.stdout)
    assert info == first.info
    for got, expected in zip(batches, all_batches(first), strict=True):
        assert got.keys() == expected.keys()
        for key in got:
            np.testing.assert_array_equal(got[key], expected[key])


def test_kept_arrays_follow_their_source_files(tmp_path):
    write_tiny_images_source(tmp_path)
    expected = all_batches(load_tfds("jdl_tiny_images", data_dir=str(tmp_path), **BATCHING))
    train = next(tmp_path.rglob("jdl_arrays/train.npz"))
    # Arrays kept from other records (a re-prepared dataset) are not used, nor are broken ones.
    with np.load(train) as kept:
        arrays = {key: kept[key] for key in kept.files}
    np.savez(train, **{**arrays, "label": (arrays["label"] + 1) % 3})
    record = next(train.parent.parent.glob("jdl_tiny_images-train.tfrecord*"))
    os.utime(record, ns=(record.stat().st_atime_ns, record.stat().st_mtime_ns + 10**9))
    again = all_batches(load_tfds("jdl_tiny_images", data_dir=str(tmp_path), **BATCHING))
    train.write_bytes(b"not an npz")
    broken = all_batches(load_tfds("jdl_tiny_images", data_dir=str(tmp_path), **BATCHING))
    for batches in (again, broken):
        for got, want in zip(batches, expected, strict=True):
            np.testing.assert_array_equal(got["label"], want["label"])
    with np.load(train) as kept:  # kept anew from the records
        np.testing.assert_array_equal(np.sort(kept["label"]), np.sort(arrays["label"]))


def test_missing_tfds_dataset_explains_what_to_do(tmp_path):
    with pytest.raises(DatasetUnavailableError) as error:
        load_dataset("mnist", **BATCHING, data_dir=str(tmp_path), download=False)
    message = str(error.value)
    assert isinstance(error.value, RuntimeError)
    for expected in (
        "'mnist'",
        str(tmp_path),
        "tfds.builder('mnist'",
        "'digits'",
        "'breast_cancer'",
    ):
        assert expected in message


def test_offline_download_fails_with_the_reason(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise socket.gaierror("offline")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(DatasetUnavailableError, match="download_and_prepare failed") as error:
        load_dataset("mnist", **BATCHING, data_dir=str(tmp_path), download=True)
    assert str(tmp_path) in str(error.value) and "'digits'" in str(error.value)
