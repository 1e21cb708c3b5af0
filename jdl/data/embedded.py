"""Datasets shipped with scikit-learn: real data that needs no download.

Both have fixed, stratified train/eval splits (`train_test_split(..., random_state=0)`), so
results are comparable across runs and machines. scikit-learn is imported inside the
functions because importing it takes about a second that `import jdl.data` should not pay.
"""

import numpy as np

from jdl.data.arrays import from_arrays
from jdl.data.dataset import Dataset

Splits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

DIGITS_NUM_EVAL = 360  # of 1,797: 1,437 train / 360 eval
BREAST_CANCER_NUM_EVAL = 114  # of 569: 455 train / 114 eval


def _stratified_split(x: np.ndarray, y: np.ndarray, num_eval: int) -> Splits:
    """(x_train, y_train, x_eval, y_eval): the fixed split, class ratios kept in both parts."""
    from sklearn.model_selection import train_test_split

    x_train, x_eval, y_train, y_eval = train_test_split(
        x, y, test_size=num_eval, stratify=y, random_state=0
    )
    return x_train, y_train, x_eval, y_eval


def digits_splits() -> Splits:
    """scikit-learn's 1,797 handwritten 8x8 digits as (N, 8, 8, 1) images in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    return _stratified_split(images, digits.target, DIGITS_NUM_EVAL)


def breast_cancer_splits() -> Splits:
    """569 tumours x 30 features, standardised with the train split's mean and std."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x_train, y_train, x_eval, y_eval = _stratified_split(
        data.data, data.target, BREAST_CANCER_NUM_EVAL
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    return (x_train - mean) / std, y_train, (x_eval - mean) / std, y_eval


EMBEDDED = {"digits": (digits_splits, 10), "breast_cancer": (breast_cancer_splits, 2)}


def load_embedded(
    name: str, *, data_dir: str | None = None, download: bool = True, **batching
) -> Dataset:
    """The embedded dataset `name` (a key of `EMBEDDED`); `batching` as for `from_arrays`."""
    del data_dir, download  # Embedded: nothing to read or fetch.
    splits, num_classes = EMBEDDED[name]
    return from_arrays(*splits(), name=name, num_classes=num_classes, **batching)
