"""Evaluating generators: image grids (PNG, GIF) and classifier-based quality metrics.

The metrics follow FID (Heusel et al., 2017) and the Inception score (Salimans et al.,
2016) with a jdl classifier trained on the same dataset in place of Inception-v3, whose
ImageNet features mean little for 8x8 or 28x28 grey digits: the Frechet distance between
Gaussians fitted to the classifier's hidden-layer features of real and generated images,
and exp E[KL(p(y|x) || p(y))] of its class probabilities. Numbers are comparable only for
the same classifier, layer and sample count (see README, "GANs").
"""

from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jdl.state import TrainState

MIN_CELL_PIXELS = 56  # small images are enlarged (nearest neighbour) to at least this size
FEATURE_LAYER = "Dense_0"  # the classifier's hidden Dense layer (pre-activation)


# --- image grids -------------------------------------------------------------------------
def image_grid(images_NxHxWxC: np.ndarray, num_rows: int, pad: int = 1) -> np.ndarray:
    """[0, 1] images tiled row-major into one [rows*H', cols*W', C] image with white gaps.

    Images smaller than MIN_CELL_PIXELS are enlarged by an integer factor, so 8x8 digits
    stay legible in an image viewer.
    """
    images = np.clip(np.asarray(images_NxHxWxC, np.float32), 0.0, 1.0)
    if images.ndim != 4:
        raise ValueError(f"image_grid needs [N, H, W, C] images; got shape {images.shape}")
    n, h, w, c = images.shape
    if num_rows < 1 or n % num_rows:
        raise ValueError(f"{n} images do not fill {num_rows} rows evenly")
    scale = max(1, -(-MIN_CELL_PIXELS // max(h, w)))
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    images = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=1.0)
    num_cols = n // num_rows
    grid = images.reshape(num_rows, num_cols, h + 2 * pad, w + 2 * pad, c)
    return grid.transpose(0, 2, 1, 3, 4).reshape(num_rows * (h + 2 * pad), -1, c)


def save_png(grid_HxWxC: np.ndarray, path: str | Path) -> Path:
    """Writes an [H, W, 1 or 3] image in [0, 1] as an 8-bit PNG."""
    from PIL import Image

    pixels = (np.clip(grid_HxWxC, 0.0, 1.0) * 255).round().astype(np.uint8)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
    return Path(path)


def save_gif(frame_paths: Iterable[str | Path], path: str | Path, ms_per_frame: int = 400) -> Path:
    """An animated GIF of the PNG frames, in order (the last one held twice as long)."""
    from PIL import Image

    frames = [Image.open(p).convert("RGB") for p in frame_paths]
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    durations = [ms_per_frame] * (len(frames) - 1) + [2 * ms_per_frame]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return Path(path)


def interpolation_latents(rng: jax.Array, num_rows: int, num_steps: int, latent_dim: int):
    """[rows * steps, latent] noise: each row walks linearly between two random latent points."""
    start_rng, end_rng = jax.random.split(rng)
    start = jax.random.normal(start_rng, (num_rows, 1, latent_dim))
    end = jax.random.normal(end_rng, (num_rows, 1, latent_dim))
    t = jnp.linspace(0.0, 1.0, num_steps)[None, :, None]
    return ((1.0 - t) * start + t * end).reshape(num_rows * num_steps, latent_dim)


# --- classifier-based metrics ------------------------------------------------------------
def classifier_outputs(classifier: TrainState, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """([B, D] features of FEATURE_LAYER, [B, classes] probabilities) for [0, 1] images."""
    logits, captured = classifier.model.apply(
        classifier.variables,
        images,
        train=False,
        capture_intermediates=lambda module, method: module.name == FEATURE_LAYER,
    )
    (features,) = captured["intermediates"][FEATURE_LAYER]["__call__"]
    return features, jax.nn.softmax(logits)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of Gaussians fitted to two sets.

    Tr((S_a S_b)^1/2) is computed as the sum of square roots of the eigenvalues of the
    symmetric S_a^1/2 S_b S_a^1/2, which avoids the complex output of a general sqrtm.
    """
    a, b = (np.asarray(f, np.float64) for f in (features_a, features_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance needs two [N>=2, D] sets; got {a.shape}, {b.shape}")
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eigvals_a, eigvecs_a = np.linalg.eigh(cov_a)
    sqrt_a = (eigvecs_a * np.sqrt(np.clip(eigvals_a, 0.0, None))) @ eigvecs_a.T
    cross = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = np.sum(np.sqrt(np.clip(cross, 0.0, None)))
    mean_term = np.sum(np.square(a.mean(axis=0) - b.mean(axis=0)))
    return float(mean_term + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)


def inception_score(probs_NxC: np.ndarray) -> float:
    """exp(mean KL(p(y|x) || p(y))): from 1 (all alike or unsure) to the number of classes."""
    p = np.clip(np.asarray(probs_NxC, np.float64), 1e-12, 1.0)
    marginal = p.mean(axis=0, keepdims=True)
    return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))))


def batched_outputs(
    classifier: TrainState, images: np.ndarray, batch_size: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """`classifier_outputs` over many images, in batches, as host arrays."""
    run = jax.jit(classifier_outputs)
    outputs = [
        run(classifier, images[i : i + batch_size]) for i in range(0, len(images), batch_size)
    ]
    features, probs = zip(*jax.device_get(outputs), strict=True)
    return np.concatenate(features), np.concatenate(probs)


class QualityMetric:
    """FID and Inception-style score of generated images against fixed real features.

    `real_images` ([N, H, W, C] in [0, 1]) are summarised once; every call scores
    `num_samples` images from `sample(num)` (default: as many as the real images).
    `classifier_accuracy` records the classifier's eval accuracy, if its maker knows it.
    """

    def __init__(
        self,
        classifier: TrainState,
        real_images: np.ndarray,
        num_samples: int = 0,
        classifier_accuracy: float = float("nan"),
    ):
        self.classifier = classifier
        self.classifier_accuracy = classifier_accuracy
        self.num_samples = num_samples or len(real_images)
        self.real_features, self.real_probs = batched_outputs(classifier, real_images)

    def __call__(self, sample: Callable[[int], np.ndarray]) -> dict[str, float]:
        """{"fid": ..., "inception_score": ...} of `sample(num_samples)` images."""
        features, probs = batched_outputs(self.classifier, np.asarray(sample(self.num_samples)))
        return {
            "fid": frechet_distance(self.real_features, features),
            "inception_score": inception_score(probs),
        }
