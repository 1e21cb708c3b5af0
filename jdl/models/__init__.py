"""Flax modules and the registry that builds them from a config by name."""

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import flax.linen as nn

from jdl.models.activations import ACTIVATIONS, PReLU
from jdl.models.cnn import CNN
from jdl.models.mlp import MLP
from jdl.models.rnn import RNNLanguageModel, RNNSequenceModel

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "rnn": RNNSequenceModel,  # sequence classifier / regressor (cell: rnn | lstm | gru)
    "rnn_lm": RNNLanguageModel,  # per-step next-token logits
}


ModuleClass = TypeVar("ModuleClass", bound=type[nn.Module])
GIVEN_FIELDS = ("parent", "name", "num_outputs", "axis_name")  # set by jdl or Flax, not configs


def register(name: str, *, replace: bool = False) -> Callable[[ModuleClass], ModuleClass]:
    """Class decorator: `@register("my_cnn")` adds a linen module to `MODELS`, so that
    configs can name it (`config.model = {"name": "my_cnn", ...its fields}`).

    A name already taken raises a ValueError unless `replace=True`; re-registering the same
    class (a re-run notebook cell) is allowed.
    """

    def add(cls: ModuleClass) -> ModuleClass:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register({name!r}) takes a flax.linen Module class, got {cls!r}")
        taken = MODELS.get(name)
        same = taken is not None and taken.__qualname__ == cls.__qualname__
        if taken is not None and not (replace or same):
            raise ValueError(
                f"Model name {name!r} is already registered for {taken.__module__}."
                f"{taken.__qualname__}; pick another name or pass replace=True"
            )
        MODELS[name] = cls
        return cls

    return add


def registered_name(module: nn.Module) -> str | None:
    """The name `module`'s class is registered under in `MODELS`, or None."""
    return next((name for name, cls in MODELS.items() if cls is type(module)), None)


def for_task(module: nn.Module, num_outputs: int) -> nn.Module:
    """A user's linen module made ready for a task with `num_outputs` outputs.

    jdl's steps call `module.apply(variables, inputs, train=bool)`: `__call__` must accept a
    `train` keyword (for dropout and batch norm). A module with a `num_outputs` field gets
    the task's count (the data's classes); one without must already produce it. An
    `axis_name` field, passed to its `BatchNorm`s, lets batch norm average across devices
    under pmap.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"model= takes a flax.linen Module instance, got {type(module).__name__}")
    parameters = inspect.signature(type(module).__call__).parameters
    if "train" not in parameters:
        raise ValueError(
            f"{type(module).__name__}.__call__ must take a `train` keyword (jdl calls "
            "module.apply(variables, x, train=True|False)); e.g. "
            "`def __call__(self, x, train: bool = False)`"
        )
    if "num_outputs" in {f.name for f in dataclasses.fields(module)}:
        return module.clone(num_outputs=num_outputs)
    return module


def build_model(model_config: Mapping[str, Any], num_outputs: int) -> nn.Module:
    """Instantiates `MODELS[model_config["name"]]` with the config's other fields.

    Raises a ValueError listing the valid names or fields when either is unknown.
    """
    fields = dict(model_config)
    name = fields.pop("name")
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid models: {sorted(MODELS)}")
    return configure(MODELS[name], fields, f"model {name!r}", num_outputs=num_outputs)


def configure(cls: type[nn.Module], fields: Mapping[str, Any], label: str, **given) -> nn.Module:
    """`cls(**given, **fields)`, the config's `fields` checked against the module's own.

    `given` are set by the caller from the data (output count, image shape), not by the
    config. Lists become tuples, so that modules stay hashable. An unknown field raises a
    ValueError naming it under `label` and listing the valid ones.
    """
    valid = set(cls.__dataclass_fields__) - {"parent", "name", "axis_name", *given}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ValueError(f"Unknown {label} field(s) {unknown}; valid fields: {sorted(valid)}")
    return cls(**given, **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


__all__ = [
    "ACTIVATIONS",
    "CNN",
    "MLP",
    "MODELS",
    "PReLU",
    "RNNLanguageModel",
    "RNNSequenceModel",
    "build_model",
    "configure",
    "for_task",
    "register",
    "registered_name",
]
