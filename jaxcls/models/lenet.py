"""LeNet-5 (LeCun et al. 1998) in its common modern form: ReLU by default and max or average subsampling.

C1 pads by 2, as usual for 28x28 MNIST, so inputs of 28x28 and up work; C5 is a 5x5 conv followed by a global
average pool, which is exactly the original 120-unit layer at 28x28 and generalises it to larger inputs.
There is no torchvision LeNet; the layer names follow the paper (c1, c3, c5, f6, output).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.models import MODELS, layers


@MODELS.register("lenet5")
class LeNet5(nn.Module):
  """conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> conv 120@5x5 -> global pool -> Dense 84 -> Dense."""

  num_classes: int
  activation: str = "relu"
  negative_slope: float = 0.01  # leaky_relu only
  pooling: str = "max"  # 'max' | 'avg' (the paper's subsampling is an average)
  dropout: float = 0.0  # before each Dense layer, in training only
  dtype: Any = jnp.float32

  def __post_init__(self):
    layers.check_activation(self.activation)
    layers.check_pooling(self.pooling)
    layers.check_rate("dropout", self.dropout)
    super().__post_init__()

  def _act(self, x: jax.Array) -> jax.Array:
    return layers.Activation(self.activation, self.negative_slope, dtype=self.dtype)(x)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Float32 logits [B, num_classes] from images [B, H, W, C]; `train` turns dropout on."""
    x = layers.pool(
      self._act(nn.Conv(6, (5, 5), padding=[(2, 2), (2, 2)], dtype=self.dtype, name="c1")(x)), self.pooling
    )
    x = layers.pool(self._act(nn.Conv(16, (5, 5), padding="VALID", dtype=self.dtype, name="c3")(x)), self.pooling)
    x = self._act(nn.Conv(120, (5, 5), padding="VALID", dtype=self.dtype, name="c5")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(layers.global_avg_pool(x))
    x = self._act(nn.Dense(84, dtype=self.dtype, name="f6")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="output")(x)
    return x.astype(jnp.float32)
