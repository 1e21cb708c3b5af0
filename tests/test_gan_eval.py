"""GAN evaluation: grids, Frechet distance and Inception-style score; the gan task end to end."""

import functools

import jax
import numpy as np
import pytest
from PIL import Image

from experiments import dcgan, digits_dcgan
from jdl import gan_eval, train_and_evaluate
from jdl.checkpointing import Checkpointer
from jdl.config import validate_config
from jdl.data import from_arrays
from jdl.data.embedded import digits_splits, load_embedded
from jdl.state import GANState
from jdl.tasks import make_task
from jdl.tasks.gan import eval_images, train_classifier


def test_frechet_distance_matches_the_gaussian_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    shifted = rng.normal(size=(20000, 3)) + np.array([1.0, 2.0, 0.0])
    assert gan_eval.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Equal covariances: only the squared mean difference remains (1 + 4).
    assert gan_eval.frechet_distance(a, shifted) == pytest.approx(5.0, rel=0.02)
    # N(0, I) vs N(0, 4I) in 3-D: 3 * (1 + 4 - 2 * 2) = 3.
    assert gan_eval.frechet_distance(a, 2 * shifted) - 4 * 5.0 == pytest.approx(3.0, rel=0.05)
    with pytest.raises(ValueError, match="two"):
        gan_eval.frechet_distance(a, a[:, :2])


def test_inception_score_ranges_from_one_to_the_number_of_classes():
    confident_and_varied = np.eye(4)[np.arange(100) % 4]
    assert gan_eval.inception_score(confident_and_varied) == pytest.approx(4.0, rel=1e-6)
    assert gan_eval.inception_score(np.eye(4)[np.zeros(100, int)]) == pytest.approx(1.0)
    assert gan_eval.inception_score(np.full((100, 4), 0.25)) == pytest.approx(1.0)


def test_image_grid_tiles_and_enlarges_small_images(tmp_path):
    images = np.stack([np.full((8, 8, 1), i / 5) for i in range(6)])
    grid = gan_eval.image_grid(images, num_rows=2)
    cell = 8 * 7 + 2  # enlarged 7x to 56 pixels, plus a 1-pixel white frame
    assert grid.shape == (2 * cell, 3 * cell, 1)
    assert grid[1 + cell, 1 + 2 * cell, 0] == pytest.approx(5 / 5)  # row 1, column 2: image 5
    assert grid[0, 0, 0] == 1.0
    with pytest.raises(ValueError, match="rows evenly"):
        gan_eval.image_grid(images, num_rows=4)
    frames = [gan_eval.save_png(grid * s, tmp_path / f"{s}.png") for s in (0.5, 1.0)]
    assert Image.open(frames[0]).size == (3 * cell, 2 * cell)
    gif = Image.open(gan_eval.save_gif(frames, tmp_path / "progress.gif"))
    assert gif.n_frames == 2


def test_interpolation_rows_walk_between_two_latent_points():
    z = np.asarray(gan_eval.interpolation_latents(jax.random.key(0), 2, 5, 3)).reshape(2, 5, 3)
    np.testing.assert_allclose(z[:, 2], (z[:, 0] + z[:, 4]) / 2, atol=1e-6)
    assert not np.allclose(z[0, 0], z[1, 0])


@functools.cache
def digits():
    return load_embedded("digits", batch_size=64, eval_batch_size=128, seed=0)


def test_quality_metric_separates_real_images_from_noise():
    dataset = digits()
    classifier, accuracy = train_classifier(dataset, num_steps=150, seed=0)
    assert accuracy > 0.85
    metric = gan_eval.QualityMetric(classifier, eval_images(dataset))
    real_train = dataset.train_arrays()["image"]
    noise = np.random.default_rng(0).uniform(size=(360, 8, 8, 1)).astype(np.float32)
    real = metric(lambda num: real_train[:num])
    fake = metric(lambda num: noise[:num])
    assert real["fid"] < 0.05 * fake["fid"]
    assert real["inception_score"] > 5.0 > 2.0 > fake["inception_score"]


def tiny_config(**overrides):
    """The dcgan experiment on digits, shrunk to seconds: narrow networks, 4 steps."""
    c = dcgan.get_config()
    c.dataset = "digits"
    c.model.generator.widths = (16, 8, 8)
    c.model.discriminator.widths = (8, 8, 16)
    c.task.latent_dim = 8
    c.task.classifier_steps = 20
    c.task.grid_rows = 4
    c.batch_size = 64
    c.num_steps = 4
    c.progress_bar = False
    c.data = {}
    for key, value in overrides.items():
        c[key] = value
    return c


def test_gan_task_rejects_bad_options():
    dataset = digits()
    with pytest.raises(ValueError, match="valid losses"):
        make_task(tiny_config(task={**tiny_config().task, "loss": "wgan"}), dataset)
    with pytest.raises(ValueError, match=r"Unknown generator field\(s\) \['depth'\]"):
        config = tiny_config()
        config.model.generator.depth = 3
        make_task(config, dataset)


def test_ranking_by_fid_with_fid_turned_off_fails_before_training():
    no_fid = {**tiny_config().task, "classifier_steps": 0}
    with pytest.raises(ValueError, match=r"'eval/fid' comes with FID.*classifier_steps=0"):
        make_task(tiny_config(task=no_fid), digits())  # the experiment ranks by FID
    task = make_task(tiny_config(task=no_fid, best_metric="eval/g_loss"), digits())
    assert task.after_eval.make_quality is None


def test_fid_is_measured_in_full_precision_whatever_the_runs_matmul_precision():
    def scores():
        task = make_task(tiny_config(), digits())  # a classifier of its own, trained at first
        return task.after_eval(task.state, epoch=1, workdir=None)

    full = scores()
    with jax.default_matmul_precision("bfloat16"):
        assert scores() == full


def test_dcgan_experiment_writes_grids_and_fid_and_checkpoints_both_optimizers(tmp_path):
    x_train, y_train, x_eval, y_eval = digits_splits()
    dataset = from_arrays(  # 4 steps per epoch
        x_train[:256],
        y_train[:256],
        x_eval,
        y_eval,
        name="digits",
        num_classes=10,
        batch_size=64,
        eval_batch_size=500,
        seed=0,
    )
    first = train_and_evaluate(tiny_config(), tmp_path, dataset=dataset)
    assert isinstance(first.state, GANState)
    assert {"eval/fid", "eval/inception_score", "eval/d_real", "eval/d_fake"} <= set(first.metrics)
    assert (tmp_path / "samples" / "epoch_001.png").exists()
    assert (tmp_path / "samples" / "progress.gif").exists()
    assert (tmp_path / "interpolation.png").exists()

    template = make_task(tiny_config(), dataset)  # FID's classifier is trained lazily: not here
    with Checkpointer(tmp_path / "checkpoints") as checkpointer:
        restored, _ = checkpointer.restore(template.state)
    # Both networks' parameters, batch statistics and optimizer states, bit for bit.
    # (Leaf by leaf: each task build makes new optimizer functions, its static fields.)
    saved, restored_leaves = jax.tree.leaves(first.state), jax.tree.leaves(restored)
    assert len(saved) == len(restored_leaves)
    for expected, actual in zip(saved, restored_leaves, strict=True):
        np.testing.assert_array_equal(actual, expected)
    assert int(restored.generator.opt_state[0].count) == 4
    assert int(restored.discriminator.opt_state[0].count) == 4


@pytest.mark.parametrize("experiment", [dcgan, digits_dcgan], ids=lambda e: e.__name__)
def test_gan_configs_use_only_the_shared_vocabulary(experiment):
    validate_config(experiment.get_config())
