"""`jdl.Model`: Keras's compile / fit / evaluate / predict / save on any linen or NNX module.

A thin layer: the module goes through an adapter (`jdl.keras.adapters`), the steps are
pure (`jdl.keras.steps`), compilation is a `jdl.parallel.Strategy`, and `fit` runs on jdl's
one training engine (`jdl.engine.train`). Everything a user can get wrong is checked before
the first step, and nothing is written unless `workdir` or a callback asks for it.
"""

import contextlib
import dataclasses
import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdl import engine
from jdl.data import Dataset
from jdl.keras import data, objectives, saving, steps
from jdl.keras.adapters import adapt
from jdl.keras.callbacks import EngineCallbacks, History
from jdl.losses import check_distillation_settings
from jdl.parallel import Strategy
from jdl.state import TrainState, count_params
from jdl.tasks.base import Task

# Keras's defaults for optimizers given by name (learning rate and epsilon included).
OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "adam": lambda: optax.adam(1e-3, eps=1e-7),
    "adamw": lambda: optax.adamw(1e-3, eps=1e-7, weight_decay=0.004),
    "sgd": lambda: optax.sgd(0.01),
    "rmsprop": lambda: optax.rmsprop(1e-3, decay=0.9, eps=1e-7),
    "adagrad": lambda: optax.adagrad(1e-3, initial_accumulator_value=0.1, eps=1e-7),
}


@dataclasses.dataclass(frozen=True)
class Compiled:
    """What `compile` fixed: the optimizer, loss, metrics, compile mode and steps per call.

    `spec` records the names (None for callables and optax objects) so that `jdl.load` can
    compile the loaded model the same way.
    """

    tx: optax.GradientTransformation
    loss_name: str
    loss: objectives.PerExample
    metrics: dict[str, objectives.PerExample]
    strategy: Strategy
    steps_per_call: int
    spec: dict

    @functools.cached_property
    def train_step(self) -> Callable:
        """The pure train step with this loss and these metrics bound."""
        return functools.partial(steps.train_step, loss=self.loss, metrics=self.metrics)

    @functools.cached_property
    def eval_step(self) -> Callable:
        """The pure eval step with this loss and these metrics bound."""
        return functools.partial(steps.eval_step, loss=self.loss, metrics=self.metrics)

    @functools.cached_property
    def eval_fn(self) -> Callable:
        """The eval step compiled for the strategy (once per compile)."""
        return self.strategy.compile_eval(self.eval_step)


