"""Pure train and eval steps, one module per task."""

from jdl.steps.classification import eval_step, train_step
from jdl.steps.metrics import summarize

__all__ = ["eval_step", "summarize", "train_step"]
