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
    c.student_hidden_sizes = (64,)  # the student MLP: 784-64-10 on MNIST
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
    if config.dataset == "digits":
        c.num_epochs, c.batch_size, c.warmup_steps, c.log_every = 20, 32, 100, 45
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
        "temperature": config.temperature,
        "alpha": config.alpha,
    }
    (workdir / "distillation.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return results


def table(results: dict) -> str:
    """Accuracy and parameters of the teacher and of the student with and without it."""
    rows = [
        ("teacher (CNN)", results["teacher_accuracy"], results["teacher_parameters"]),
        ("student distilled", results["student_distilled_accuracy"], results["student_parameters"]),
        ("student alone", results["student_alone_accuracy"], results["student_parameters"]),
    ]
    lines = [f"{'model':<18} {'accuracy':>9} {'parameters':>11}"]
    lines += [f"{name:<18} {acc:>9.4f} {params:>11,}" for name, acc, params in rows]
    lines.append(f"temperature {results['temperature']}, alpha {results['alpha']}")
    return "\n".join(lines)


if __name__ == "__main__":
    from experiments.cli import run as run_command

    run_command(get_config, run)
