"""Multi-layer perceptron for flat or image inputs."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jdl.models.activations import activation_layer


class MLP(nn.Module):
    """Dense layers with an activation, optional batch norm and dropout, then a linear head.

    Inputs of any rank are flattened after the batch axis, so images go in unchanged.
    The head returns logits; a sigmoid or softmax belongs to the loss.
    """

    hidden_sizes: Sequence[int] = (256,)
    num_outputs: int = 10
    activation: str = "relu"
    dropout_rate: float = 0.0
    batch_norm: bool = False
    dtype: str = "float32"  # computation dtype; "bfloat16" for mixed precision
    # Name of the mapped axis (under pmap) over which batch-norm statistics are averaged.
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x_BxD = x.reshape((x.shape[0], -1))
        for width in self.hidden_sizes:
            x_BxD = nn.Dense(width, use_bias=not self.batch_norm, dtype=self.dtype)(x_BxD)
            if self.batch_norm:
                x_BxD = nn.BatchNorm(
                    use_running_average=not train, axis_name=self.axis_name, dtype=self.dtype
                )(x_BxD)
            x_BxD = activation_layer(self.activation)(x_BxD)
            if self.dropout_rate > 0:
                x_BxD = nn.Dropout(self.dropout_rate, deterministic=not train)(x_BxD)
        # Parameters stay float32; logits return to float32 for a stable loss.
        return nn.Dense(self.num_outputs, dtype=self.dtype)(x_BxD).astype(jnp.float32)
