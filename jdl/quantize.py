"""Int8 models through qwix: post-training quantization and quantization-aware training.

Two post-training modes (`MODES`):
- "static": qwix's PTQ. Weights int8 per output channel; every matmul and convolution
  input int8 with a scale fixed beforehand from a few hundred calibration examples
  (the mean of each batch's abs-max). Matmuls and convolutions run on int8.
- "weights_only": weights int8 per output channel, dequantized to float before a float
  forward pass: a 4x smaller file, the float model's speed.
Quantization-aware training (`quantization_aware`) quantizes the forward pass of every
matmul and convolution (weights and inputs, dynamic scales) and keeps float gradients
(straight-through); the parameters stay float, so they load and quantize like any others.

qwix intercepts `jax.lax.dot_general` and `jax.lax.conv_general_dilated` called from a
module. jdl's CPU convolution (`jdl.models.conv.PatchConv`) multiplies patches with `@`, which qwix
does not see, so a CNN is quantized with `conv_impl="xla"`: the same parameters, and
qwix's int8 convolution.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import serialization, struct
from qwix._src.core import conv_general as qwix_conv_general
from qwix._src.core import dot_general as qwix_dot_general
from qwix._src.core import qarray as qwix_qarray

from jdl.checkpointing import Checkpointer, CheckpointError
from jdl.stored import INT8_FORMAT, as_nested_dicts, from_nested_dicts, read_checkpoint

MODES = ("static", "weights_only")


class QuantizationError(ValueError):
    """A model, its parameters or a calibration set that cannot be quantized as asked."""


def qwix_ready(model: nn.Module) -> nn.Module:
    """`model` with convolutions qwix can intercept (`conv_general_dilated`), if it has a choice."""
    if "conv_impl" in getattr(model, "__dataclass_fields__", {}):
        return model.clone(conv_impl="xla")
    return model


def quantization_aware(model: nn.Module) -> nn.Module:
    """`model` with int8 forward matmuls and convolutions (weights per channel, inputs with
    dynamic scales) and float gradients: a drop-in `state.model` for the usual steps."""
    rule = qwix.QtRule(module_path=".*", weight_qtype="int8", act_qtype="int8")
    return qwix.quantize_model(qwix_ready(model), qwix.QtProvider([rule]))


def _static_rule(rule_type: type) -> Any:
    return rule_type(module_path=".*", weight_qtype="int8", act_qtype="int8", act_static_scale=True)


@struct.dataclass
class QuantizedModel:
    """An int8 model ready to predict: `quantized(inputs) -> logits`.

    `variables` hold int8 weights (qwix `QArray`s), float biases and, in "static" mode,
    the input scales; `model` is the module that runs them.
    """

    variables: dict
    model: nn.Module = struct.field(pytree_node=False)
    mode: str = struct.field(pytree_node=False)
    input_shape: tuple[int, ...] = struct.field(pytree_node=False)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        variables = self.variables
        if self.mode == "weights_only":
            variables = {**variables, "params": dequantize(variables["params"])}
        return self.model.apply(variables, inputs, train=False)


def check_variables(variables: Any) -> None:
    """Raises unless `variables` hold the model's parameters (a trained or restored model)."""
    if not isinstance(variables, dict) or not variables.get("params"):
        raise QuantizationError(
            "Cannot quantize a model without parameters: train it or restore a checkpoint "
            f"first and pass its variables ({{'params': ...}}); got {type(variables).__name__}"
        )


def _batches(inputs: np.ndarray, batch_size: int):
    return (inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size))


