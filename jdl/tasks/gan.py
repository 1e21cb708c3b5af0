"""The `gan` task: a DCGAN on an image dataset, with sample grids and FID after every eval.

Config: `config.model` is `{"name": "dcgan", "generator": {...}, "discriminator": {...},
"conv_impl": ...}` (fields of `jdl.models.gan.Generator` / `Discriminator`; the image shape
comes from the dataset; `conv_impl`, for both networks, is "auto", "onednn" or "xla", see
`jdl.models.conv`); both networks train with Adam (`config.optimizer` "adam", or "adamw" with
`weight_decay`) on the config's learning-rate schedule and `grad_clip_norm`, and the
top-level `label_smoothing` is one-sided on real images; the task fields are the keyword
arguments of `gan_task`.
"""

import functools
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils

from jdl import gan_eval
from jdl.config import total_train_steps
from jdl.data import Dataset
from jdl.losses import GAN_LOSSES
from jdl.models import configure
from jdl.models.cnn import CNN
from jdl.models.gan import Discriminator, Generator
from jdl.optimizers import decay_mask, make_schedule
from jdl.parallel import scan_steps, stacked_chunks
from jdl.parallel.prefetch import prefetch
from jdl.state import GANState, TrainState, create_gan_state, create_train_state
from jdl.steps.classification import eval_step, train_step
from jdl.steps.gan import from_tanh_range, gan_eval_step, gan_train_step, generate
from jdl.steps.metrics import merge, summarize
from jdl.tasks.base import Task
from jdl.tasks.classification import init_rng

CLASSIFIER_HIDDEN = 128  # width of the feature layer the Frechet distance is measured on
CLASSIFIER_LEARNING_RATE = 1e-3
CLASSIFIER_STEPS_PER_CALL = 8  # one compiled loop per 8 steps, the next batches made meanwhile
SAMPLE_SEED_OFFSET = 7919  # fixed noise for grids and FID, derived from config.seed
QUALITY_METRICS = ("fid", "inception_score", "classifier_accuracy")  # evaluated with FID only
GRID_DIR = "samples"


def build_gan(model_config: Mapping[str, Any], image_shape) -> tuple[Generator, Discriminator]:
    """Generator and discriminator from `config.model`; unknown names or fields raise."""
    fields = dict(model_config)
    name = fields.pop("name", None)
    if name != "dcgan":
        raise ValueError(f"The gan task needs model name 'dcgan'; got {name!r}")
    valid = ["conv_impl", "discriminator", "generator"]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(f"Unknown dcgan field(s) {unknown}; valid: {valid}")
    conv_impl = fields.get("conv_impl", "auto")
    generator = configure(
        Generator,
        fields.get("generator", {}),
        "generator",
        image_shape=tuple(image_shape),
        conv_impl=conv_impl,
    )
    discriminator = configure(
        Discriminator, fields.get("discriminator", {}), "discriminator", conv_impl=conv_impl
    )
    return generator, discriminator


def gan_optimizer(config, num_updates: int, beta1: float) -> optax.GradientTransformation:
    """Adam with `beta1` on the config's schedule over `num_updates`, decoupled
    `weight_decay` (biases and scales skipped) and `grad_clip_norm` when they are set."""
    if config.optimizer not in ("adam", "adamw"):
        raise ValueError(
            f"Config optimizer={config.optimizer!r} has no effect on the 'gan' task, which "
            "trains both networks with Adam (task.beta1); use 'adam' or 'adamw'"
        )
    schedule = make_schedule(config, num_updates)
    adam = (
        optax.adamw(schedule, b1=beta1, weight_decay=config.weight_decay, mask=decay_mask)
        if config.weight_decay
        else optax.adam(schedule, b1=beta1)
    )
    if not config.grad_clip_norm:
        return adam
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adam)


def global_batches(batches: Iterator[dict]) -> Iterator[dict]:
    """Each batch of this process joined with the same batch of every other process (in
    process order: the global batch), so that all processes see the same examples."""
    for batch in batches:
        yield (
            multihost_utils.process_allgather(batch, tiled=True)
            if jax.process_count() > 1
            else batch
        )


