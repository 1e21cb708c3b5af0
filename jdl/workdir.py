"""A workdir describes its own run: config.json (the resolved config) and dataset.json (the
shapes the model was built for), written once by the first run on process 0.

They let `load_workdir` rebuild a registry model from the workdir alone, and let a rerun
refuse a workdir that another kind of run wrote (another model or task).
"""

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jdl.checkpointing import Checkpointer, CheckpointError
from jdl.config import validate_config
from jdl.data import Dataset, DatasetInfo
from jdl.metrics import lower_is_better
from jdl.models import GIVEN_FIELDS, registered_name
from jdl.tasks import make_task

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
IDENTITY = ("model", "task")  # what a rerun must share with the run that wrote the workdir
JSON_SCALARS = (bool, int, float, str, type(None))


def _json_value(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(_json_value(v) for v in value)
    return isinstance(value, JSON_SCALARS)


def describe_model(model: nn.Module) -> dict:
    """`config.model` for a module instance: its registered name and fields when it can be
    rebuilt from them, else its class (`"name": "<module>.<class>"`, `"rebuild": False`)."""
    fields = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.name not in GIVEN_FIELDS and f.init
    }
    name = registered_name(model)
    if name is not None and all(_json_value(v) for v in fields.values()):
        return {"name": name, **fields}
    return {"name": f"{type(model).__module__}.{type(model).__qualname__}", "rebuild": False}


def resolved_config(
    config: ml_collections.ConfigDict, model: nn.Module | None
) -> ml_collections.ConfigDict:
    """A validated config with `config.model` describing `model` when one is given."""
    if model is None:
        return config
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.model = ml_collections.ConfigDict(describe_model(model))
    return resolved


def dataset_record(dataset: Dataset) -> dict:
    """The dataset facts a model and its optimizer were built from."""
    return {**dataclasses.asdict(dataset.info), "steps_per_epoch": dataset.steps_per_epoch}


def _identity(config: Any) -> dict:
    return {key: dict(config[key]).get("name") for key in IDENTITY}


def check_or_record(workdir: Path, config: ml_collections.ConfigDict, dataset: Dataset) -> None:
    """Refuses a workdir whose config.json names another model or task (a ValueError saying
    how to start afresh); writes config.json and dataset.json when absent (process 0)."""
    path = workdir / CONFIG_FILE
    if path.exists():
        recorded = _identity(json.loads(path.read_text()))
        if recorded != _identity(config):
            raise ValueError(
                f"{workdir} holds a run of {recorded}, not of {_identity(config)} as this "
                f"config asks; use a new workdir, or delete {workdir} to start afresh"
            )
        return
    if jax.process_index() == 0:
        (workdir / DATASET_FILE).write_text(json.dumps(dataset_record(dataset), indent=2) + "\n")
        path.write_text(config.to_json(indent=2, sort_keys=True) + "\n")


class _Shapes(Dataset):
    """A dataset with no examples, only the recorded facts: enough to build a task's state."""

    def __init__(self, record: dict, batch_size: int):
        fields = {f.name for f in dataclasses.fields(DatasetInfo)}
        info = DatasetInfo(**{k: v for k, v in record.items() if k in fields})
        info = dataclasses.replace(info, input_shape=tuple(info.input_shape))
        super().__init__(info, batch_size=batch_size, eval_batch_size=batch_size, seed=0)
        self._steps_per_epoch = record["steps_per_epoch"]

    @property
    def steps_per_epoch(self) -> int:
        return self._steps_per_epoch

    def _train_batches(self, epoch: int, start_step: int):
        raise NotImplementedError("a rebuilt workdir has no data")

    def _unpadded_eval_batches(self):
        raise NotImplementedError("a rebuilt workdir has no data")

    def train_arrays(self):
        raise NotImplementedError("a rebuilt workdir has no data")


@dataclasses.dataclass
class Restored:
    """A trained model rebuilt from a workdir: its config, its host state and the step."""

    config: ml_collections.ConfigDict
    state: Any
    step: int

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The model's outputs (logits, or predictions for regression) for inputs `x`, in
        evaluation mode, `batch_size` examples per compiled call."""
        x = np.asarray(x)
        forward = jax.jit(lambda v, xb: self.state.model.apply(v, xb, train=False))
        variables = self.state.variables
        outputs = [
            np.asarray(forward(variables, jnp.asarray(x[i : i + batch_size])))
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(outputs)


def is_workdir(path: str | Path) -> bool:
    """Whether `path` is a workdir of `train_and_evaluate` (it has a config.json)."""
    return (Path(path) / CONFIG_FILE).is_file()


def load_workdir(
    workdir: str | Path, which: str = "best", model: nn.Module | None = None
) -> Restored:
    """The model of a `train_and_evaluate` workdir, from the workdir alone.

    `which`: "best" (by the run's best_metric) or "latest". A run of an unregistered module
    needs that module again: `load_workdir(workdir, model=MyModule())`.
    """
    workdir = Path(workdir)
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', not {which!r}")
    if not is_workdir(workdir):
        raise FileNotFoundError(
            f"{workdir} has no {CONFIG_FILE}: not a workdir of jdl.train_and_evaluate "
            "(or written before jdl recorded configs)"
        )
    recorded = json.loads((workdir / CONFIG_FILE).read_text())
    config = validate_config(ml_collections.ConfigDict(recorded))
    if model is None and config.model.get("rebuild") is False:
        raise ValueError(
            f"{workdir} was trained with {config.model.name}, which is not in jdl.models.MODELS; "
            "pass the module: load_workdir(workdir, model=MyModule(...))"
        )
    if config.task.name == "language_model":
        config.task.sample_tokens = 0  # sampling needs the vocabulary; a prediction does not
    record = json.loads((workdir / DATASET_FILE).read_text())
    template = make_task(config, _Shapes(record, config.batch_size), model=model).state
    mode = "min" if lower_is_better(config.best_metric) else "max"
    directory = workdir / "checkpoints"
    with Checkpointer(directory, best_metric=config.best_metric, best_mode=mode) as checkpointer:
        step = checkpointer.best_step() if which == "best" else checkpointer.latest_step()
        if step is None:
            step = checkpointer.latest_step()
        if step is None:
            raise CheckpointError(f"{directory} holds no checkpoint to load")
        state, _ = checkpointer.restore(template, step)
    return Restored(config=config, state=state, step=int(state.step))


__all__: Sequence[str] = [
    "CONFIG_FILE",
    "DATASET_FILE",
    "Restored",
    "check_or_record",
    "describe_model",
    "is_workdir",
    "load_workdir",
    "resolved_config",
]
