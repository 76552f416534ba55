"""Building blocks shared by the model families: activations and pooling chosen by name, compute dtypes.

Names come straight from the config, so every lookup here fails with a `ConfigError` that lists the valid
choices instead of a KeyError deep inside a trace.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.errors import ConfigError
from jaxcls.registry import did_you_mean

ACTIVATIONS = ("relu", "leaky_relu", "prelu", "elu", "gelu", "silu")
POOLINGS = ("max", "avg")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _check_choice(what: str, value: Any, valid: tuple[str, ...]) -> str:
  if value not in valid:
    hint = did_you_mean(value, valid) if isinstance(value, str) else ""
    raise ConfigError(f"Unknown {what} {value!r}.{hint} Valid: {', '.join(valid)}.")
  return value


def check_activation(name: str) -> str:
  """Fails early (at model construction, not first call) on a misspelt activation."""
  return _check_choice("activation", name, ACTIVATIONS)


def check_pooling(name: str) -> str:
  return _check_choice("pooling", name, POOLINGS)


def compute_dtype(dtype: Any) -> Any:
  """The jnp dtype for 'float32' / 'bfloat16' / 'float16' (or such a dtype itself); configs hold strings."""
  if isinstance(dtype, str):
    return DTYPES[_check_choice("dtype", dtype, tuple(DTYPES))]
  name = jnp.dtype(dtype).name
  return DTYPES[_check_choice("dtype", name, tuple(DTYPES))]


class Activation(nn.Module):
  """A nonlinearity chosen by name.

  `prelu` learns one slope per channel (like torch `nn.PReLU(num_parameters=C)`), initialised to 0.25 and
  stored as the float32 parameter 'alpha' of shape [C]; per-channel slopes cost nothing and are what
  converted torch checkpoints most often hold. `gelu` is the exact (erf) form, as in torch.
  """
  kind: str = "relu"
  negative_slope: float = 0.01  # leaky_relu only
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    check_activation(self.kind)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kind = self.kind
    if kind == "relu":
      return nn.relu(x)
    if kind == "leaky_relu":
      return nn.leaky_relu(x, negative_slope=self.negative_slope)
    if kind == "prelu":
      alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],), self.param_dtype)
      alpha = alpha.astype(self.dtype)
      return jnp.where(x >= 0, x, alpha * x)
    if kind == "elu":
      return nn.elu(x)
    if kind == "gelu":
      return nn.gelu(x, approximate=False)
    return nn.silu(x)


def pool(x: jax.Array, kind: str, window: int = 2, stride: int = 2,
         padding: int = 0) -> jax.Array:
  """Max or average pooling over the two spatial axes of [B, H, W, C], with torch-style explicit padding."""
  pads = ((padding, padding), (padding, padding))
  if check_pooling(kind) == "max":
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)
  return nn.avg_pool(x, (window, window), strides=(stride, stride), padding=pads)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, C]; makes a model accept any input size."""
  return jnp.mean(x, axis=(1, 2))
