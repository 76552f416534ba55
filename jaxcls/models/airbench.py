"""The airbench94 network (Keller Jordan, github.com/KellerJordan/cifar10-airbench): 94% CIFAR-10 in seconds.

A 2x2 stem conv and GELU, three conv groups (3x3 conv, 2x2 max pool, batch norm, GELU, 3x3 conv, batch norm,
GELU) of widths 64, 256, 256, a 3x3 max pool and a bias-free linear head whose logits are scaled by 1/9. As in
airbench, every 3x3 conv starts as a partial identity (dirac init on its first `in_channels` filters), batch norm
has no learned scale, epsilon 1e-12 and a fast running average (momentum 0.6, torch's 0.4).

What jaxcls does not reproduce: airbench sets the stem from the whitening (PCA) of training-image patches and
freezes it; here the stem is learned from the default init, because initialisation does not see the data.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.core.errors import ConfigError
from jaxcls.models import MODELS


def dirac_then_default(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
  """torch's default conv init, with the first min(in, out) filters replaced by identities (torch.nn.init.dirac_).

  `shape` is flax's [kh, kw, in, out]; the identity filter o passes input channel o through the kernel centre.
  """
  kh, kw, cin, cout = shape
  # torch's Conv2d default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  bound = 1.0 / jnp.sqrt(kh * kw * cin)
  kernel = jax.random.uniform(key, shape, dtype, -bound, bound)
  n = min(cin, cout)
  identity = jnp.zeros((kh, kw, cin, n), dtype).at[kh // 2, kw // 2, jnp.arange(n), jnp.arange(n)].set(1.0)
  return kernel.at[..., :n].set(identity)


class ConvGroup(nn.Module):
  """conv -> max pool 2 -> BN -> GELU -> conv -> BN -> GELU (airbench's ConvGroup)."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Halves height and width, with `features` channels out; `train` uses and updates the batch statistics."""

    def bn(name):
      # No scale; torch momentum 0.4 is flax momentum 0.6; statistics in float32 as airbench keeps its BNs.
      return nn.BatchNorm(
        use_running_average=not train, momentum=0.6, epsilon=1e-12, use_scale=False, dtype=jnp.float32, name=name
      )

    x = nn.Conv(
      self.features,
      (3, 3),
      padding="SAME",
      use_bias=False,
      kernel_init=dirac_then_default,
      dtype=self.dtype,
      name="conv1",
    )(x)
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.gelu(bn("norm1")(x).astype(self.dtype), approximate=False)
    x = nn.Conv(
      self.features,
      (3, 3),
      padding="SAME",
      use_bias=False,
      kernel_init=dirac_then_default,
      dtype=self.dtype,
      name="conv2",
    )(x)
    return nn.gelu(bn("norm2")(x).astype(self.dtype), approximate=False)


@MODELS.register("airbench94")
class Airbench(nn.Module):
  """Stem (2x2 conv with bias, 2*C*4 filters) -> three ConvGroups -> 3x3 max pool -> Dense (no bias) x scale."""

  num_classes: int
  widths: Sequence[int] = (64, 256, 256)
  stem_kernel: int = 2
  scale: float = 1 / 9
  dtype: Any = jnp.float32

  def __post_init__(self):
    if len(self.widths) != 3 or min(self.widths) < 1:
      raise ConfigError(f"airbench94 widths={tuple(self.widths)} must be three positive channel counts.")
    if self.stem_kernel < 1:
      raise ConfigError(f"airbench94 stem_kernel={self.stem_kernel} must be >= 1.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Float32 logits [B, num_classes] times `scale`; a ConfigError for images too small for the stem and pools."""
    k = self.stem_kernel
    if min(x.shape[1:3]) - k + 1 < 8:
      raise ConfigError(
        f"airbench94 needs images of at least {k + 7}x{k + 7} pixels (three 2x2 max pools "
        f"after the {k}x{k} stem); got {x.shape[1]}x{x.shape[2]}."
      )
    stem_width = 2 * x.shape[-1] * k * k  # airbench: the whitening eigenvectors and their negatives
    x = nn.Conv(stem_width, (k, k), padding="VALID", use_bias=True, dtype=self.dtype, name="stem")(x)
    x = nn.gelu(x, approximate=False)
    for i, width in enumerate(self.widths):
      x = ConvGroup(width, dtype=self.dtype, name=f"block{i + 1}")(x, train=train)
    # airbench's MaxPool2d(3): a 3x3 map becomes 1x1; on larger inputs, pool what is left globally.
    x = jnp.max(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype, name="head")(x)
    return (x * self.scale).astype(jnp.float32)
