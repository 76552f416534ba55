"""ResNet v1.5 (He et al. 2015, with the bottleneck's stride on its 3x3 conv), laid out like torchvision.

Also the bottleneck variants torchvision builds from the same code: Wide ResNet (a wider 3x3, Zagoruyko and
Komodakis 2016) and ResNeXt (a grouped 3x3, Xie et al. 2017). Parameter counts, paddings, batch-norm settings and
module names follow torchvision so results compare and torch weights map one-to-one: `conv1`, `bn1`, blocks
`layer{1..4}_{j}` holding `conv1..3`, `bn1..3` and `downsample_conv`/`downsample_bn`, and the head `fc`.
"""

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from jaxcls.core.errors import ConfigError
from jaxcls.models import MODELS, layers

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
  norm: str = "batch"
  drop_path: float = 0.0
  groups: int = 1
  width_per_group: int = 64
  norm_float32_reductions: bool = True
  dtype: Any = jnp.float32

  def conv(self, features: int, kernel: int, strides: int, name: str, groups: int = 1) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(
      features,
      (kernel, kernel),
      strides=(strides, strides),
      padding=[(pad, pad), (pad, pad)],
      feature_group_count=groups,
      use_bias=False,
      kernel_init=_conv_init,
      dtype=self.dtype,
      name=name,
    )

  def bn(self, x: jax.Array, train: bool, name: str, last: bool = False) -> jax.Array:
    # Zero-initialising the last scale makes each block start as the identity (Goyal et al. 2017).
    return layers.norm(
      self.norm,
      train,
      channels=x.shape[-1],
      dtype=self.dtype,
      name=name,
      zero_init=last and self.zero_init_residual,
      float32_reductions=self.norm_float32_reductions,
    )(x)

  def act(self, x: jax.Array, name: str) -> jax.Array:
    return layers.Activation(self.activation, self.negative_slope, dtype=self.dtype, name=name)(x)

  def shortcut(self, x: jax.Array, out_features: int, train: bool) -> jax.Array:
    """Identity, or a strided 1x1 conv + norm projection when the shape changes."""
    if self.strides == 1 and x.shape[-1] == out_features:
      return x
    x = self.conv(out_features, 1, self.strides, "downsample_conv")(x)
    return self.bn(x, train, "downsample_bn")

  def merge(self, branch: jax.Array, x: jax.Array, out_features: int, train: bool) -> jax.Array:
    branch = layers.DropPath(self.drop_path, name="drop_path")(branch, train)
    return self.act(branch + self.shortcut(x, out_features, train), "act_out")


class BasicBlock(_Block):
  """Two 3x3 convs (ResNet-18/34)."""

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """The block's output with `filters` channels at `strides`; `merge` adds the (projected) shortcut."""
    y = self.act(self.bn(self.conv(self.filters, 3, self.strides, "conv1")(x), train, "bn1"), "act1")
    y = self.bn(self.conv(self.filters, 3, 1, "conv2")(y), train, "bn2", last=True)
    return self.merge(y, x, self.filters, train)


class Bottleneck(_Block):
  """1x1 reduce, strided (grouped) 3x3, 1x1 expand by 4; v1.5 puts the stride on the 3x3."""

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """The block's output with 4 x `filters` channels at `strides`; `merge` adds the (projected) shortcut."""
    inner = int(self.filters * self.width_per_group / 64) * self.groups  # torchvision's `width`
    out = self.filters * self.expansion
    y = self.act(self.bn(self.conv(inner, 1, 1, "conv1")(x), train, "bn1"), "act1")
    y = self.conv(inner, 3, self.strides, "conv2", groups=self.groups)(y)
    y = self.act(self.bn(y, train, "bn2"), "act2")
    y = self.bn(self.conv(out, 1, 1, "conv3")(y), train, "bn3", last=True)
    return self.merge(y, x, out, train)


