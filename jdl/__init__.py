"""jdl: pure JAX training steps, compiled for jit, sharded jit or pmap, with a loop around them."""

from jdl.config import base_config
from jdl.loop import TrainResult, evaluate, train_and_evaluate

__all__ = ["TrainResult", "base_config", "evaluate", "train_and_evaluate"]