class _Calibrator(qwix.QtProvider):
    """Runs matmuls and convolutions in float and records each one's input abs-max in
    qwix's `quant_stats`, which `qwix.quantize_params` turns into static scales.

    qwix's own recorder (QAT with `act_static_scale`) updates the statistics inside the
    convolution's `custom_vjp` and leaks a tracer in qwix 0.1.8; this records them outside.
    """

    def _record(self, op_name: str, lhs: jax.Array, how) -> None:
        rule, op_id = self._get_current_rule_and_op_id(op_name)
        if rule is not None:
            calibration = qwix_qarray.calibrate(lhs, how)
            self._update_and_get_quant_stat(f"{op_id}_lhs", tuple(rule.act_batch_axes), calibration)

    def dot_general(self, lhs, rhs, dimension_numbers, *args, **kwargs):
        how = qwix_dot_general.get_how_to_quantize(
            dimension_numbers=dimension_numbers,
            ndims=(lhs.ndim, rhs.ndim),
            for_lhs=True,
            tile_size=None,
            qtype="int8",
            calibration_method="absmax",
        )
        self._record("dot_general", lhs, how)
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, *args, **kwargs)

    def conv_general_dilated(self, lhs, rhs, window_strides, padding, *args, **kwargs):
        numbers = jax.lax.conv_dimension_numbers(
            lhs.shape, rhs.shape, kwargs.get("dimension_numbers")
        )
        how = qwix_conv_general.get_how_to_quantize(
            dimension_numbers=numbers, for_lhs=True, qtype="int8", calibration_method="absmax"
        )
        self._record("conv_general_dilated", lhs, how)
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)


def calibrate(model: nn.Module, variables: dict, inputs: np.ndarray, batch_size: int = 256) -> dict:
    """qwix's `quant_stats`: per matmul / convolution input, the mean over `inputs` of
    each example's abs-max (the static scales of "static" mode)."""
    check_variables(variables)
    if len(inputs) == 0:
        raise QuantizationError(
            "The calibration set is empty: pass a few hundred training examples"
        )
    observer = qwix.quantize_model(qwix_ready(model), _Calibrator([_static_rule(qwix.QtRule)]))

    @jax.jit
    def observe(variables, stats, batch):
        _, updates = observer.apply(
            {**variables, **stats}, batch, train=False, mutable=["quant_stats"]
        )
        return updates

    stats = {}
    for batch in _batches(np.asarray(inputs), batch_size):
        stats = observe(variables, stats, batch)
    return stats["quant_stats"]


def _ptq_model(model: nn.Module, mode: str) -> nn.Module:
    if mode == "weights_only":
        return model
    return qwix.quantize_model(
        qwix_ready(model), qwix.PtqProvider([_static_rule(qwix.QuantizationRule)])
    )


def _abstract_variables(model: nn.Module, mode: str, input_shape: Sequence[int]) -> dict:
    """Shapes and dtypes of the quantized variables, with qwix's how-to-quantize records."""
    ptq_model = _ptq_model(model, mode)
    dummy = jnp.zeros((1, *input_shape))
    abstract = jax.eval_shape(
        lambda key: ptq_model.init(key, dummy, train=False), jax.random.key(0)
    )
    if mode == "weights_only":
        abstract = {**abstract, "params": jax.eval_shape(quantize_weights, abstract["params"])}
    return dict(abstract)


def quantize_weights(params: Any) -> Any:
    """Every weight matrix or kernel (rank >= 2) int8 per output channel (last axis)."""

    def quantize(x):
        if x.ndim < 2:
            return x
        return qwix.quantize(x, "int8", channelwise_axes=[x.ndim - 1])

    return jax.tree.map(quantize, params)


def dequantize(params: Any) -> Any:
    """Float parameters back from `quantize_weights`."""
    is_q = lambda x: isinstance(x, qwix.QArray)  # noqa: E731
    return jax.tree.map(lambda x: qwix.dequantize(x) if is_q(x) else x, params, is_leaf=is_q)


