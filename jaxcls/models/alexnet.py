"""AlexNet as torchvision builds it (Krizhevsky 2014, "one weird trick": 64-192-384-256-256 channels).

Flax names are torchvision's Sequential indices (`features_0`, `classifier_1`, ...), so ImageNet weights map
one-to-one. The 'imagenet' head average-pools adaptively to 6x6 and flattens in torch's channel-first order, as
torchvision does, so any input size from 63x63 up works; the 'small' variant (a 3x3/1 first conv and a global
pool + single Dense head) suits 32x32 images.
"""

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.core.errors import ConfigError
from jaxcls.models import MODELS, layers

VARIANTS = ("imagenet", "small")


@MODELS.register("alexnet")
class AlexNet(nn.Module):
  """Five convs with three max pools -> (adaptive 6x6 pool -> 3 Dense with dropout) or (global pool -> Dense)."""

  num_classes: int
  variant: str = "imagenet"  # 'imagenet' (torchvision) | 'small' (32x32 inputs)
  widths: Sequence[int] = (64, 192, 384, 256, 256)
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
      raise ConfigError(f"Unknown variant {self.variant!r} for model 'alexnet'. Valid: {', '.join(VARIANTS)}.")
    if len(self.widths) != 5:
      raise ConfigError(f"AlexNet needs 5 conv widths, got {tuple(self.widths)!r}.")
    super().__post_init__()

  def _act(self, x: jax.Array) -> jax.Array:
    return layers.Activation(self.activation, self.negative_slope, dtype=self.dtype)(x)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Float32 logits [B, num_classes] from images [B, H, W, C]; `train` turns dropout on."""
    imagenet = self.variant == "imagenet"
    # (kernel, stride, padding, max pool after) of each conv, keyed by its torchvision index.
    specs = {
      0: (11, 4, 2, True) if imagenet else (3, 1, 1, True),
      3: (5, 1, 2, True),
      6: (3, 1, 1, False),
      8: (3, 1, 1, False),
      10: (3, 1, 1, True),
    }
    for width, (index, (kernel, stride, pad, pool)) in zip(self.widths, specs.items()):
      x = nn.Conv(
        width,
        (kernel, kernel),
        strides=(stride, stride),
        padding=[(pad, pad), (pad, pad)],
        dtype=self.dtype,
        name=f"features_{index}",
      )(x)
      x = self._act(x)
      if pool:
        x = layers.pool(x, "max", window=3, stride=2)
    if imagenet:
      x = layers.flatten_like_torch(layers.adaptive_avg_pool(x, (6, 6)))
      for index in (1, 4):
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = self._act(nn.Dense(self.hidden, dtype=self.dtype, name=f"classifier_{index}")(x))
      x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier_6")(x)
    else:
      x = nn.Dropout(self.dropout, deterministic=not train)(layers.global_avg_pool(x))
      x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    return x.astype(jnp.float32)
