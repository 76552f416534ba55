"""Augmentation on the device: pure JAX functions of (rng, images) run inside the jitted train step.

`config.augment` is a '|'-separated list of ops with keyword arguments, applied in order, e.g.
`'random_crop(padding=4)|flip_lr'`. Each op maps uint8 images [B, H, W, C] to uint8 images of the same shape,
with an independent random draw per example.
"""

import ast
import re
from typing import Callable

import jax
import jax.numpy as jnp

from jaxcls.errors import ConfigError
from jaxcls.registry import Registry

AUGMENTATIONS = Registry("augmentation")

Augment = Callable[[jax.Array, jax.Array], jax.Array]


def _per_example(fn):
  """Lifts fn(key, image) to fn(key, images) with one key per example."""
  def batched(key, images):
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(fn)(keys, images)
  return batched


@AUGMENTATIONS.register("flip_lr")
def flip_lr(probability: float = 0.5) -> Augment:
  """Mirrors each image left-right with the given probability."""
  def one(key, image):
    return jnp.where(jax.random.bernoulli(key, probability), image[:, ::-1], image)
  return _per_example(one)


@AUGMENTATIONS.register("random_crop")
def random_crop(padding: int = 4, mode: str = "reflect") -> Augment:
  """Pads each side by `padding` pixels ('reflect' or 'constant' zeros), then crops back at a random offset."""
  if mode not in ("reflect", "constant"):
    raise ConfigError(f"random_crop mode={mode!r} is not valid; use 'reflect' or 'constant'.")

  def one(key, image):
    h, w, _ = image.shape
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode=mode)
    dy, dx = jax.random.randint(key, (2,), 0, 2 * padding + 1)
    return jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
  return _per_example(one)


_OP = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*$", re.S)


def parse(spec: str | tuple | list) -> list[tuple[str, dict]]:
  """'a(x=1)|b' or ['a(x=1)', 'b'] -> [('a', {'x': 1}), ('b', {})]."""
  items = spec.split("|") if isinstance(spec, str) else list(spec)
  ops = []
  for item in items:
    if not str(item).strip():
      continue
    match = _OP.match(str(item))
    if not match:
      raise ConfigError(f"Cannot parse augmentation {item!r}; write it as name(key=value, ...).")
    name, args = match.group(1), match.group(2) or ""
    try:
      call = ast.parse(f"f({args})", mode="eval").body
      kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
      if call.args:
        raise ValueError("positional")
    except (SyntaxError, ValueError) as e:
      raise ConfigError(
          f"Cannot parse the arguments of augmentation {item!r}; use keyword literals like "
          f"random_crop(padding=4).") from e
    ops.append((name, kwargs))
  return ops


def build(spec: str | tuple | list) -> Augment:
  """One function applying every op of the spec in order; the identity for an empty spec."""
  fns = []
  for name, kwargs in parse(spec):
    factory = AUGMENTATIONS.get(name)
    try:
      fns.append(factory(**kwargs))
    except TypeError as e:
      raise ConfigError(f"Bad arguments for augmentation {name!r}: {e}.") from e

  def apply(key, images):
    for i, fn in enumerate(fns):
      images = fn(jax.random.fold_in(key, i), images)
    return images
  return apply
