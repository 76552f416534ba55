"""MobileNetV2 (Sandler et al. 2018) as torchvision builds it: inverted residuals, ReLU6, linear bottlenecks.

Flax names follow torchvision's nested Sequential indices with '_' for '.' (`features_0_0` is
`features.0.0`, `features_2.conv_1_0` is `features.2.conv.1.0`), so ImageNet weights map one-to-one. The
'small' variant drops the stride of the stem and of the first 24-channel stage (total stride 8), for 32x32 images.
"""

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.core.errors import ConfigError
from jaxcls.models import MODELS, layers

VARIANTS = ("imagenet", "small")
# (expansion t, channels c, repeats n, first stride s) of each stage, from the paper's Table 2.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_GENERIC_RENAMES = ((r"_(\d+)(?=[._]|$)", r".\1"),)  # features_2.conv_1_0 -> features.2.conv.1.0


def make_divisible(value: float, divisor: int = 8) -> int:
  """Round channels to a multiple of `divisor`, never below 90% of `value` (torchvision's `_make_divisible`)."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


class _Fields(nn.Module):
  """Fields and the conv-norm-activation unit shared by the network and its blocks."""

  activation: str = "relu6"
  negative_slope: float = 0.01
  norm: str = "batch"
  dtype: Any = jnp.float32

  def conv_norm(
    self,
    x: jax.Array,
    features: int,
    train: bool,
    name: str,
    kernel: int = 1,
    stride: int = 1,
    groups: int = 1,
    act: bool = True,
    zero_init: bool = False,
  ) -> jax.Array:
    """torchvision's Conv2dNormActivation: named `{name}_0` (conv) and `{name}_1` (norm)."""
    pad = (kernel - 1) // 2
    x = nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=[(pad, pad), (pad, pad)],
      feature_group_count=groups,
      use_bias=False,
      kernel_init=_conv_init,
      dtype=self.dtype,
      name=f"{name}_0",
    )(x)
    x = layers.norm(self.norm, train, channels=features, dtype=self.dtype, name=f"{name}_1", zero_init=zero_init)(x)
    if act:
      x = layers.Activation(self.activation, self.negative_slope, dtype=self.dtype)(x)
    return x


class InvertedResidual(_Fields):
  """1x1 expand -> 3x3 depthwise (strided) -> 1x1 linear project, with a skip when shapes allow."""

  features: int = 16
  stride: int = 1
  expansion: int = 6
  zero_init_residual: bool = False
  drop_path: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """The block's output with `features` channels; the skip (with drop-path) only at stride 1 with equal channels."""
    in_features = x.shape[-1]
    hidden = int(round(in_features * self.expansion))
    residual = self.stride == 1 and in_features == self.features
    y, i = x, 0
    if self.expansion != 1:
      y, i = self.conv_norm(y, hidden, train, "conv_0"), 1
    y = self.conv_norm(y, hidden, train, f"conv_{i}", kernel=3, stride=self.stride, groups=hidden)
    # The projection's conv and norm sit directly in torchvision's `conv` Sequential: conv_{i+1}, conv_{i+2}.
    y = nn.Conv(self.features, (1, 1), use_bias=False, kernel_init=_conv_init, dtype=self.dtype, name=f"conv_{i + 1}")(
      y
    )
    y = layers.norm(
      self.norm,
      train,
      channels=self.features,
      dtype=self.dtype,
      name=f"conv_{i + 2}",
      zero_init=residual and self.zero_init_residual,
    )(y)
    if not residual:
      return y
    return x + layers.DropPath(self.drop_path)(y, train)


@MODELS.register("mobilenet_v2")
class MobileNetV2(_Fields):
  """Stem conv -> 17 inverted residual blocks -> 1x1 conv to 1280 -> global average pool -> dropout -> Dense."""

  num_classes: int = 1000
  width_mult: float = 1.0
  settings: Sequence[Sequence[int]] = _SETTINGS  # (t, c, n, s) per stage: torchvision's inverted_residual_setting
  variant: str = "imagenet"  # 'imagenet' (torchvision) | 'small' (32x32 inputs, total stride 8)
  dropout: float = 0.2
  stochastic_depth: float = 0.0  # drop rate of the last residual block; earlier ones rise linearly to it
  zero_init_residual: bool = False  # zero the last norm's scale in blocks with a skip connection

  TORCH_RENAMES: ClassVar = _GENERIC_RENAMES

  def __post_init__(self):
    layers.check_activation(self.activation)
    layers.check_norm(self.norm)
    layers.check_rate("dropout", self.dropout)
    layers.check_rate("stochastic_depth", self.stochastic_depth)
    if self.variant not in VARIANTS:
      raise ConfigError(f"Unknown variant {self.variant!r} for model 'mobilenet_v2'. Valid: {', '.join(VARIANTS)}.")
    if any(len(stage) != 4 for stage in self.settings):
      raise ConfigError(f"MobileNetV2 settings must be (t, c, n, s) per stage, got {self.settings!r}.")
    if not self.width_mult > 0:
      raise ConfigError(f"MobileNetV2 width_mult must be positive, got {self.width_mult!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Float32 logits [B, num_classes]; `train` uses batch statistics, dropout and drop-path."""
    small = self.variant == "small"
    shared = dict(activation=self.activation, negative_slope=self.negative_slope, norm=self.norm, dtype=self.dtype)
    x = self.conv_norm(x, make_divisible(32 * self.width_mult), train, "features_0", kernel=3, stride=1 if small else 2)
    rates = iter(layers.drop_path_rates(self.stochastic_depth, sum(n for _, _, n, _ in self.settings)))
    index = 1
    for stage, (t, c, n, s) in enumerate(self.settings):
      if small and stage == 1:
        s = 1
      for j in range(n):
        x = InvertedResidual(
          features=make_divisible(c * self.width_mult),
          stride=s if j == 0 else 1,
          expansion=t,
          zero_init_residual=self.zero_init_residual,
          drop_path=next(rates),
          name=f"features_{index}",
          **shared,
        )(x, train)
        index += 1
    last = make_divisible(1280 * max(1.0, self.width_mult))
    x = self.conv_norm(x, last, train, f"features_{index}")
    x = nn.Dropout(self.dropout, deterministic=not train)(layers.global_avg_pool(x))
    x = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype, name="classifier_1")(x)
    return x.astype(jnp.float32)
