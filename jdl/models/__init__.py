"""Flax modules and the registry that builds them from a config by name."""

from collections.abc import Mapping
from typing import Any

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
]
