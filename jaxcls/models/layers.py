"""Building blocks shared by the model families: activations, norms and pooling chosen by name, stochastic
depth, compute dtypes.

Names come straight from the config, so every lookup here fails with a `ConfigError` that lists the valid
choices instead of a KeyError deep inside a trace.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.core.errors import ConfigError
from jaxcls.core.registry import did_you_mean

ACTIVATIONS = ("relu", "leaky_relu", "prelu", "elu", "gelu", "silu", "relu6")
POOLINGS = ("max", "avg")
NORMS = ("batch", "group", "layer")
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
  """`name` when it is a known pooling; otherwise a ConfigError listing the valid ones."""
  return _check_choice("pooling", name, POOLINGS)


def check_norm(name: str) -> str:
  """`name` when it is a known normalisation layer; otherwise a ConfigError listing the valid ones."""
  return _check_choice("norm", name, NORMS)


def check_rate(what: str, rate: float) -> float:
  """Dropout and stochastic-depth rates: a rate of 1 would drop everything."""
  if not 0.0 <= rate < 1.0:
    raise ConfigError(f"Model {what} must be in [0, 1), got {rate!r}.")
  return rate


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
    """The named nonlinearity of `x` (`prelu` creates its per-channel slope parameter)."""
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
    if kind == "relu6":
      return nn.relu6(x)
    return nn.silu(x)


def pool(x: jax.Array, kind: str, window: int = 2, stride: int = 2, padding: int = 0) -> jax.Array:
  """Max or average pooling over the two spatial axes of [B, H, W, C], with torch-style explicit padding."""
  pads = ((padding, padding), (padding, padding))
  if check_pooling(kind) == "max":
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)
  return nn.avg_pool(x, (window, window), strides=(stride, stride), padding=pads)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, C]; makes a model accept any input size."""
  return jnp.mean(x, axis=(1, 2))


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """torch's `AdaptiveAvgPool2d(size)` on [B, H, W, C]: output cell i averages rows floor(i*H/h)..ceil((i+1)*H/h).

  AlexNet and VGG flatten this fixed-size map into their classifier, so matching torch bin for bin is what
  lets converted weights give the same logits at every input size (bins overlap or repeat on small inputs).
  """
  out_h, out_w = size
  height, width = x.shape[1], x.shape[2]
  if height % out_h == 0 and width % out_w == 0:  # equal bins: one reshape
    b, _, _, c = x.shape
    return x.reshape(b, out_h, height // out_h, out_w, width // out_w, c).mean(axis=(2, 4))
  if out_h % height == 0 and out_w % width == 0:  # one-pixel bins: each pixel repeated
    return jnp.repeat(jnp.repeat(x, out_h // height, axis=1), out_w // width, axis=2)

  def bins(n, m):
    return [(i * n // m, -(-(i + 1) * n // m)) for i in range(m)]

  rows = [jnp.mean(x[:, a:b], axis=1, keepdims=True) for a, b in bins(height, out_h)]
  x = jnp.concatenate(rows, axis=1)
  cols = [jnp.mean(x[:, :, a:b], axis=2, keepdims=True) for a, b in bins(width, out_w)]
  return jnp.concatenate(cols, axis=2)


def norm(
  kind: str,
  train: bool,
  *,
  channels: int,
  dtype: Any,
  name: str | None = None,
  zero_init: bool = False,
  epsilon: float = 1e-5,
  groups: int = 32,
  float32_reductions: bool = True,
) -> nn.Module:
  """A batch, group or layer norm over the channel axis (the last), named `name` so torch weights map.

  Group norm uses `groups` groups, or the largest count under it that divides `channels` (so narrow test
  models still work). `zero_init` starts the scale at zero: a residual branch ending in it begins as zero.

  `float32_reductions=False` (batch norm only; flax's `force_float32_reductions`) is a speed experiment for
  half-precision `dtype`s. With float32 parameters (always, here) it changes only the training-mode
  statistics, and only when `dtype` is bfloat16/float16:
    - the batch mean and mean of squares are still summed in float32 (jnp.mean upcasts half-precision sums)
      but x*x is squared in `dtype` first, and both means are rounded to `dtype`;
    - the variance (mean of squares - mean**2, clipped at 0), the centring x - mean, and rsqrt(var + eps)
      then run in `dtype` (eps rounds to `dtype` too);
    - the scale and bias multiply-add stays float32 (the parameters are float32), the result is cast to `dtype`;
    - the running averages stay float32, updated with the rounded statistics.
  Eval mode (running averages) and float32 `dtype` are unchanged, op for op. The cost: the variance is a
  difference of two numbers rounded to bfloat16's 8 significant bits, so it loses precision when mean**2
  dominates it.
  """
  scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
  if check_norm(kind) == "batch":
    return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=epsilon,
      dtype=dtype,
      scale_init=scale_init,
      force_float32_reductions=float32_reductions,
      name=name,
    )
  if not float32_reductions:
    raise ConfigError(
      f"float32_reductions=False applies to batch norm only, not to norm {kind!r}; keep it True or use norm='batch'."
    )
  if kind == "group":
    num_groups = max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(num_groups=num_groups, epsilon=epsilon, dtype=dtype, scale_init=scale_init, name=name)
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, scale_init=scale_init, name=name)


class DropPath(nn.Module):
  """Stochastic depth: drops a residual branch for whole examples, scaling survivors by 1/(1-rate).

  Same as torchvision's `StochasticDepth(rate, 'row')`; the mask comes from the 'dropout' rng.
  """

  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """`x` unchanged at inference or rate 0; in training, whole examples dropped with the 'dropout' rng."""
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
  """Stochastic-depth rate per block, rising linearly from 0 to `rate` at the last (torchvision, timm)."""
  if num_blocks <= 1:
    return [rate] * num_blocks
  return [rate * i / (num_blocks - 1) for i in range(num_blocks)]


def flatten_like_torch(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, C*H*W] in torch's NCHW order, so a converted first classifier layer lines up."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
