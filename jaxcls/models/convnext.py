"""ConvNeXt (Liu et al. 2022) as torchvision builds it: patchify stem, 7x7 depthwise blocks with layer scale.

Flax names follow torchvision's Sequential indices with '_' for '.' (`features_1_0.block_3` is
`features.1.0.block.3`), so ImageNet weights map one-to-one. LayerNorm eps is 1e-6 and layer scale starts at
1e-6 as in torchvision; stochastic depth rises linearly over the blocks to `stochastic_depth` (torchvision's
defaults: 0.1 tiny, 0.4 small, 0.5 base). The 'small' variant patchifies 2x2 instead of 4x4, for 32x32 images.
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
_init = nn.initializers.truncated_normal(0.02)


class CNBlock(nn.Module):
  """x + layer_scale * MLP(LayerNorm(depthwise7x7(x))), the MLP expanding 4x."""

  activation: str = "gelu"
  negative_slope: float = 0.01
  layer_scale: float = 1e-6
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """The block's output, shaped as `x`; `train` turns drop-path of the residual branch on."""
    dim = x.shape[-1]
    y = nn.Conv(
      dim,
      (7, 7),
      padding=[(3, 3), (3, 3)],
      feature_group_count=dim,
      kernel_init=_init,
      dtype=self.dtype,
      name="block_0",
    )(x)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="block_2")(y)
    y = nn.Dense(4 * dim, kernel_init=_init, dtype=self.dtype, name="block_3")(y)
    y = layers.Activation(self.activation, self.negative_slope, dtype=self.dtype)(y)
    y = nn.Dense(dim, kernel_init=_init, dtype=self.dtype, name="block_5")(y)
    gamma = self.param("layer_scale", nn.initializers.constant(self.layer_scale), (dim,), jnp.float32)
    y = y * gamma.astype(self.dtype)
    return x + layers.DropPath(self.drop_path)(y, train)


class ConvNeXt(nn.Module):
  """Stem -> four stages of CNBlocks with LayerNorm + 2x2/2 conv downsampling between -> pool, LN, Dense."""

  num_classes: int
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  variant: str = "imagenet"  # 'imagenet' (4x4 patchify stem) | 'small' (2x2, for 32x32 inputs)
  activation: str = "gelu"
  negative_slope: float = 0.01  # leaky_relu only
  stochastic_depth: float = 0.1
  layer_scale: float = 1e-6  # initial per-channel scale of each block's branch
  dropout: float = 0.0  # before the head, in training only
  dtype: Any = jnp.float32

  TORCH_RENAMES: ClassVar = ((r"_(\d+)(?=[._]|$)", r".\1"),)

  def __post_init__(self):
    layers.check_activation(self.activation)
    layers.check_rate("dropout", self.dropout)
    layers.check_rate("stochastic_depth", self.stochastic_depth)
    if self.variant not in VARIANTS:
      raise ConfigError(f"Unknown variant {self.variant!r} for a ConvNeXt. Valid: {', '.join(VARIANTS)}.")
    if len(self.depths) != len(self.dims):
      raise ConfigError(f"ConvNeXt depths {tuple(self.depths)!r} and dims {tuple(self.dims)!r} differ in length.")
    super().__post_init__()

  def _ln(self, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Float32 logits [B, num_classes] from images [B, H, W, C]; `train` turns dropout and stochastic depth on."""
    patch = 4 if self.variant == "imagenet" else 2
    x = nn.Conv(
      self.dims[0],
      (patch, patch),
      strides=(patch, patch),
      padding="VALID",
      kernel_init=_init,
      dtype=self.dtype,
      name="features_0_0",
    )(x)
    x = self._ln("features_0_1")(x)
    rates = iter(layers.drop_path_rates(self.stochastic_depth, sum(self.depths)))
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if i > 0:
        x = self._ln(f"features_{2 * i}_0")(x)
        x = nn.Conv(
          dim, (2, 2), strides=(2, 2), padding="VALID", kernel_init=_init, dtype=self.dtype, name=f"features_{2 * i}_1"
        )(x)
      for j in range(depth):
        x = CNBlock(
          self.activation,
          self.negative_slope,
          self.layer_scale,
          next(rates),
          self.dtype,
          name=f"features_{2 * i + 1}_{j}",
        )(x, train)
    x = self._ln("classifier_0")(layers.global_avg_pool(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, kernel_init=_init, dtype=self.dtype, name="classifier_2")(x)
    return x.astype(jnp.float32)


# Subclasses rather than partials, so stochastic depth keeps torchvision's per-size default yet stays a config
# argument (a partial's keywords are fixed).
class _ConvNeXtSmall(ConvNeXt):
  stochastic_depth: float = 0.4


class _ConvNeXtBase(ConvNeXt):
  stochastic_depth: float = 0.5


MODELS.register("convnext_tiny")(functools.partial(ConvNeXt, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)))
MODELS.register("convnext_small")(functools.partial(_ConvNeXtSmall, depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)))
MODELS.register("convnext_base")(functools.partial(_ConvNeXtBase, depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)))
