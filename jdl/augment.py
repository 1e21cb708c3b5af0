"""Pure, on-device data augmentation: a function of a key and a batch."""

import jax
import jax.numpy as jnp


def random_translate(rng: jax.Array, images_BxHxWxC: jax.Array, max_shift: int) -> jax.Array:
    """Shifts each image by its own random offset in [-max_shift, max_shift] pixels per axis.

    Uncovered pixels become 0 (the background of MNIST-style images).
    """
    if max_shift <= 0:
        return images_BxHxWxC
    b, h, w, c = images_BxHxWxC.shape
    padded = jnp.pad(images_BxHxWxC, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)))
    offsets_Bx2 = jax.random.randint(rng, (b, 2), 0, 2 * max_shift + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets_Bx2)