def post_training_quantize(
    model: nn.Module,
    variables: dict,
    input_shape: Sequence[int],
    calibration_inputs: np.ndarray | None = None,
    *,
    mode: str = "static",
    batch_size: int = 256,
) -> QuantizedModel:
    """Int8 `model` from trained float `variables`; "static" mode needs `calibration_inputs`
    (a few hundred training examples), "weights_only" none."""
    if mode not in MODES:
        raise QuantizationError(f"Unknown quantization mode {mode!r}; valid modes: {list(MODES)}")
    check_variables(variables)
    variables = jax.tree.map(jnp.asarray, variables)  # qwix takes jax.Arrays, not NumPy
    input_shape = tuple(input_shape)
    abstract = _abstract_variables(model, mode, input_shape)
    rest = {k: v for k, v in variables.items() if k != "params"}
    if mode == "weights_only":
        params = quantize_weights(variables["params"])
    else:
        if calibration_inputs is None:
            raise QuantizationError("Static quantization needs calibration_inputs; got None")
        stats = calibrate(model, variables, calibration_inputs, batch_size)
        params = qwix.quantize_params(variables["params"], abstract["params"], stats)
    return QuantizedModel(
        variables={**rest, "params": params},
        model=_ptq_model(model, mode),
        mode=mode,
        input_shape=input_shape,
    )


# --- checkpoints ----------------------------------------------------------------------


@struct.dataclass
class _SavedArrays:
    """What `Checkpointer` saves: a step and the variables as nested dicts of arrays."""

    step: jax.Array
    arrays: dict


def save_float(directory: str | Path, variables: dict) -> None:
    """Float `variables` saved the way `save_quantized` saves int8 ones (to compare sizes)."""
    _save(directory, variables, {"format": "float"})


def save_quantized(directory: str | Path, quantized: QuantizedModel) -> None:
    """Saves the int8 variables in `directory` through orbax; an existing one raises."""
    metadata = {
        "format": INT8_FORMAT,
        "mode": quantized.mode,
        "input_shape": list(quantized.input_shape),
    }
    _save(directory, quantized.variables, metadata)


def _save(directory: str | Path, variables: dict, metadata: dict) -> None:
    if Path(directory).exists():
        raise FileExistsError(f"{directory} exists; saving never replaces a checkpoint")
    state = _SavedArrays(step=jnp.zeros((), jnp.int32), arrays=as_nested_dicts(variables))
    with Checkpointer(directory, max_to_keep=1) as checkpointer:
        checkpointer.save(0, state, metadata=metadata)


def load_quantized(directory: str | Path, model: nn.Module) -> QuantizedModel:
    """The int8 `model` saved by `save_quantized` in `directory` (the float module given)."""
    saved, metadata, _ = read_checkpoint(directory)
    if metadata.get("format") != INT8_FORMAT:
        raise CheckpointError(
            f"{directory} holds float parameters, not an int8 model: quantize them with "
            "jdl.quantize.post_training_quantize, then save with save_quantized"
        )
    mode, input_shape = metadata["mode"], tuple(metadata["input_shape"])
    template = _abstract_variables(model, mode, input_shape)
    variables = from_nested_dicts(template, saved["arrays"], f"int8 checkpoint {directory}")
    return QuantizedModel(
        variables=variables, model=_ptq_model(model, mode), mode=mode, input_shape=input_shape
    )


def checkpoint_bytes(directory: str | Path) -> int:
    """Bytes on disk of everything under `directory` (a saved checkpoint, with orbax's
    bookkeeping: about 10 KB of metadata per checkpoint, and float32 arrays compressed)."""
    return sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())


def serialized_bytes(variables: Any) -> int:
    """Bytes of `variables` serialized as one flax msgpack file: the arrays, their names
    and shapes, nothing else. Float and int8 models compare on this without a checkpoint's
    fixed overhead, which dominates for a model as small as the documents' CNN."""
    nested = jax.device_get(as_nested_dicts(variables))
    return len(serialization.msgpack_serialize(nested))


__all__ = [
    "MODES",
    "QuantizationError",
    "QuantizedModel",
    "calibrate",
    "checkpoint_bytes",
    "load_quantized",
    "post_training_quantize",
    "quantization_aware",
    "qwix_ready",
    "save_float",
    "save_quantized",
    "serialized_bytes",
]