def train_classifier(dataset: Dataset, num_steps: int, seed: int) -> tuple[TrainState, float]:
    """The CNN(32, 64) + Dense(128) feature network, trained with Adam; returns its eval accuracy.

    Every process trains on the same global batches and evaluates on the whole eval split,
    so a run has one classifier, the same whatever its number of processes.
    """
    model = CNN(dense_size=CLASSIFIER_HIDDEN, num_outputs=dataset.info.num_classes)
    tx = optax.adam(CLASSIFIER_LEARNING_RATE)
    state = create_train_state(model, tx, dataset.info.input_shape, jax.random.key(seed))
    steps = jax.jit(scan_steps(train_step), donate_argnums=(0,))
    evaluate = jax.jit(eval_step)
    rng = jax.random.key(seed)
    for epoch in range(-(-num_steps // dataset.steps_per_epoch)):
        batches = itertools.islice(dataset.train_batches(epoch), num_steps - int(state.step))
        chunks = stacked_chunks(global_batches(prefetch(batches)), CLASSIFIER_STEPS_PER_CALL)
        for stacked, count in chunks:
            state, _ = steps(state, stacked, rng, np.int32(count))
    totals = None
    for batch in global_batches(dataset.eval_batches()):
        totals = merge(totals, evaluate(state, batch))
    return state, summarize(totals)["accuracy"]


def eval_images(dataset: Dataset) -> np.ndarray:
    """The eval split's images, from every process (padding dropped)."""
    parts = [b["image"][b["mask"] > 0] for b in global_batches(dataset.eval_batches())]
    return np.concatenate(parts)


def quality_metric(
    dataset: Dataset, classifier_steps: int, seed: int, fid_samples: int
) -> gan_eval.QualityMetric:
    """FID and IS against the eval split, with a classifier trained on the train split."""
    classifier, accuracy = train_classifier(dataset, classifier_steps, seed)
    return gan_eval.QualityMetric(classifier, eval_images(dataset), fid_samples, accuracy)


class GANEvaluation:
    """The task's `after_eval`: fixed-noise grid, progress GIF, interpolation, FID and IS."""

    def __init__(self, latent_dim: int, seed: int, grid_rows: int, make_quality=None):
        """`make_quality()` builds the QualityMetric at the first evaluation (None: no FID)."""
        self.grid_rows = grid_rows
        rng = jax.random.fold_in(jax.random.key(seed), SAMPLE_SEED_OFFSET)
        grid_rng, self.interp_rng, self.fid_rng = jax.random.split(rng, 3)
        self.grid_z = jax.random.normal(grid_rng, (grid_rows * grid_rows, latent_dim))
        self.latent_dim = latent_dim
        self.make_quality, self.quality = make_quality, None
        self._sample = jax.jit(lambda g, z: from_tanh_range(generate(g, z, train=False)[0]))

    def samples(self, generator: TrainState, z: jax.Array) -> np.ndarray:
        return np.asarray(jax.device_get(self._sample(generator, z)))

    def __call__(self, state: GANState, epoch: int, workdir: Path | None) -> dict[str, float]:
        generator = jax.device_get(state.generator)
        if jax.process_index() == 0 and workdir is not None:  # None: a run that writes nothing
            self.write_images(generator, epoch, Path(workdir))
        if self.make_quality is None:
            return {}

        def sample(num):
            z = jax.random.normal(self.fid_rng, (num, self.latent_dim))
            return np.concatenate(
                [self.samples(generator, z[i : i + 500]) for i in range(0, num, 500)]
            )

        # In full precision whatever the run's matmul_precision: one protocol for every run.
        with jax.default_matmul_precision("float32"):
            if self.quality is None:  # trained lazily: building a state for a restore skips it
                self.quality = self.make_quality()
            scores = self.quality(sample)
        return {**scores, "classifier_accuracy": self.quality.classifier_accuracy}

    def write_images(self, generator: TrainState, epoch: int, workdir: Path) -> None:
        """samples/epoch_NNN.png, samples/progress.gif (all epochs so far), interpolation.png."""
        grid_dir = workdir / GRID_DIR
        grid_dir.mkdir(parents=True, exist_ok=True)
        grid = gan_eval.image_grid(self.samples(generator, self.grid_z), self.grid_rows)
        gan_eval.save_png(grid, grid_dir / f"epoch_{epoch:03d}.png")
        gan_eval.save_gif(sorted(grid_dir.glob("epoch_*.png")), grid_dir / "progress.gif")
        z = gan_eval.interpolation_latents(
            self.interp_rng, self.grid_rows, self.grid_rows, self.latent_dim
        )
        interp = gan_eval.image_grid(self.samples(generator, z), self.grid_rows)
        gan_eval.save_png(interp, workdir / "interpolation.png")


def gan_task(
    config,
    dataset: Dataset,
    *,
    loss: str = "non_saturating",
    d_steps: int = 1,
    latent_dim: int = 100,
    beta1: float = 0.5,
    classifier_steps: int = 1000,
    fid_samples: int = 0,
    grid_rows: int = 8,
) -> Task:
    """A DCGAN on `dataset`'s images.

    `loss`: "non_saturating" or "hinge"; `config.label_smoothing`: one-sided, on real
    images; `d_steps`: discriminator updates per generator update; `beta1`: Adam's beta1 for both
    networks. `classifier_steps` > 0 trains the FID feature classifier for that many
    steps at the first evaluation (0 turns FID and IS off); `fid_samples` generated
    images are scored (0: as many as the eval split). Sample grids are `grid_rows` square.
    """
    if loss not in GAN_LOSSES:
        raise ValueError(f"Unknown GAN loss {loss!r}; valid losses: {list(GAN_LOSSES)}")
    label_smoothing = config.label_smoothing
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}")
    if d_steps < 1:
        raise ValueError(f"d_steps must be at least 1; got {d_steps}")
    if dataset.info.input_key != "image":
        raise ValueError(f"The gan task needs an image dataset; {dataset.info.name!r} is not")
    if classifier_steps <= 0 and config.best_metric.rsplit("/", 1)[-1] in QUALITY_METRICS:
        raise ValueError(
            f"best_metric {config.best_metric!r} comes with FID, which task.classifier_steps="
            f"{classifier_steps} turns off; set classifier_steps > 0, or rank checkpoints by a "
            "metric every GAN evaluation gives, e.g. best_metric='eval/g_loss'"
        )
    image_shape = dataset.info.input_shape
    generator, discriminator = build_gan(config.model, image_shape)
    iterations = total_train_steps(config, dataset.steps_per_epoch)
    state = create_gan_state(
        generator,
        discriminator,
        gan_optimizer(config, iterations, beta1),
        gan_optimizer(config, iterations * d_steps, beta1),
        latent_dim,
        image_shape,
        init_rng(config),
    )
    quality = None
    if classifier_steps > 0:
        quality = functools.partial(
            quality_metric, dataset, classifier_steps, config.seed, fid_samples
        )
    step_options = {"loss": loss, "label_smoothing": label_smoothing, "d_steps": d_steps}
    return Task(
        state=state,
        train_step=functools.partial(gan_train_step, **step_options),
        eval_step=functools.partial(gan_eval_step, loss=loss),
        after_eval=GANEvaluation(latent_dim, config.seed, grid_rows, quality),
        after_eval_metrics=QUALITY_METRICS if quality else (),
    )
