"""`Model.save(path)` and `jdl.load(path)`: a folder a fresh process can predict from.

    path/model.json     the module's class and fields (when they rebuild it), the input
                        shape, the seed and the compile settings given by name
    path/weights/       orbax: step, parameters and batch statistics
    path/optimizer/     orbax: the optimizer state (read back when the optimizer has a name)

Saves go to a fresh folder that replaces `path` only once complete, so a failed save never
removes a good one. A module whose class cannot be imported by name or whose fields are not
plain data (every NNX module: it holds live RNG streams) is given back at load time:
`jdl.load(path, module=MyModule(...))`.
"""

import importlib
import json
import shutil
from pathlib import Path
from typing import Any

import jax
from flax import struct

from jdl.checkpointing import Checkpointer, CheckpointMismatchError
from jdl.keras.adapters import class_path
from jdl.workdir import is_workdir, load_workdir

SPEC_FILE = "model.json"
FORMAT = "jdl.Model/1"


@struct.dataclass
class Weights:
    """What predicting needs."""

    step: Any
    params: Any
    batch_stats: Any


@struct.dataclass
class OptimizerState:
    """What continuing to train needs on top of the weights."""

    opt_state: Any


def save(model, path: str | Path) -> None:
    """Writes `model` to the folder `path`, replacing what is there only once complete."""
    path = Path(path)
    state = model._current_state()
    fresh, old = path.with_name(path.name + ".saving"), path.with_name(path.name + ".old")
    for leftover in (fresh, old):
        shutil.rmtree(leftover, ignore_errors=True)
    fresh.mkdir(parents=True)
    step = int(state.step)
    parts = {
        "weights": Weights(state.step, state.params, state.batch_stats),
        "optimizer": OptimizerState(state.opt_state),
    }
    for name, part in parts.items():
        with Checkpointer(fresh / name) as checkpointer:
            checkpointer.save(step, jax.device_get(part), metadata={}, force=True)
    spec = {
        "format": FORMAT,
        "class": class_path(model.module),
        "module": model.adapter.description(),
        "input_shape": list(model.input_shape),
        "seed": model.seed,
        "compile": model.compiled.spec if model.compiled else None,
    }
    (fresh / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    if path.exists():
        path.rename(old)
    fresh.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def read_spec(path: Path) -> dict:
    """model.json of a saved model; a FileNotFoundError saying what `path` lacks."""
    spec_file = path / SPEC_FILE
    if not spec_file.is_file():
        raise FileNotFoundError(
            f"No jdl.Model saved in {str(path)!r}: it has no {SPEC_FILE}. Model.save(path) "
            "writes one; an experiment workdir is read with jdl.load(workdir, which=...)"
        )
    spec = json.loads(spec_file.read_text())
    if spec.get("format") != FORMAT:
        raise ValueError(f"{spec_file} is not a {FORMAT} description")
    return spec


def rebuild_module(spec: dict) -> Any:
    """The module `spec` describes; a ValueError saying to pass `module=` when it cannot."""
    class_name = spec["class"]
    described = spec["module"]
    ask = f"pass the module to rebuild it: jdl.load(path, module={class_name.split(':')[-1]}(...))"
    if described is None:
        raise ValueError(f"The saved {class_name} cannot be rebuilt from data alone; {ask}")
    module_name, _, qualname = class_name.partition(":")
    try:
        cls = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import the saved {class_name} ({error}); {ask}") from error
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in described["fields"].items()}
    return cls(**fields)


def load(path: str | Path, module: Any = None, which: str = "best"):
    """The `jdl.Model` saved in `path` by `Model.save`, compiled as it was when the
    optimizer and loss had names; `module` replaces the saved description.

    An experiment workdir (one with config.json) is read by `jdl.load_workdir(path, which,
    model=module)` instead. A module that does not fit the saved weights raises
    CheckpointMismatchError naming the differing parameters.
    """
    from jdl.keras.model import Model

    path = Path(path)
    if is_workdir(path):
        return load_workdir(path, which, model=module)
    spec = read_spec(path)
    module = rebuild_module(spec) if module is None else module
    model = Model(module, input_shape=spec["input_shape"], seed=spec["seed"])
    compile_spec = spec["compile"]
    named = compile_spec and compile_spec["optimizer"] and compile_spec["loss"]
    if named:
        model.compile(**compile_spec)
    state = model.state
    template = Weights(state.step, state.params, state.batch_stats)
    weights = _restore(path / "weights", template, spec["class"], type(module).__name__)
    state = state.replace(step=weights.step, params=weights.params, batch_stats=weights.batch_stats)
    if named:
        optimizer = _restore(path / "optimizer", OptimizerState(state.opt_state), "", "")
        state = state.replace(opt_state=optimizer.opt_state)
    model.state = state
    return model


def _restore(directory: Path, template, saved_class: str, given_class: str):
    with Checkpointer(directory) as checkpointer:
        try:
            restored, _ = checkpointer.restore(template)
        except CheckpointMismatchError as mismatch:
            raise CheckpointMismatchError(
                f"The module {given_class} does not fit the model saved in "
                f"{directory.parent} (saved from {saved_class}). {mismatch}"
            ) from mismatch
    return restored