def resolve_optimizer(optimizer) -> optax.GradientTransformation:
    """An optax transformation from a Keras name or as given."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"Unknown optimizer {optimizer!r}; valid names: {sorted(OPTIMIZERS)} or an optax "
            "GradientTransformation"
        )
    return OPTIMIZERS[optimizer]()


class Model:
    """A Flax module (linen or NNX) with Keras's training interface.

    `input_shape` (one example's shape, without the batch axis) builds the parameters at
    once; otherwise the first `fit` (or `evaluate`) builds them from its data. Outputs are
    logits: a final softmax or sigmoid belongs to the loss, as with Keras's
    `from_logits=True`. `seed` fixes initialisation, shuffling and dropout.
    """

    def __init__(self, module: Any, input_shape: Sequence[int] | None = None, *, seed: int = 0):
        self.module = module
        self.adapter = adapt(module)
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.seed = seed
        self.state: TrainState | None = None
        self.num_outputs: int | None = None
        self.compiled: Compiled | None = None
        self.history: History | None = None
        self.stop_training = False
        self._live_state = None  # the engine's state while `fit` runs callbacks
        self._predict_fns: dict[str, Callable] = {}
        if self.input_shape is not None:
            self.build(self.input_shape)

    # --- building and compiling --------------------------------------------------------
    def build(self, input_shape: Sequence[int]) -> None:
        """Initialises the parameters for examples of `input_shape`."""
        input_shape = tuple(int(n) for n in input_shape)
        rng = jax.random.fold_in(jax.random.key(self.seed), 0)
        variables = jax.jit(self.adapter.init, static_argnums=1)(rng, input_shape)
        x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
        outputs = jax.eval_shape(
            lambda v, x: self.adapter.apply(v, x, train=False)[0], variables, x
        )
        self.input_shape = input_shape
        self.num_outputs = outputs.shape[-1] if outputs.ndim > 1 else 1
        tx = self.compiled.tx if self.compiled else optax.identity()
        self.state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            opt_state=tx.init(variables["params"]),
            batch_stats=variables["batch_stats"],
            model=self.adapter,
            tx=tx,
        )

    def compile(
        self,
        optimizer: str | optax.GradientTransformation = "adam",
        loss: str | objectives.PerExample | None = None,
        metrics: Sequence[str | objectives.PerExample] | None = None,
        parallel: str = "jit",
        steps_per_call: int = 8,
    ) -> None:
        """Fixes the optimizer (a Keras name or an optax transformation), the loss (a name of
        `objectives.LOSSES` or `(outputs, labels) -> per-example loss`), the metrics, the
        compile mode ("jit" | "sharded" | "pmap") and how many steps run per compiled call
        (a `lax.scan`; 8 by default, which measured faster than Keras's `fit` on the
        documents' MLP, where one step per call lost to it: benchmarks/fit_speed.py).
        Compiling again keeps the weights and starts the optimizer afresh, as in Keras."""
        if loss is None:
            raise ValueError(f"compile needs a loss: one of {sorted(objectives.LOSSES)}")
        if steps_per_call < 1:
            raise ValueError(f"steps_per_call must be >= 1; got {steps_per_call}")
        loss_name, loss_fn = objectives.resolve_loss(loss)
        tx = resolve_optimizer(optimizer)
        spec = {
            "optimizer": optimizer if isinstance(optimizer, str) else None,
            "loss": loss if isinstance(loss, str) else None,
            "metrics": [m for m in metrics or () if isinstance(m, str)],
            "parallel": parallel,
            "steps_per_call": steps_per_call,
        }
        self.compiled = Compiled(
            tx=tx,
            loss_name=loss_name,
            loss=loss_fn,
            metrics=objectives.resolve_metrics(metrics, loss_name),
            strategy=Strategy(parallel),
            steps_per_call=steps_per_call,
            spec=spec,
        )
        if self.state is not None:
            self.state = self.state.replace(tx=tx, opt_state=tx.init(self.state.params))

    # --- training and inference --------------------------------------------------------
    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int = 32,
        epochs: int = 1,
        verbose: int = 1,
        callbacks: Sequence[Any] | None = None,
        validation_split: float = 0.0,
        validation_data: tuple | None = None,
        shuffle: bool = True,
        workdir: str | Path | None = None,
        data_dir: str | None = None,
        teacher: "Model | None" = None,
        temperature: float = 4.0,
        alpha: float = 0.9,
    ) -> History:
        """Trains for `epochs` more epochs from the current weights; returns the `History`.

        `x`, `y`: arrays, or `x` a jdl `Dataset` or a dataset name (`jdl.data.DATASETS`:
        tfds names read from `data_dir`) whose eval split validates. `workdir` adds
        TensorBoard events, metrics.jsonl, curves.png and checkpoints there. A trained
        classifier `teacher` (a `jdl.Model` with as many outputs) distils into this one:
        the loss trained on is `jdl.losses.distillation_loss` (`temperature`, `alpha`); the
        teacher is never updated, and the reported loss stays the compiled one.
        """
        compiled = self._require_compiled("fit")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1; got {epochs}")
        dataset = self._training_data(
            x, y, batch_size, validation_split, validation_data, shuffle, data_dir
        )
        train_step = compiled.train_step
        if teacher is not None:
            train_step = self._distilled(train_step, teacher, temperature, alpha)
        compiled.strategy.check_batch_size(dataset.batch_size)
        compiled.strategy.check_batch_size(dataset.eval_batch_size)
        if compiled.strategy.mode == "pmap":
            self.adapter.check_pmap({"batch_stats": self.state.batch_stats})
        step, steps_per_epoch = int(self.state.step), dataset.steps_per_epoch
        has_validation = dataset.info.num_eval > 0
        settings = engine.Settings(
            num_steps=step + epochs * steps_per_epoch,
            steps_per_call=compiled.steps_per_call,
            log_every=steps_per_epoch,
            best_metric="eval/loss" if has_validation else "train/loss",
            best_mode="min",
            keep_checkpoints=1,
            progress_bar=verbose > 0,
            seed=self.seed,
            resume=False,  # the model's own weights are the starting point, as in Keras
            label=type(self.module).__name__,
        )
        task = Task(self.state, train_step, compiled.eval_step)
        self.history = History()
        keras_callbacks = [self.history, *(callbacks or ())]
        for callback in keras_callbacks:
            _hook(callback, "set_model", self)
            _hook(callback, "on_train_begin", {})
        self.stop_training = False
        bridge = EngineCallbacks(self, keras_callbacks, step // steps_per_epoch + 1)
        # verbose=0 prints nothing, as in Keras: the engine's lines go to stdout.
        quiet = contextlib.redirect_stdout(io.StringIO()) if verbose == 0 else None
        try:
            with quiet or contextlib.nullcontext():
                result = engine.train(
                    task, dataset, compiled.strategy, settings, workdir, callbacks=[bridge]
                )
        finally:
            self._live_state = None
        self.state = result.state
        last_logs = {name: values[-1] for name, values in self.history.history.items()}
        for callback in keras_callbacks:
            _hook(callback, "on_train_end", last_logs)
        return self.history

    def _distilled(self, train_step, teacher: "Model", temperature: float, alpha: float):
        """`train_step` on the distillation loss against `teacher`, after checking both."""
        check_distillation_settings(temperature, alpha)
        classifying = ("sparse_categorical_crossentropy", "categorical_crossentropy")
        if self.compiled.loss_name not in classifying:
            raise ValueError(
                f"fit(teacher=...) distils classifiers; compile with one of {list(classifying)}, "
                f"not {self.compiled.loss_name!r}"
            )
        if not isinstance(teacher, Model) or teacher.state is None:
            raise ValueError("The teacher must be a jdl.Model that has been built and trained")
        if teacher.num_outputs != self.num_outputs:
            raise ValueError(
                f"The teacher has {teacher.num_outputs} outputs and this model "
                f"{self.num_outputs}: distillation needs the same classes"
            )
        teacher_loss = functools.partial(
            steps.distillation_loss,
            teacher=teacher.state.replace(tx=None, opt_state=None),
            temperature=temperature,
            alpha=alpha,
        )
        return functools.partial(train_step, teacher_loss=teacher_loss)

    def evaluate(
        self, x: Any, y: Any, batch_size: int = 32, verbose: int = 0, return_dict: bool = False
    ) -> list[float] | dict[str, float]:
        """`[loss, *metrics]` over every example of (x, y) once (a dict with `return_dict`)."""
        compiled = self._require_compiled("evaluate")
        del verbose  # evaluation prints nothing
        compiled.strategy.check_batch_size(batch_size)
        x, y = data.as_split(x, y)
        self._check_or_build(x.shape[1:])
        objectives.check_labels(compiled.loss_name, y, self.num_outputs, "y")
        split = data.EvalSplit(x, y, batch_size)
        state = compiled.strategy.put_replicated(self.state)
        means = engine.evaluate(compiled.eval_fn, state, split, compiled.strategy)
        results = {"loss": means["eval/loss"]}
        results.update({name: means[f"eval/{name}"] for name in compiled.metrics})
        return results if return_dict else list(results.values())

    def predict(self, x: Any, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        """The model's outputs (logits) for every example of `x`, computed in compiled
        batches of `batch_size` (the last one padded, the padding dropped)."""
        del verbose
        x = data.as_inputs(x)
        if self.state is None:
            raise ValueError(
                "This model has no parameters yet: call fit() first, or build it with "
                "jdl.Model(module, input_shape=...) to predict with its initial weights"
            )
        self._check_input_shape(x.shape[1:])
        strategy = self.compiled.strategy if self.compiled else Strategy("jit")
        strategy.check_batch_size(batch_size)
        predict_fn = self._predict_fn(strategy)
        state = strategy.put_replicated(self.state)
        outputs = []
        for batch in data.padded_batches({data.input_key(x): x}, batch_size):
            real = int(batch.pop("mask").sum())
            outputs.append(np.asarray(predict_fn(state, strategy.put_batch(batch)))[:real])
        return np.concatenate(outputs)

    # --- weights, description, saving --------------------------------------------------
    def get_weights(self) -> dict:
        """The current parameters and batch statistics, as host arrays."""
        state = self._current_state()
        return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})

    def set_weights(self, weights: dict) -> None:
        """Replaces the parameters and batch statistics (as `get_weights` returns them)."""
        self.state = self._require_state().replace(
            params=weights["params"], batch_stats=weights["batch_stats"]
        )

    def count_params(self) -> int:
        """Number of trainable parameters."""
        return count_params(self._require_state().params)

    def summary(self) -> None:
        """Prints the layers, their output shapes and parameter counts, and the total."""
        self._require_state()
        print(self.adapter.summary(self.input_shape))
        print(f"Total trainable parameters: {self.count_params():,}")

    def save(self, path: str | Path) -> None:
        """Writes the weights, optimizer state and what rebuilds the module to `path` (a
        folder, through orbax); `jdl.load(path)` reads it back in any process."""
        saving.save(self, path)

    def show_live_state(self, state) -> None:
        """Lets callbacks see the engine's state of the epoch just ended (used by `fit`)."""
        self._live_state = state

    # --- helpers -----------------------------------------------------------------------
    def _current_state(self) -> TrainState:
        if self._live_state is not None:
            return jax.device_get(self._live_state)
        return self._require_state()

    def _require_state(self) -> TrainState:
        if self.state is None:
            raise ValueError(
                "This model has no parameters yet: call fit() first, or give "
                "jdl.Model(module, input_shape=...)"
            )
        return self.state

    def _require_compiled(self, action: str) -> Compiled:
        if self.compiled is None:
            raise ValueError(
                f"Call model.compile(optimizer=..., loss=..., metrics=[...]) before {action}()"
            )
        return self.compiled

    def _check_input_shape(self, shape: Sequence[int]) -> None:
        if tuple(shape) != self.input_shape:
            raise ValueError(
                f"Input examples have shape {tuple(shape)}, but the model was built for "
                f"{self.input_shape}"
            )

    def _check_or_build(self, shape: Sequence[int]) -> None:
        if self.state is None:
            self.build(shape)
        else:
            self._check_input_shape(shape)

    def _training_data(
        self, x, y, batch_size, validation_split, validation_data, shuffle, data_dir
    ) -> Dataset:
        """The dataset `fit` trains on, after every check that can be made before training."""
        loss_name = self.compiled.loss_name
        if isinstance(x, Dataset | str):
            if y is not None or validation_data is not None or validation_split:
                raise ValueError(
                    "With a Dataset or a dataset name as x, give no y, validation_data or "
                    "validation_split: its eval split validates"
                )
            if isinstance(x, str):
                x = data.named_dataset(x, batch_size=batch_size, seed=self.seed, data_dir=data_dir)
            self._check_or_build(x.info.input_shape)
            return x
        train = data.as_split(x, y)
        validation = None
        if validation_data is not None:
            validation = data.as_split(*validation_data, name="x_val")
            if validation[0].shape[1:] != train[0].shape[1:]:
                raise ValueError(
                    f"Validation examples have shape {validation[0].shape[1:]} but training "
                    f"examples {train[0].shape[1:]}"
                )
        elif validation_split:
            train, validation = data.split_off_validation(train, validation_split)
        self._check_or_build(train[0].shape[1:])
        for split, (_, labels) in (("y", train), ("y_val", validation or (None, None))):
            if labels is not None:
                objectives.check_labels(loss_name, labels, self.num_outputs, split)
        return data.array_dataset(
            train,
            validation,
            batch_size=batch_size,
            seed=self.seed,
            shuffle=shuffle,
        )

    def _predict_fn(self, strategy: Strategy) -> Callable:
        if strategy.mode not in self._predict_fns:
            self._predict_fns[strategy.mode] = strategy.compile_predict(steps.predict_step)
        return self._predict_fns[strategy.mode]


def _hook(callback, name: str, *args) -> None:
    """Calls an optional hook of a user's callback."""
    method = getattr(callback, name, None)
    if method is not None:
        method(*args)
