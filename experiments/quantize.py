"""Int8 quantization of the documents' CNN: accuracy, bytes on disk and CPU inference speed.

    python -m experiments.quantize --workdir runs/quantize                       # digits
    python -m experiments.quantize --workdir runs/quantize_mnist --config.dataset=mnist \
        --config.data_dir=~/tensorflow_datasets [--config.mode=qat]

Trains the CNN in W/float (or reuses that finished run), and with `mode=qat` also a
quantization-aware run in W/qat; quantizes the run `mode` names (static int8 and
weights-only int8, both saved through orbax under W/), and writes W/quantization.json.
Bytes are the variables serialized as one flax msgpack file (`*_bytes`) and the orbax
checkpoint folders (`*_checkpoint_bytes`, with their fixed metadata).
"""

import json
import time
from pathlib import Path

import ml_collections
import numpy as np

from experiments import digits_cnn, mnist_cnn


def get_config():
    c = ml_collections.ConfigDict()
    c.dataset = "digits"  # digits | mnist | fashion_mnist
    c.data_dir = ml_collections.FieldReference(None, field_type=str)  # tfds data_dir
    c.mode = "ptq"  # ptq: quantize the float run | qat: quantize a quantization-aware run
    c.seed = 0
    c.calibration_examples = 512  # training examples that fix the static input scales
    c.batch_size = 512  # inference batch for the examples/s columns
    c.timing_seconds = 3.0  # per model, after compilation, in 5 alternating rounds
    return c


def training_config(config: ml_collections.ConfigDict, task: str) -> ml_collections.ConfigDict:
    """The documents' CNN recipe for `config.dataset` (digits or MNIST-style) under `task`."""
    c = digits_cnn.get_config() if config.dataset == "digits" else mnist_cnn.get_config()
    c.dataset, c.data_dir, c.seed = config.dataset, config.data_dir, config.seed
    c.task = ml_collections.ConfigDict({"name": task})
    c.progress_bar = False
    return c


def accuracy(predict, dataset) -> float:
    """Accuracy of `predict(images) -> logits` over every example of the eval split."""
    correct = count = 0.0
    for batch in dataset.eval_batches():
        hits = np.argmax(np.asarray(predict(batch["image"])), -1) == batch["label"]
        correct += float(np.sum(hits * batch["mask"]))
        count += float(np.sum(batch["mask"]))
    return correct / count


def examples_per_sec(predictors: dict, images: np.ndarray, seconds: float) -> dict:
    """Batched inference throughput of each compiled `predict`: the best of 5 rounds that
    take turns, so that other jobs on the machine slow every model alike."""
    for predict in predictors.values():
        predict(images).block_until_ready()  # compile
    best = dict.fromkeys(predictors, 0.0)
    for _ in range(5):
        for name, predict in predictors.items():
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 5:
                predict(images).block_until_ready()
                calls += 1
            speed = calls * len(images) / (time.perf_counter() - start)
            best[name] = max(best[name], speed)
    return best


def saved_int8(path: Path, model, make):
    """The int8 model in `path`; made by `make()` and saved there first if absent."""
    from jdl import quantize

    if not path.exists():
        quantize.save_quantized(path, make())
    return quantize.load_quantized(path, model)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or reuses), quantizes and measures; writes and returns quantization.json."""
    import jax

    import jdl
    from jdl import quantize
    from jdl.config import validate_config
    from jdl.loop import load_config_dataset

    if config.mode not in ("ptq", "qat"):
        raise ValueError(f"Unknown mode {config.mode!r}; valid modes: ['ptq', 'qat']")
    workdir = Path(workdir)
    float_config = training_config(config, "classification")
    float_run = jdl.train_and_evaluate(float_config, workdir / "float")
    source = float_run
    if config.mode == "qat":
        qat_config = training_config(config, "quantization_aware")
        source = jdl.train_and_evaluate(qat_config, workdir / "qat")
    dataset = load_config_dataset(validate_config(float_config))
    model, float_variables = float_run.state.model, float_run.state.variables
    variables = source.state.variables
    images = dataset.train_arrays()["image"]
    shape = dataset.info.input_shape
    static = saved_int8(
        workdir / f"int8_{config.mode}",
        model,
        lambda: quantize.post_training_quantize(
            model, variables, shape, images[: config.calibration_examples]
        ),
    )
    weights_only = saved_int8(
        workdir / f"int8_weights_only_{config.mode}",
        model,
        lambda: quantize.post_training_quantize(model, variables, shape, mode="weights_only"),
    )
    if not (workdir / "float_params").exists():
        quantize.save_float(workdir / "float_params", float_variables)
    predictors = {
        "float": jax.jit(lambda x: model.apply(float_variables, x, train=False)),
        "int8": jax.jit(lambda x: static(x)),
        "int8_weights_only": jax.jit(lambda x: weights_only(x)),
    }
    batch = np.resize(images, (config.batch_size, *shape))
    results = {
        "dataset": config.dataset,
        "mode": config.mode,
        **{f"{name}_accuracy": accuracy(f, dataset) for name, f in predictors.items()},
        "float_bytes": quantize.serialized_bytes(float_variables),
        "int8_bytes": quantize.serialized_bytes(static.variables),
        "int8_weights_only_bytes": quantize.serialized_bytes(weights_only.variables),
        "float_checkpoint_bytes": quantize.checkpoint_bytes(workdir / "float_params"),
        "int8_checkpoint_bytes": quantize.checkpoint_bytes(workdir / f"int8_{config.mode}"),
        **{
            f"{name}_examples_per_sec": speed
            for name, speed in examples_per_sec(predictors, batch, config.timing_seconds).items()
        },
        "inference_batch_size": config.batch_size,
    }
    (workdir / "quantization.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return results


def table(results: dict) -> str:
    """The float and int8 rows: accuracy, bytes on disk, examples/s."""
    lines = [f"{'model':<18} {'accuracy':>9} {'bytes':>9} {'examples/s':>11}"]
    for name in ("float", "int8", "int8_weights_only"):
        lines.append(
            f"{name:<18} {results[name + '_accuracy']:>9.4f} {results[name + '_bytes']:>9,} "
            f"{results[name + '_examples_per_sec']:>11,.0f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    from experiments.cli import run as run_command

    run_command(get_config, run)
