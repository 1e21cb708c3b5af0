"""One interface over linen and NNX modules: initialise, apply, describe.

The Keras layer never calls a module directly. An adapter turns a module into two pure
functions over plain dicts of arrays, `init(rng, input_shape) -> variables` and
`apply(variables, x, *, train, rng, axis_name) -> (outputs, batch_stats)`, so the same
pure steps train either kind and every compile mode (jit, sharded, pmap) works unchanged.

NNX modules go through `nnx.split` / `nnx.merge`, not `nnx.bridge`: the user hands us a
module that is already initialised, and `split` keeps exactly those parameters as a pure
state, while `bridge.ToLinen` would need the class and its constructor arguments and would
initialise anew. Each call merges the graph with the given arrays, so no step mutates a
Python object that outlives the trace.
"""

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

Variables = dict[str, Any]  # {"params": ..., "batch_stats": ...} (batch_stats may be {})


def takes_train_flag(call) -> bool:
    """Whether a module's `__call__` accepts a `train` keyword."""
    parameters = inspect.signature(call).parameters
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return "train" in parameters and parameters["train"].kind in kinds


class LinenAdapter:
    """A linen module; `train` is passed only when its `__call__` takes it."""

    kind = "linen"

    def __init__(self, module: nn.Module):
        self.module = module
        self.has_train_flag = takes_train_flag(module.__call__)
        self.binds_axis = "axis_name" in getattr(module, "__dataclass_fields__", {})

    def _train_kwargs(self, train: bool) -> dict:
        return {"train": train} if self.has_train_flag else {}

    def init(self, rng: jax.Array, input_shape: Sequence[int]) -> Variables:
        """Parameters and batch statistics for one example of `input_shape`."""
        x = jnp.zeros((1, *input_shape), jnp.float32)
        variables = self.module.init(
            {"params": rng, "dropout": rng}, x, **self._train_kwargs(False)
        )
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    def apply(self, variables: Variables, x, *, train: bool, rng=None, axis_name=None):
        """(outputs, new batch statistics); statistics average over `axis_name` if given."""
        module = self.module
        if axis_name is not None and self.binds_axis:
            module = module.clone(axis_name=axis_name)
        given = {k: v for k, v in variables.items() if v or k == "params"}
        outputs, updates = module.apply(
            given,
            x,
            **self._train_kwargs(train),
            rngs={"dropout": rng} if train and rng is not None else None,
            mutable=["batch_stats"],
        )
        return outputs, updates.get("batch_stats", variables.get("batch_stats", {}))

    def summary(self, input_shape: Sequence[int]) -> str:
        """Flax's table of the module's layers, output shapes and parameter counts."""
        x = jnp.zeros((1, *input_shape), jnp.float32)
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(0)}
        return self.module.tabulate(rngs, x, **self._train_kwargs(False), depth=1)

    def check_pmap(self, variables: Variables) -> None:
        """Refuses batch norm under pmap when the module cannot average it across devices."""
        if variables["batch_stats"] and not self.binds_axis:
            raise ValueError(
                f"{type(self.module).__name__} has batch norm but no `axis_name` field, so "
                "under parallel='pmap' each device would normalise with its own statistics "
                "and train differently from 'jit'. Add a field `axis_name: str | None = None` "
                "and pass it to nn.BatchNorm(axis_name=self.axis_name), or compile with "
                "parallel='jit' or 'sharded'."
            )

    def description(self) -> dict | None:
        """Class path and dataclass fields that rebuild the module, if they are plain data."""
        fields = {
            field.name: getattr(self.module, field.name)
            for field in dataclasses.fields(self.module)
            if field.init and field.name not in ("parent", "name")
        }
        if not all(_plain(value) for value in fields.values()):
            return None
        return {"class": class_path(self.module), "fields": fields}


class NNXAdapter:
    """An NNX module, split once into its graph and states; merged anew inside each call.

    Trainable state is every `nnx.Param`; `nnx.BatchStat` variables play the part of
    linen's `batch_stats`; the rest (RNG streams) is reseeded from the step's key on every
    call, so dropout masks depend only on (seed, step, device) as in the linen path.
    """

    kind = "nnx"

    def __init__(self, module: nnx.Module):
        self.module = module
        self.graphdef, params, stats, self.rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
        self.templates = (params, stats)
        self.variables = {"params": params.to_pure_dict(), "batch_stats": stats.to_pure_dict()}
        self.streams = sorted(
            {v.tag for _, v in nnx.to_flat_state(self.rest) if isinstance(v, nnx.RngKey)}
        )

    def init(self, rng: jax.Array, input_shape: Sequence[int]) -> Variables:
        """The module's own initial arrays (an NNX module is built initialised)."""
        del rng, input_shape
        return jax.tree.map(jnp.asarray, self.variables)

    def apply(self, variables: Variables, x, *, train: bool, rng=None, axis_name=None):
        """(outputs, new batch statistics) of a fresh merge of the graph with `variables`."""
        model = nnx.merge(self.graphdef, *self.templates, self.rest, copy=True)
        nnx.update(model, variables["params"])
        if variables["batch_stats"]:
            nnx.update(model, variables["batch_stats"])
        if rng is not None and self.streams:
            keys = {tag: jax.random.fold_in(rng, i) for i, tag in enumerate(self.streams)}
            nnx.reseed(model, **keys)
        if axis_name is not None:
            model.set_attributes(axis_name=axis_name, raise_if_not_found=False)
        if train:
            model.train()
        else:
            model.eval()
        outputs = model(x)
        return outputs, nnx.state(model, nnx.BatchStat).to_pure_dict()

    def summary(self, input_shape: Sequence[int]) -> str:
        """Flax's table of the module's layers, output shapes and parameter counts."""
        model = nnx.merge(self.graphdef, *self.templates, self.rest, copy=True)
        model.eval()
        return nnx.tabulate(model, jnp.zeros((1, *input_shape), jnp.float32), depth=1)

    def check_pmap(self, variables: Variables) -> None:
        """NNX batch norm takes the mapped axis through its `axis_name` attribute: always fine."""
        del variables

    def description(self) -> None:
        """NNX modules are built with live RNG streams, so they are never rebuilt from data."""
        return None


Adapter = LinenAdapter | NNXAdapter


def adapt(module: Any) -> Adapter:
    """The adapter for a linen or NNX module; anything else is refused with what is accepted."""
    if isinstance(module, nn.Module):
        return LinenAdapter(module)
    if isinstance(module, nnx.Module):
        return NNXAdapter(module)
    raise TypeError(
        f"jdl.Model needs a flax.linen.Module or a flax.nnx.Module instance; got "
        f"{type(module).__name__}"
    )


def class_path(obj: Any) -> str:
    """`package.module:Class` of an object's class."""
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _plain(value: Any) -> bool:
    """JSON-representable configuration (numbers, strings, None, lists and tuples of them)."""
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)
