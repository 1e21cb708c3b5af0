"""Random translation: a pure, per-example shift of the image content."""

import jax
import numpy as np
import pytest

from jdl.augment import random_translate


def dot_images(batch_size=512, size=12):
    """Black images with one bright pixel at the centre, so a shift is easy to read off."""
    images = np.zeros((batch_size, size, size, 1), np.float32)
    images[:, size // 2, size // 2, 0] = 1.0
    return images


def dot_positions(images):
    flat = images.reshape(images.shape[0], -1).argmax(axis=1)
    return np.stack(np.unravel_index(flat, images.shape[1:3]), axis=1)


@pytest.mark.parametrize("max_shift", [1, 2])
def test_each_image_moves_by_its_own_offset_within_the_bound(max_shift):
    images = dot_images()
    shifted = np.asarray(random_translate(jax.random.key(0), images, max_shift))
    offsets = dot_positions(shifted) - dot_positions(images)
    assert np.abs(offsets).max() == max_shift  # the bound is reached, never passed
    assert len({tuple(o) for o in offsets}) == (2 * max_shift + 1) ** 2  # all offsets occur
    np.testing.assert_allclose(shifted.sum(axis=(1, 2, 3)), 1.0)  # content kept, zero fill


def test_translation_is_a_function_of_the_key():
    images = dot_images()
    first = random_translate(jax.random.key(3), images, 2)
    np.testing.assert_array_equal(first, random_translate(jax.random.key(3), images, 2))
    assert not np.array_equal(first, random_translate(jax.random.key(4), images, 2))


def test_zero_shift_is_the_identity():
    images = dot_images()
    assert random_translate(jax.random.key(0), images, 0) is images
