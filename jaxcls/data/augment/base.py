"""What an augmentation op is: the registry, the op signature, and lifting per-image functions to batches.

An op is `op(key, images, labels, mask) -> (images, labels)` over a whole (global) batch: images uint8
[B, H, W, C] in and out, labels int [B] or soft float32 [B, K]. Keeping uint8 between ops means every op sees the
same input type, nothing can normalise twice (the train step normalises once, after the last op), and the
rounding an op adds is at most half a grey level.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxcls.core.registry import Registry

# name -> factory(**params) -> Op. A factory with a `num_classes` parameter gets the dataset's class count.
# `jaxcls.register_augmentation` files one's own here.
AUGMENTATIONS = Registry("augmentation")

Op = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def per_example(fn: Callable[[jax.Array, jax.Array], jax.Array], draws: int) -> Op:
  """Lifts fn(u, image) -> image to an op; u is float32 [draws], uniform in [0, 1), drawn for each example.

  Each example's draws come from its own key, `jax.random.split` of the batch key (threefry, partitionable), so
  example i gets the same values whether the batch sits on one device or is sharded over eight. One draw of all
  the uniforms an op needs keeps the compiled step small (each threefry call costs compile time).
  """

  def op(key, images, labels, mask):
    del mask  # padding rows are augmented too; the loss ignores them
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, image: fn(jax.random.uniform(k, (max(draws, 1),)), image))(keys, images), labels

  return op


def with_probability(probability: float, fn: Callable[[jax.Array, jax.Array], jax.Array]):
  """fn(u, image) applied when u[-1] < probability, else the image unchanged (give fn one extra draw)."""
  if probability <= 0.0:
    return lambda u, image: image
  return lambda u, image: jnp.where(u[-1] < probability, fn(u, image), image)


def to_float(image: jax.Array) -> jax.Array:
  """uint8 pixels as float32 in [0, 255] units, for ops that compute (rounded back by `to_uint8`)."""
  return image.astype(jnp.float32)


def to_uint8(x: jax.Array) -> jax.Array:
  """Float pixel values in [0, 255] units back to uint8 (rounded, clipped)."""
  return jnp.clip(jnp.round(x), 0.0, 255.0).astype(jnp.uint8)


def check_range(op: str, name: str, value, low: float, high: float) -> None:
  """A ConfigError naming the op's parameter when `value` (a number or (min, max) pair) leaves [low, high]."""
  from jaxcls.core.errors import ConfigError

  values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  ok = all(isinstance(v, (int, float)) and low <= v <= high for v in values)
  if isinstance(value, (tuple, list)):
    ok = ok and len(values) == 2 and values[0] <= values[1]
  if not ok:
    what = "a (min, max) pair" if isinstance(value, (tuple, list)) else "a number"
    raise ConfigError(f"{op}({name}={value!r}) is not valid; use {what} in [{low}, {high}].")
