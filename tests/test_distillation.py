"""Distillation: the loss against NumPy, the step in every compile mode, the task, bad input."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import jdl
from jdl.checkpointing import CheckpointError
from jdl.loop import create_state, load_config_dataset
from jdl.losses import distillation_loss
from jdl.models import CNN, MLP
from jdl.parallel import Strategy
from jdl.state import create_train_state
from jdl.steps import train_step
from jdl.steps.distillation import distillation_train_step
from jdl.stored import read_float_variables
from tests.digits_training import accuracy, digits, train
from tests.loop_helpers import small_config


def numpy_distillation_loss(student, teacher, labels, temperature, alpha):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    p_teacher = np.exp(log_softmax(teacher / temperature))
    kl = (
        p_teacher * (log_softmax(teacher / temperature) - log_softmax(student / temperature))
    ).sum(-1)
    cross_entropy = -log_softmax(student)[np.arange(len(labels)), labels]
    return alpha * temperature**2 * kl + (1 - alpha) * cross_entropy


@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.5), (4.0, 0.9), (2.5, 0.0), (8.0, 1.0)])
def test_loss_matches_numpy(temperature, alpha):
    rng = np.random.RandomState(0)
    student, teacher = rng.randn(2, 16, 10).astype(np.float64) * 3
    labels = rng.randint(0, 10, 16)
    expected = numpy_distillation_loss(student, teacher, labels, temperature, alpha)
    got = distillation_loss(
        jnp.asarray(student, jnp.float32),
        jnp.asarray(teacher, jnp.float32),
        labels,
        temperature=temperature,
        alpha=alpha,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_no_gradient_reaches_the_teacher_logits():
    logits = jnp.arange(20.0).reshape(2, 10) / 7

    def total(teacher):
        return distillation_loss(
            logits, teacher, jnp.array([1, 2]), temperature=3.0, alpha=0.7
        ).sum()

    np.testing.assert_array_equal(jax.grad(total)(jnp.flip(logits, -1)), 0.0)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"temperature": 0.0, "alpha": 0.5}, "temperature must be > 0"),
        ({"temperature": -1.0, "alpha": 0.5}, "temperature must be > 0"),
        ({"temperature": 2.0, "alpha": -0.1}, r"alpha must lie in \[0, 1\]"),
        ({"temperature": 2.0, "alpha": 1.5}, r"alpha must lie in \[0, 1\]"),
    ],
)
def test_bad_settings_raise(settings, message):
    with pytest.raises(ValueError, match=message):
        distillation_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros(2, int), **settings)


def test_teacher_with_other_outputs_raises():
    with pytest.raises(ValueError, match="same number of outputs"):
        distillation_loss(
            jnp.zeros((2, 10)), jnp.zeros((2, 5)), jnp.zeros(2, int), temperature=2.0, alpha=0.5
        )


def tiny_step_setup():
    """A 6-4 MLP teacher, a fresh student and one batch of 16 (two per fake device)."""
    rng = np.random.RandomState(0)
    batch = {"image": rng.rand(16, 6).astype(np.float32), "label": rng.randint(0, 3, 16)}
    teacher = MLP(hidden_sizes=(8,), num_outputs=3)
    teacher_variables = jax.device_get(teacher.init(jax.random.key(1), batch["image"]))
    student = create_train_state(
        MLP(hidden_sizes=(4,), num_outputs=3), optax.sgd(0.5), (6,), jax.random.key(2)
    )
    step = functools.partial(
        distillation_train_step,
        teacher=teacher,
        teacher_variables=teacher_variables,
        temperature=2.0,
        alpha=0.8,
    )
    return step, student, batch, teacher_variables


def test_step_equal_under_jit_sharded_and_pmap():
    step, state, batch, teacher_variables = tiny_step_setup()
    copy = jax.tree.map(np.array, teacher_variables)
    results = {}
    for mode in ("jit", "sharded", "pmap"):
        strategy = Strategy(mode)
        compiled = strategy.compile_train(step)
        new_state = strategy.put_replicated(jax.device_get(state))
        rng = strategy.put_replicated(jax.random.key(3))
        for _ in range(3):
            new_state, metrics = compiled(new_state, strategy.put_batch(batch), rng)
        results[mode] = jax.device_get(new_state.params)
        assert float(metrics["count"]) == 16
    for mode in ("sharded", "pmap"):
        jax.tree.map(
            functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
            results[mode],
            results["jit"],
        )
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), results["jit"], state.params)
    assert max(jax.tree.leaves(moved)) > 1e-3  # the student learned
    jax.tree.map(np.testing.assert_array_equal, teacher_variables, copy)


def test_distilled_student_beats_the_student_alone_on_digits():
    """Hinton et al.'s regime on the embedded digits: a CNN teacher (~99 %) and an MLP
    student with room to use the soft targets, trained alike with and without them."""
    data, evaluation = digits()
    teacher = train(
        CNN(num_outputs=10),
        functools.partial(train_step, max_shift=1),
        data,
        epochs=20,
        seed=0,
        learning_rate=3e-3,
    )
    assert accuracy(teacher, evaluation) >= 0.985
    distill = functools.partial(
        distillation_train_step,
        teacher=teacher.model,
        teacher_variables=teacher.variables,
        temperature=4.0,
        alpha=0.9,
    )
    student = MLP(hidden_sizes=(256, 256), num_outputs=10)

    def mean_accuracy(step):
        runs = [train(student, step, data, epochs=40, seed=s, learning_rate=2e-3) for s in range(3)]
        return np.mean([accuracy(state, evaluation) for state in runs])

    assert mean_accuracy(distill) > mean_accuracy(train_step)


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory):
    """A finished digits CNN run: the teacher of the task tests."""
    workdir = tmp_path_factory.mktemp("teacher")
    jdl.train_and_evaluate(small_config(num_epochs=1), workdir)
    return workdir


def distillation_config(teacher_workdir, **task):
    c = small_config(num_epochs=1)
    c.model = ml_collections.ConfigDict({"name": "mlp", "hidden_sizes": (16,)})
    c.task = ml_collections.ConfigDict(
        {
            "name": "distillation",
            "teacher_workdir": str(teacher_workdir),
            "teacher_model": {"name": "cnn", "widths": (16, 32)},
            "temperature": 4.0,
            "alpha": 0.9,
            **task,
        }
    )
    return c


def listing(path):
    return sorted((p.relative_to(path), p.stat().st_size) for p in path.rglob("*"))


def test_task_trains_the_student_and_leaves_the_teacher_bit_identical(teacher_workdir, tmp_path):
    checkpoints = teacher_workdir / "checkpoints"
    config = small_config(num_epochs=1)
    template = {"params": create_state(config, load_config_dataset(config)).params}
    before = read_float_variables(checkpoints, template)
    files = listing(checkpoints)
    result = jdl.train_and_evaluate(distillation_config(teacher_workdir), tmp_path)
    assert result.metrics["step"] == 22  # one epoch of the student
    after = read_float_variables(checkpoints, template)
    jax.tree.map(np.testing.assert_array_equal, after, before)
    assert listing(checkpoints) == files


def test_task_bad_teachers_raise_before_any_work(teacher_workdir, tmp_path):
    empty = tmp_path / "no_run"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="No checkpoint folder"):
        jdl.train_and_evaluate(distillation_config(empty), tmp_path / "a")
    assert listing(empty) == []
    other = {"name": "cnn", "widths": (8, 8)}
    with pytest.raises(CheckpointError, match="does not fit"):
        jdl.train_and_evaluate(
            distillation_config(teacher_workdir, teacher_model=other), tmp_path / "b"
        )
    with pytest.raises(ValueError, match="temperature must be > 0"):
        jdl.train_and_evaluate(
            distillation_config(teacher_workdir, temperature=0.0), tmp_path / "c"
        )
    assert not (tmp_path / "c" / "checkpoints").exists()
