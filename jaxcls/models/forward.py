"""The eval forward pass that evaluation, `predict`, `export` and `explain` share, and the variables it applies.

One implementation, so that their probabilities agree: uint8 images are normalised on the device in the compute
dtype, the model runs in eval mode, and the test-time augmentation views (jaxcls/models/tta.py) are averaged. It
lives with the models, below training, evaluation and inference, because all three apply it.
"""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.core.errors import ConfigError
from jaxcls.models import tta as tta_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str, what: str = "config.dtype"):
  """The jax dtype of a compute dtype name; a ConfigError naming `what` and the valid names otherwise."""
  if name not in DTYPES:
    raise ConfigError(f"{what}={name!r} is not valid; use one of {', '.join(DTYPES)}.")
  return DTYPES[name]


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float], dtype) -> jax.Array:
  """uint8 [B, H, W, C] -> (x/255 - mean) / std in the compute dtype (done on the device, not the host)."""
  mean = jnp.asarray(mean, jnp.float32) * 255.0
  inv_std = 1.0 / (jnp.asarray(std, jnp.float32) * 255.0)
  return ((images.astype(jnp.float32) - mean) * inv_std).astype(dtype)


def model_variables(variables: Mapping) -> dict:
  """The variables a model applies, from {'params', 'batch_stats'} (a checkpoint's, a state's or a restored
  workdir's): params, and batch statistics only for models that keep them (flax rejects an empty collection)."""
  applied = {"params": variables["params"]}
  if variables.get("batch_stats"):
    applied["batch_stats"] = variables["batch_stats"]
  return applied


def eval_logits(
  model: nn.Module, variables: dict, images: jax.Array, *, mean, std, dtype: str, tta: str = "none"
) -> jax.Array:
  """Eval-mode logits of uint8 images [B, H, W, C], normalised on the device in `dtype` and averaged over the
  test-time augmentation views `tta` (`variables` as `model_variables` gives them); jittable."""
  dtype = compute_dtype(dtype)

  def forward(views):
    return model.apply(variables, normalize(views, mean, std, dtype), train=False)

  return tta_lib.apply_tta(forward, images, tta)