def space_to_depth(x: jax.Array, block: int = 2) -> jax.Array:
  """[B, H, W, C] -> [B, H/block, W/block, block*block*C]; channel (i*block + j)*C + c holds pixel offset (i, j)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block, block * block * c)


def space_to_depth_stem_kernel(kernel: jax.Array) -> jax.Array:
  """A [7, 7, C, F] stride-2 kernel -> the [4, 4, 4C, F] stride-1 kernel for a `space_to_depth` input.

  A zero first row and column make it 8x8, so tap k' = 2a + b (a in 0..3, b in 0..1) reads input row
  2(i + a - 2) + b; the input channel order matches `space_to_depth`'s.
  """
  _, _, c, f = kernel.shape
  kernel = jnp.pad(kernel, ((1, 0), (1, 0), (0, 0), (0, 0)))
  kernel = kernel.reshape(4, 2, 4, 2, c, f).transpose(0, 2, 1, 3, 4, 5)
  return kernel.reshape(4, 4, 4 * c, f)


class SpaceToDepthStemConv(nn.Module):
  """The 7x7 stride-2 padding-3 stem conv, computed exactly as a 4x4 stride-1 conv on 2x2 pixel blocks.

  The MLPerf TPU ResNet trick: a 3-channel 7x7/2 conv uses tensor cores poorly; on 12-channel 2x2 blocks it is
  a denser stride-1 conv. The parameter is still `kernel` [7, 7, C, features] (so this module named `conv1`
  has nn.Conv's parameter tree and initial values, and torch weights, checkpoints and transfer learning are
  unaffected); it is rearranged on every call.

  Derivation (one spatial axis): the plain conv gives out[i] = sum_{k=0..6} x[2i + k - 3] w[k]. With the
  8-tap kernel w'[k'] = w[k' - 1] (w'[0] = 0) that is sum_{k'=0..7} x[2i + k' - 4] w'[k'], and with k' = 2a + b
  and z[j, b] = x[2j + b] it is sum_{a=0..3} z[i + a - 2, b] w'[2a + b]: a stride-1 4-tap conv padded 2 before.
  H/2 outputs from H/2 blocks need 2 + pad_after = 4 - 1, so the padding is (2, 1). An odd H or W gets one
  zero row or column at the end first: the plain conv reads zeros there too, so outputs stay exact.
  """

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """The output of the 7x7/2 padding-3 stem conv, computed on 2x2 pixel blocks (odd sizes padded to even)."""
    kernel = self.param("kernel", _conv_init, (7, 7, x.shape[-1], self.features), self.param_dtype)
    x, kernel = promote_dtype(x, kernel, dtype=self.dtype)
    x = jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0)))
    return jax.lax.conv_general_dilated(
      space_to_depth(x),
      space_to_depth_stem_kernel(kernel),
      (1, 1),
      ((2, 1), (2, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


class ResNet(nn.Module):
  """Stem -> four stages of residual blocks (channels width, 2w, 4w, 8w) -> global average pool -> Dense."""

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: type[_Block] = BasicBlock
  groups: int = 1  # ResNeXt cardinality (bottleneck only)
  width_per_group: int = 64  # 128 for Wide ResNet-50-2 (bottleneck only)
  stem: str = "imagenet"  # 'imagenet': 7x7/2 conv + 3x3/2 max pool; 'small': 3x3/1 conv, for 32x32 inputs
  width: int = 64
  activation: str = "relu"
  negative_slope: float = 0.01  # leaky_relu only
  norm: str = "batch"  # 'batch' | 'group' | 'layer' (over channels)
  zero_init_residual: bool = False
  stochastic_depth: float = 0.0  # drop rate of the last block's branch; earlier blocks rise linearly to it
  dropout: float = 0.0  # before the head, in training only
  # 'imagenet' stem only: the same conv1 weights run as a 4x4/1 conv on 2x2 pixel blocks (exact; faster on GPUs?).
  space_to_depth_stem: bool = False
  # False: batch-norm statistics in the compute dtype, not float32 (approximate; see layers.norm).
  norm_float32_reductions: bool = True
  dtype: Any = jnp.float32

  # flax module path -> torchvision state_dict key (see jaxcls.convert).
  TORCH_RENAMES: ClassVar = (
    (r"^layer(\d)_(\d+)\.", r"layer\1.\2."),
    (r"\.downsample_conv\.", ".downsample.0."),
    (r"\.downsample_bn\.", ".downsample.1."),
  )

  def __post_init__(self):
    layers.check_activation(self.activation)
    layers.check_norm(self.norm)
    layers.check_rate("dropout", self.dropout)
    layers.check_rate("stochastic_depth", self.stochastic_depth)
    if self.stem not in STEMS:
      raise ConfigError(f"Unknown stem {self.stem!r} for a ResNet. Valid: {', '.join(STEMS)}.")
    for field in ("space_to_depth_stem", "norm_float32_reductions"):
      if not isinstance(getattr(self, field), bool):
        raise ConfigError(f"ResNet {field} must be True or False, got {getattr(self, field)!r}.")
    if self.space_to_depth_stem and self.stem != "imagenet":
      raise ConfigError(
        f"space_to_depth_stem rewrites the 'imagenet' stem's 7x7/2 conv; stem {self.stem!r} has "
        "none. Set stem='imagenet' or space_to_depth_stem=False."
      )
    if not self.norm_float32_reductions and self.norm != "batch":
      raise ConfigError(
        f"norm_float32_reductions=False applies to batch norm only, not norm {self.norm!r}; "
        "set norm='batch' or norm_float32_reductions=True."
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Float32 logits [B, num_classes]; `train` uses batch statistics, dropout and drop-path."""
    if self.space_to_depth_stem:
      x = SpaceToDepthStemConv(self.width, dtype=self.dtype, name="conv1")(x)
    else:
      kernel, stride = (7, 2) if self.stem == "imagenet" else (3, 1)
      pad = kernel // 2
      x = nn.Conv(
        self.width,
        (kernel, kernel),
        strides=(stride, stride),
        padding=[(pad, pad), (pad, pad)],
        use_bias=False,
        kernel_init=_conv_init,
        dtype=self.dtype,
        name="conv1",
      )(x)
    x = layers.norm(
      self.norm,
      train,
      channels=self.width,
      dtype=self.dtype,
      name="bn1",
      float32_reductions=self.norm_float32_reductions,
    )(x)
    x = layers.Activation(self.activation, self.negative_slope, dtype=self.dtype, name="act1")(x)
    if self.stem == "imagenet":
      x = layers.pool(x, "max", window=3, stride=2, padding=1)
    rates = iter(layers.drop_path_rates(self.stochastic_depth, sum(self.stage_sizes)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = self.block(
          filters=self.width * 2**i,
          strides=2 if i > 0 and j == 0 else 1,
          activation=self.activation,
          negative_slope=self.negative_slope,
          zero_init_residual=self.zero_init_residual,
          norm=self.norm,
          drop_path=next(rates),
          groups=self.groups,
          width_per_group=self.width_per_group,
          norm_float32_reductions=self.norm_float32_reductions,
          dtype=self.dtype,
          name=f"layer{i + 1}_{j}",
        )(x, train=train)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return x.astype(jnp.float32)


# Each name fixes the depth, block and grouping; the remaining ResNet fields are its config arguments.
_BASIC, _BOTTLENECK = dict(block=BasicBlock), dict(block=Bottleneck)
_VARIANTS = {
  "resnet18": dict(stage_sizes=(2, 2, 2, 2), **_BASIC),
  "resnet34": dict(stage_sizes=(3, 4, 6, 3), **_BASIC),
  "resnet50": dict(stage_sizes=(3, 4, 6, 3), **_BOTTLENECK),
  "resnet101": dict(stage_sizes=(3, 4, 23, 3), **_BOTTLENECK),
  "resnet152": dict(stage_sizes=(3, 8, 36, 3), **_BOTTLENECK),
  "wide_resnet50_2": dict(stage_sizes=(3, 4, 6, 3), width_per_group=128, **_BOTTLENECK),
  "resnext50_32x4d": dict(stage_sizes=(3, 4, 6, 3), groups=32, width_per_group=4, **_BOTTLENECK),
}
for _name, _fixed in _VARIANTS.items():
  _fixed.setdefault("groups", 1)
  _fixed.setdefault("width_per_group", 64)
  MODELS.register(_name)(functools.partial(ResNet, **_fixed))
