"""Knowledge distillation: the documents' CNN teaches a small MLP; the same MLP alone compares.

    python -m experiments.distill --workdir runs/distill                          # digits
    python -m experiments.distill --workdir runs/distill_mnist --config.dataset=mnist \
        --config.data_dir=~/tensorflow_datasets

Trains the teacher in W/teacher unless it already holds a finished run, then the student
distilled (W/student_distilled) and alone (W/student_alone), same recipe, epochs and seed,
and writes W/distillation.json.
"""

import json
from pathlib import Path

import ml_collections

from experiments import digits_cnn, mnist_cnn, mnist_mlp


def get_config():
    c = ml_collections.ConfigDict()
    c.dataset = "digits"  # digits | mnist | fashion_mnist
    c.data_dir = ml_collections.FieldReference(None, field_type=str)  # tfds data_dir
    c.seed = 0
    # The student MLP, 784-256-256-10 on MNIST: ~9x fewer flops than the CNN (XLA's count) and room
    # to use the soft targets (an 8x8-64-10 student gained nothing from them on digits).
    c.student_hidden_sizes = (256, 256)
    c.temperature = 4.0  # softens both nets' outputs in the KL term
    c.alpha = 0.9  # weight of the KL term; 1 - alpha weighs the labels' cross-entropy
    return c


def recipe(base: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
    """`base` (an experiment's config) on `config`'s dataset and seed, without a progress bar."""
    base.dataset, base.data_dir, base.seed = config.dataset, config.data_dir, config.seed
    base.progress_bar = False
    return base


def student_config(config: ml_collections.ConfigDict, task: dict) -> ml_collections.ConfigDict:
    """The documents' MLP recipe with the small student net, trained under `task`."""
    c = recipe(mnist_mlp.get_config(), config)
    c.model.hidden_sizes = tuple(config.student_hidden_sizes)
    # Both students learn from a plain loss: the distilled one's soft targets replace the
    # recipe's label smoothing, so the one alone trains on the plain labels.
    c.label_smoothing = 0.0
    if config.dataset == "digits":
        c.num_epochs, c.batch_size, c.warmup_steps, c.log_every = 40, 32, 100, 45
    c.task = ml_collections.ConfigDict(task)
    return c


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Teacher (reused if finished), distilled student, student alone; writes the JSON."""
    import jdl
    from jdl.state import count_params

    workdir = Path(workdir)
    teacher_base = digits_cnn.get_config() if config.dataset == "digits" else mnist_cnn.get_config()
    teacher_config = recipe(teacher_base, config)
    teacher = jdl.train_and_evaluate(teacher_config, workdir / "teacher")
    distill_task = {
        "name": "distillation",
        "teacher_workdir": str(workdir / "teacher"),
        "teacher_model": teacher_config.model.to_dict(),
        "temperature": config.temperature,
        "alpha": config.alpha,
    }
    distilled = jdl.train_and_evaluate(
        student_config(config, distill_task), workdir / "student_distilled"
    )
    alone = jdl.train_and_evaluate(
        student_config(config, {"name": "classification"}), workdir / "student_alone"
    )
    results = {
        "dataset": config.dataset,
        "teacher_accuracy": teacher.metrics["eval/accuracy"],
        "student_distilled_accuracy": distilled.metrics["eval/accuracy"],
        "student_alone_accuracy": alone.metrics["eval/accuracy"],
        "teacher_parameters": count_params(teacher.state.params),
        "student_parameters": count_params(alone.state.params),
        "teacher_flops": forward_flops(teacher.state),
        "student_flops": forward_flops(alone.state),
        "temperature": config.temperature,
        "alpha": config.alpha,
    }
    (workdir / "distillation.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return results


def forward_flops(state) -> int:
    """XLA's count of floating-point operations in one example's forward pass. A CNN is
    counted with XLA's convolutions: its CPU patch form would add the patch copies."""
    import jax
    import jax.numpy as jnp

    model = state.model
    if "conv_impl" in model.__dataclass_fields__:
        model = model.clone(conv_impl="xla")
    example = jnp.zeros((1, *state.input_shape), jnp.float32)
    forward = jax.jit(lambda variables: model.apply(variables, example, train=False))
    return int(forward.lower(state.variables).compile().cost_analysis()["flops"])


def table(results: dict) -> str:
    """Accuracy, parameters and forward flops of the teacher and of the student with and
    without it."""
    teacher = (results["teacher_parameters"], results["teacher_flops"])
    student = (results["student_parameters"], results["student_flops"])
    rows = [
        ("teacher (CNN)", results["teacher_accuracy"], *teacher),
        ("student distilled", results["student_distilled_accuracy"], *student),
        ("student alone", results["student_alone_accuracy"], *student),
    ]
    lines = [f"{'model':<18} {'accuracy':>9} {'parameters':>11} {'flops/example':>14}"]
    for name, accuracy, parameters, flops in rows:
        lines.append(f"{name:<18} {accuracy:>9.4f} {parameters:>11,} {flops:>14,}")
    lines.append(f"temperature {results['temperature']}, alpha {results['alpha']}")
    return "\n".join(lines)


if __name__ == "__main__":
    from experiments.cli import run as run_command

    run_command(get_config, run)
