"""A small configurable CNN: the default model, sized for the 8x8 scikit-learn digits and CIFAR-like inputs.

Each block is `convs_per_block` 3x3 convolutions (each followed by batch norm and the activation) and then a
2x2/2 pooling, skipped once the feature map is under 2 pixels on a side, so three blocks still fit 8x8 inputs.
The features are then global-average-pooled (rather than flattened) so the same model takes any input size;
for digits the map is 1x1 by then and the two are identical.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.core.errors import ConfigError
from jaxcls.models import MODELS, layers

NORMS = ("batch", "none")


@MODELS.register("simple_cnn")
class SimpleCNN(nn.Module):
  """Conv blocks -> global average pool -> optional hidden Dense layers -> Dense head (float32 logits)."""

  num_classes: int
  widths: Sequence[int] = (32, 64, 128)  # conv channels of each block
  convs_per_block: int = 1
  activation: str = "relu"
  negative_slope: float = 0.01  # leaky_relu only
  norm: str = "batch"  # 'batch' | 'none'
  pooling: str = "max"  # 'max' | 'avg'
  dense: Sequence[int] = ()  # hidden Dense sizes between the pooled features and the head
  dropout: float = 0.1  # before every Dense layer, in training only
  dtype: Any = jnp.float32

  def __post_init__(self):
    layers.check_activation(self.activation)
    layers.check_pooling(self.pooling)
    if self.norm not in NORMS:
      raise ConfigError(f"Unknown norm {self.norm!r} for model 'simple_cnn'. Valid: {', '.join(NORMS)}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f"Model dropout must be in [0, 1), got {self.dropout!r}.")
    super().__post_init__()

  def _act(self, x: jax.Array) -> jax.Array:
    return layers.Activation(self.activation, self.negative_slope, dtype=self.dtype)(x)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Float32 logits [B, num_classes]; `train` turns dropout on (and batch statistics with norm='batch')."""
    use_bn = self.norm == "batch"
    for width in self.widths:
      for _ in range(self.convs_per_block):
        x = nn.Conv(width, (3, 3), padding=[(1, 1), (1, 1)], use_bias=not use_bn, dtype=self.dtype)(x)
        if use_bn:
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)(x)
        x = self._act(x)
      if min(x.shape[1], x.shape[2]) >= 2:
        x = layers.pool(x, self.pooling)
    x = layers.global_avg_pool(x)
    for size in self.dense:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = self._act(nn.Dense(size, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)
