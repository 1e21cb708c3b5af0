"""Test data whose examples carry their own id, and a tfds builder that prepares it offline.

Every example's id can be read back from a batch (`batch_ids`), so tests can check which
examples a pipeline yields, how often, and whether labels stayed with their inputs.
"""

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jdl.data import Dataset, from_arrays

NUM_CLASSES = 3
TRAIN_IDS = np.arange(45)
EVAL_IDS = np.arange(100, 117)  # 17 examples: most batch sizes leave a partial batch
IMAGE_SHAPE = (6, 6, 1)


def labels_of(ids: np.ndarray) -> np.ndarray:
    return (ids % NUM_CLASSES).astype(np.int32)


def id_images(ids: np.ndarray) -> np.ndarray:
    """uint8 images with random pixels, except the first pixel, which holds the id."""
    images = np.random.default_rng(int(ids[0])).integers(
        0, 256, (len(ids), *IMAGE_SHAPE), dtype=np.uint8
    )
    images[:, 0, 0, 0] = ids
    return images


def batch_ids(batch: dict) -> np.ndarray:
    """The ids of a batch's examples: feature 0, or the first pixel of an image in [0, 1]."""
    if "features" in batch:
        return batch["features"][:, 0].astype(np.int64)
    return np.rint(batch["image"][:, 0, 0, 0] * 255).astype(np.int64)


def id_arrays_dataset(**batching) -> Dataset:
    """An in-memory dataset whose features are (id, -id)."""

    def features(ids):
        return np.stack([ids, -ids], axis=1)

    return from_arrays(
        features(TRAIN_IDS),
        labels_of(TRAIN_IDS),
        features(EVAL_IDS),
        labels_of(EVAL_IDS),
        num_classes=NUM_CLASSES,
        **batching,
    )


SOURCE_FILE = "jdl_tiny_images.npz"


def write_tiny_images_source(data_dir: Path) -> None:
    """The raw files that `JdlTinyImages` prepares from, in tfds's default manual dir."""
    manual_dir = data_dir / "downloads" / "manual"
    manual_dir.mkdir(parents=True)
    np.savez(
        manual_dir / SOURCE_FILE,
        train_images=id_images(TRAIN_IDS),
        train_labels=labels_of(TRAIN_IDS),
        test_images=id_images(EVAL_IDS),
        test_labels=labels_of(EVAL_IDS),
    )


class JdlTinyImages(tfds.core.GeneratorBasedBuilder):
    """Id-carrying images prepared from a local .npz, as a real tfds dataset on disk."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place {SOURCE_FILE} in the manual dir."

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        source = np.load(dl_manager.manual_dir / SOURCE_FILE)
        return {
            split: self._generate_examples(source[f"{split}_images"], source[f"{split}_labels"])
            for split in ("train", "test")
        }

    def _generate_examples(self, images, labels):
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {"image": image, "label": label}
