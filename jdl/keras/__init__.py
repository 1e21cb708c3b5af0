"""The Keras-style layer: `Model(module)` with compile / fit / evaluate / predict / save,
`load(path)`, and callbacks, for any linen or NNX module, over jdl's engine and steps."""

from jdl.keras.callbacks import Callback, EarlyStopping, History, ModelCheckpoint
from jdl.keras.model import Model
from jdl.keras.saving import load

__all__ = ["Callback", "EarlyStopping", "History", "Model", "ModelCheckpoint", "load"]
