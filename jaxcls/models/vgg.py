"""VGG (Simonyan and Zisserman 2014) with and without batch norm, laid out like torchvision.

Flax names are torchvision's Sequential indices (`features_0`, `features_1` for its norm, ..., `classifier_0`,
`classifier_3`, `classifier_6`), so ImageNet weights map one-to-one. The 'imagenet' head pools adaptively to 7x7
and flattens in torch's channel-first order, so any input of 32x32 or more works; the 'small' variant replaces the
three-layer 25088-wide classifier by a global pool and one Dense layer, the usual form for 32x32 images.
"""

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.core.errors import ConfigError
from jaxcls.models import MODELS, layers

VARIANTS = ("imagenet", "small")
NORMS = ("none",) + layers.NORMS

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's kaiming fan_out
_dense_init = nn.initializers.normal(0.01)


class VGG(nn.Module):
  """Stages of 3x3 convs, each stage ending in a 2x2 max pool -> classifier."""

  num_classes: int
  stages: Sequence[Sequence[int]] = ((64,), (128,), (256, 256), (512, 512), (512, 512))
  variant: str = "imagenet"  # 'imagenet' (torchvision) | 'small' (global pool + one Dense)
  norm: str = "none"  # 'none' | 'batch' | 'group' | 'layer', after every conv
  hidden: int = 4096  # width of the two hidden Dense layers ('imagenet' head)
  activation: str = "relu"
  negative_slope: float = 0.01  # leaky_relu only
  dropout: float = 0.5
  dtype: Any = jnp.float32

  TORCH_RENAMES: ClassVar = ((r"^(features|classifier)_(\d+)\.", r"\1.\2."),)

  def __post_init__(self):
    layers.check_activation(self.activation)
    layers.check_rate("dropout", self.dropout)
    if self.variant not in VARIANTS:
      raise ConfigError(f"Unknown variant {self.variant!r} for a VGG. Valid: {', '.join(VARIANTS)}.")
    if self.norm not in NORMS:
      raise ConfigError(f"Unknown norm {self.norm!r} for a VGG. Valid: {', '.join(NORMS)}.")
    super().__post_init__()

  def _act(self, x: jax.Array) -> jax.Array:
    return layers.Activation(self.activation, self.negative_slope, dtype=self.dtype)(x)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Float32 logits [B, num_classes]; `train` turns dropout on (and batch statistics when normed)."""
    index = 0  # position in torchvision's `features` Sequential
    for stage in self.stages:
      for width in stage:
        x = nn.Conv(
          width, (3, 3), padding=[(1, 1), (1, 1)], kernel_init=_conv_init, dtype=self.dtype, name=f"features_{index}"
        )(x)
        index += 1
        if self.norm != "none":
          x = layers.norm(self.norm, train, channels=width, dtype=self.dtype, name=f"features_{index}")(x)
          index += 1
        x = self._act(x)
        index += 1
      x = layers.pool(x, "max")
      index += 1
    if self.variant == "imagenet":
      x = layers.flatten_like_torch(layers.adaptive_avg_pool(x, (7, 7)))
      for i in (0, 3):
        x = nn.Dense(self.hidden, kernel_init=_dense_init, dtype=self.dtype, name=f"classifier_{i}")(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(self._act(x))
      x = nn.Dense(self.num_classes, kernel_init=_dense_init, dtype=self.dtype, name="classifier_6")(x)
    else:
      x = nn.Dropout(self.dropout, deterministic=not train)(layers.global_avg_pool(x))
      x = nn.Dense(self.num_classes, kernel_init=_dense_init, dtype=self.dtype, name="classifier")(x)
    return x.astype(jnp.float32)


class VGGBatchNorm(VGG):
  """The `_bn` variants: the same network with batch norm after every conv by default."""

  norm: str = "batch"


_STAGES = {
  11: ((64,), (128,), (256,) * 2, (512,) * 2, (512,) * 2),
  13: ((64,) * 2, (128,) * 2, (256,) * 2, (512,) * 2, (512,) * 2),
  16: ((64,) * 2, (128,) * 2, (256,) * 3, (512,) * 3, (512,) * 3),
  19: ((64,) * 2, (128,) * 2, (256,) * 4, (512,) * 4, (512,) * 4),
}
for _depth, _stages in _STAGES.items():
  MODELS.register(f"vgg{_depth}")(functools.partial(VGG, stages=_stages))
  MODELS.register(f"vgg{_depth}_bn")(functools.partial(VGGBatchNorm, stages=_stages))
