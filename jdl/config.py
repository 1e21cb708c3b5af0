"""The shared config vocabulary of every experiment, and its validation."""

from collections.abc import Mapping

import ml_collections

# Values of config.matmul_precision, all names JAX's default_matmul_precision accepts.
MATMUL_PRECISIONS = ("float32", "bfloat16", "BF16_BF16_F32", "tensorfloat32", "highest", "default")


def base_config() -> ml_collections.ConfigDict:
    """Every key the loop reads, with its default. Experiments override values, never add keys."""
    c = ml_collections.ConfigDict()
    # Data.
    c.dataset = "digits"  # mnist | fashion_mnist | cifar10 (tfds) | digits | breast_cancer
    c.data_dir = ml_collections.FieldReference(None, field_type=str)  # tfds data_dir
    c.download = True  # let tfds download and prepare a missing dataset
    c.batch_size = 128  # global: summed over all devices and processes
    c.eval_batch_size = 512  # eval batches are padded and masked: every example counts once
    c.data_on_device = False  # keep the train split on the device; one compiled call per epoch
    c.steps_per_call = 1  # K > 1 runs K steps in one call (lax.scan over K stacked batches)
    # > 1: each step's gradient over this many slices of the batch in turn: the same update
    # (models without batch norm), one slice's activations in memory at a time
    c.microbatches = 1
    # Optimisation (see jdl.optimizers.make_optimizer).
    c.num_epochs = 10  # passes over the train split
    c.num_steps = ml_collections.FieldReference(None, field_type=int)  # overrides num_epochs
    c.optimizer = "adam"  # sgd | momentum | nesterov | adam | adamw | adagrad | rmsprop
    c.learning_rate = 1e-3  # peak learning rate
    c.schedule = "constant"  # constant | cosine | warmup_cosine | exponential | step
    c.warmup_steps = 0  # warmup_cosine only
    c.decay_rate = 0.5  # exponential and step schedules
    c.decay_every = 1000  # steps; exponential and step schedules
    c.momentum = 0.9  # momentum and nesterov
    c.weight_decay = 0.0  # decoupled; skips biases and normalisation scales
    c.grad_clip_norm = 0.0  # global-norm clipping; 0 disables
    c.label_smoothing = 0.0  # softmax targets; gan: one-sided, D aims at 1 - this on real
    c.augment_shift = 0  # random shift of training images by up to this many pixels
    # Model: `name` picks from jdl.models.MODELS, the other fields are its attributes.
    c.model = ml_collections.ConfigDict({"name": "cnn"})
    # Task: `name` picks from jdl.tasks.TASKS, the other fields are its factory's options.
    c.task = ml_collections.ConfigDict({"name": "classification"})
    # Extra keyword options of the dataset's loader (e.g. {"seq_len": 100}); {} for none.
    c.data = ml_collections.ConfigDict()
    # Execution.
    c.seed = 0  # parameters, shuffling, dropout and augmentation
    c.parallel = "jit"  # jit | sharded | pmap
    # Matmul precision of the run (JAX's default_matmul_precision); None: JAX's own setting.
    # "bfloat16": float32 matmuls take one bfloat16 pass, summed in float32, as on a TPU; on
    # CPU jdl's convolutions honour it (several times faster matmuls with Intel AMX).
    c.matmul_precision = ml_collections.FieldReference(None, field_type=str)
    # CPU devices to split a host into (data parallel over its cores with sharded or pmap);
    # process-wide, applied before JAX's first operation; 0: JAX's default (one).
    c.cpu_devices = 0
    # Multiple processes (jax.distributed): each process reads its own shard of the data.
    c.distributed = False  # initialise jax.distributed; None fields below are auto-detected
    c.coordinator_address = ml_collections.FieldReference(None, field_type=str)  # "host:port"
    c.num_processes = ml_collections.FieldReference(None, field_type=int)  # processes in all
    c.process_id = ml_collections.FieldReference(None, field_type=int)  # this one's, from 0
    # Compiled programs saved across runs (jax's persistent cache); None: none from the library,
    # and the experiment command line's own (JDL_COMPILATION_CACHE, default ~/.cache/jdl/jax).
    c.compilation_cache_dir = ml_collections.FieldReference(None, field_type=str)
    c.time_budget_s = 0.0  # stop and save before this many seconds have passed; 0: no limit
    # Reporting and checkpoints (intervals in steps; both also happen at every epoch's end).
    c.log_every = 50  # train metrics to metrics.jsonl and TensorBoard
    c.eval_every = 0  # 0: only at the end of each epoch
    c.checkpoint_every = 0  # 0: only at the end of each epoch
    c.keep_checkpoints = 3  # the last K, plus the best by best_metric
    c.best_metric = "eval/accuracy"  # ranks checkpoints and drives early stopping
    # min | max | auto (or None): auto looks best_metric up in jdl.metrics.METRIC_MODES
    c.best_mode = ml_collections.FieldReference(None, field_type=str)
    c.early_stopping_patience = 0  # evaluations without improvement of best_metric; 0 disables
    c.progress_bar = True  # a tqdm bar on process 0
    return c


def validate_config(config: Mapping) -> ml_collections.ConfigDict:
    """A copy of `config` on top of the defaults; unknown keys or bad values raise ValueError."""
    merged = base_config()
    unknown = sorted(set(config) - set(merged))
    if unknown:
        raise ValueError(f"Unknown config key(s) {unknown}; valid keys: {sorted(merged)}")
    for key, value in dict(config).items():  # assignment: a given sub-config replaces the default
        merged[key] = value
    from jdl.metrics import metric_mode  # here, so that configs load without JAX
    from jdl.parallel import MODES

    if merged.parallel not in MODES:
        raise ValueError(f"Unknown compile mode parallel={merged.parallel!r}; valid: {list(MODES)}")
    for key in ("batch_size", "eval_batch_size", "steps_per_call", "log_every", "microbatches"):
        if merged[key] < 1:
            raise ValueError(f"Config {key} must be >= 1, got {merged[key]}")
    if merged.batch_size % merged.microbatches:
        raise ValueError(
            f"Config batch_size {merged.batch_size} does not split into microbatches="
            f"{merged.microbatches} equal slices; choose a divisor of the batch size"
        )
    if merged.matmul_precision not in (None, *MATMUL_PRECISIONS):
        raise ValueError(
            f"Unknown matmul_precision {merged.matmul_precision!r}; valid: "
            f"{list(MATMUL_PRECISIONS)} (None: JAX's default)"
        )
    if merged.cpu_devices < 0:
        raise ValueError(
            f"Config cpu_devices must be >= 0 (0: JAX's default), got {merged.cpu_devices}"
        )
    if merged.num_steps is None and merged.num_epochs < 1:
        raise ValueError(f"Config num_epochs must be >= 1, got {merged.num_epochs}")
    metric_mode(merged.best_metric, merged.best_mode)
    return merged


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Steps of the whole run: `num_steps` if set, else `num_epochs` epochs."""
    return config.num_steps or config.num_epochs * steps_per_epoch
