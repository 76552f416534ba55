"""ResNet v1.5 (He et al. 2015, with the bottleneck's stride on its 3x3 conv), laid out like torchvision.

Parameter counts, paddings, batch-norm settings and module names follow torchvision so results compare and
torch weights map one-to-one: `conv1`, `bn1`, blocks `layer{1..4}_{j}` holding `conv1..3`, `bn1..3` and
`downsample_conv`/`downsample_bn`, and the head `fc`.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.errors import ConfigError
from jaxcls.models import MODELS
from jaxcls.models import layers

STEMS = ("imagenet", "small")

# torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu') for every conv.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _Block(nn.Module):
  """Shared fields and helpers of the two residual block types."""
  filters: int
  strides: int = 1
  activation: str = "relu"
  negative_slope: float = 0.01
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  def conv(self, features: int, kernel: int, strides: int, name: str) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=[(pad, pad), (pad, pad)],
                   use_bias=False, kernel_init=_conv_init, dtype=self.dtype, name=name)

  def bn(self, train: bool, name: str, last: bool = False) -> nn.BatchNorm:
    # Zero-initialising the last scale makes each block start as the identity (Goyal et al. 2017).
    scale_init = nn.initializers.zeros if last and self.zero_init_residual else nn.initializers.ones
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                        scale_init=scale_init, name=name)

  def act(self, x: jax.Array, name: str) -> jax.Array:
    return layers.Activation(self.activation, self.negative_slope, dtype=self.dtype, name=name)(x)

  def shortcut(self, x: jax.Array, out_features: int, train: bool) -> jax.Array:
    """Identity, or a strided 1x1 conv + BN projection when the shape changes."""
    if self.strides == 1 and x.shape[-1] == out_features:
      return x
    x = self.conv(out_features, 1, self.strides, "downsample_conv")(x)
    return self.bn(train, "downsample_bn")(x)


class BasicBlock(_Block):
  """Two 3x3 convs (ResNet-18/34)."""
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = self.act(self.bn(train, "bn1")(self.conv(self.filters, 3, self.strides, "conv1")(x)), "act1")
    y = self.bn(train, "bn2", last=True)(self.conv(self.filters, 3, 1, "conv2")(y))
    return self.act(y + self.shortcut(x, self.filters, train), "act_out")


class Bottleneck(_Block):
  """1x1 reduce, strided 3x3, 1x1 expand by 4 (ResNet-50/101/152); v1.5 puts the stride on the 3x3."""
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out = self.filters * self.expansion
    y = self.act(self.bn(train, "bn1")(self.conv(self.filters, 1, 1, "conv1")(x)), "act1")
    y = self.act(self.bn(train, "bn2")(self.conv(self.filters, 3, self.strides, "conv2")(y)), "act2")
    y = self.bn(train, "bn3", last=True)(self.conv(out, 1, 1, "conv3")(y))
    return self.act(y + self.shortcut(x, out, train), "act_out")


class ResNet(nn.Module):
  """Stem -> four stages of residual blocks (channels width, 2w, 4w, 8w) -> global average pool -> Dense."""
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: type[_Block] = BasicBlock
  stem: str = "imagenet"  # 'imagenet': 7x7/2 conv + 3x3/2 max pool; 'small': 3x3/1 conv, for 32x32 inputs
  width: int = 64
  activation: str = "relu"
  negative_slope: float = 0.01  # leaky_relu only
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  def __post_init__(self):
    layers.check_activation(self.activation)
    if self.stem not in STEMS:
      raise ConfigError(f"Unknown stem {self.stem!r} for a ResNet. Valid: {', '.join(STEMS)}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kernel, stride = (7, 2) if self.stem == "imagenet" else (3, 1)
    pad = kernel // 2
    x = nn.Conv(self.width, (kernel, kernel), strides=(stride, stride), padding=[(pad, pad), (pad, pad)],
                use_bias=False, kernel_init=_conv_init, dtype=self.dtype, name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                     name="bn1")(x)
    x = layers.Activation(self.activation, self.negative_slope, dtype=self.dtype, name="act1")(x)
    if self.stem == "imagenet":
      x = layers.pool(x, "max", window=3, stride=2, padding=1)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = self.block(
            filters=self.width * 2**i,
            strides=2 if i > 0 and j == 0 else 1,
            activation=self.activation,
            negative_slope=self.negative_slope,
            zero_init_residual=self.zero_init_residual,
            dtype=self.dtype,
            name=f"layer{i + 1}_{j}")(x, train=train)
    x = layers.global_avg_pool(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return x.astype(jnp.float32)


# Each depth fixes `stage_sizes` and `block`; the remaining ResNet fields are its config arguments.
_DEPTHS = {
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
    "resnet101": ((3, 4, 23, 3), Bottleneck),
    "resnet152": ((3, 8, 36, 3), Bottleneck),
}
for _name, (_sizes, _block) in _DEPTHS.items():
  MODELS.register(_name)(functools.partial(ResNet, stage_sizes=_sizes, block=_block))
