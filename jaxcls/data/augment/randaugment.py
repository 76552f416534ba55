"""RandAugment (Cubuk et al., 2020): each example gets `num_ops` ops drawn from a fixed list, all at magnitude M.

Magnitudes use torchvision's 0..30 scale and ranges (shear 0.3, translate 150/331 of the size, rotate 30 degrees,
enhancement factors 1 +- 0.9, posterize 8..4 bits, solarize threshold 256..0), with a random sign where the op has
one. Every op with a magnitude is the identity at M = 0; 'autocontrast' and 'equalize' have none (leave them out
with `ops=` when that matters). Under `vmap`, `lax.switch` computes every op and selects, so the cost per op
applied is that of the whole list: keep `num_ops` small or name fewer `ops`.
"""

import jax
import jax.numpy as jnp

from jaxcls.core.errors import ConfigError
from jaxcls.data.augment import color, geometric
from jaxcls.data.augment.base import AUGMENTATIONS, check_range, per_example, to_float, to_uint8

MAX_MAGNITUDE = 30


def _enhance(adjust):
  return lambda image, f, sign: to_uint8(adjust(to_float(image), 1.0 + 0.9 * f * sign))


def _shear(axis):
  def params(f, sign, size):
    s = 0.3 * f * sign
    matrix = jnp.array([[1.0, s], [0.0, 1.0]]) if axis == "y" else jnp.array([[1.0, 0.0], [s, 1.0]])
    return matrix, jnp.zeros(2)

  return params


def _translate(axis):
  def params(f, sign, size):
    t = (150.0 / 331.0) * f * sign
    offset = jnp.array([t * size[0], 0.0]) if axis == "y" else jnp.array([0.0, t * size[1]])
    return jnp.eye(2), offset

  return params


def _rotate(f, sign, size):
  del size
  theta = jnp.deg2rad(30.0 * f * sign)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  return jnp.array([[cos, sin], [-sin, cos]]), jnp.zeros(2)


def _sharpness(x, factor):
  """Blends with a 3x3 smoothed copy (PIL's SMOOTH kernel); border pixels stay as they are."""
  h, w, _ = x.shape
  kernel = jnp.array([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
  padded = jnp.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
  smooth = sum(kernel[i, j] * padded[i : i + h, j : j + w] for i in range(3) for j in range(3))
  interior = jnp.zeros((h, w, 1), bool).at[1:-1, 1:-1].set(True)
  return color.blend(x, jnp.where(interior, jnp.round(smooth), x), factor)


def _posterize(image, f, sign):
  del sign
  bits = 8 - int(round(4 * f))
  return image & jnp.uint8((0xFF << (8 - bits)) & 0xFF)


def _solarize(image, f, sign):
  del sign
  threshold = 256.0 * (1.0 - f)
  return jnp.where(to_float(image) >= threshold, 255 - image, image)


def _autocontrast(image, f, sign):
  del f, sign
  x = to_float(image)
  low, high = jnp.min(x, axis=(0, 1)), jnp.max(x, axis=(0, 1))
  scale = jnp.where(high > low, 255.0 / jnp.where(high > low, high - low, 1.0), 1.0)
  low = jnp.where(high > low, low, 0.0)
  return to_uint8((x - low) * scale)


def _equalize_channel(channel):
  """torchvision's histogram equalisation of one uint8 channel [H, W]."""
  hist = jnp.zeros(256, jnp.int32).at[channel.ravel()].add(1)
  step = (channel.size - hist[jnp.max(channel)]) // 255
  safe = jnp.maximum(step, 1)
  lut = (jnp.cumsum(hist) + safe // 2) // safe
  lut = jnp.clip(jnp.concatenate([jnp.zeros(1, jnp.int32), lut[:-1]]), 0, 255).astype(jnp.uint8)
  return jnp.where(step > 0, lut[channel], channel)


def _equalize(image, f, sign):
  del f, sign
  return jax.vmap(_equalize_channel, in_axes=2, out_axes=2)(image)


# Geometric ops: name -> params(magnitude fraction (static), sign +-1 (traced), (H, W)) -> (matrix, offset) of
# `augment_geometric.affine`. Selecting the parameters and resampling once is much cheaper than one resampling
# per op under `vmap`.
AFFINE_OPS = {
  "shear_x": _shear("x"),
  "shear_y": _shear("y"),
  "translate_x": _translate("x"),
  "translate_y": _translate("y"),
  "rotate": _rotate,
}

# Pixel ops: name -> fn(uint8 image, magnitude fraction (static), sign +-1 (traced)) -> uint8 image.
PIXEL_OPS = {
  "identity": lambda image, f, sign: image,
  "brightness": _enhance(color.adjust_brightness),
  "color": _enhance(color.adjust_saturation),
  "contrast": _enhance(color.adjust_contrast),
  "sharpness": _enhance(_sharpness),
  "posterize": _posterize,
  "solarize": _solarize,
  "autocontrast": _autocontrast,
  "equalize": _equalize,
}

OPS = ("identity", *AFFINE_OPS, *(n for n in PIXEL_OPS if n != "identity"))


@AUGMENTATIONS.register("rand_augment")
def rand_augment(num_ops: int = 2, magnitude: float = 9, ops=None):
  """Applies `num_ops` ops, each drawn uniformly per example from `ops` (default: all of OPS), at `magnitude`."""
  if not isinstance(num_ops, int) or num_ops < 0:
    raise ConfigError(f"rand_augment(num_ops={num_ops!r}) is not valid; use an integer >= 0.")
  check_range("rand_augment", "magnitude", magnitude, 0, MAX_MAGNITUDE)
  names = OPS if ops is None else ((ops,) if isinstance(ops, str) else tuple(ops))
  unknown = [n for n in names if n not in OPS]
  if unknown or not names:
    raise ConfigError(f"rand_augment(ops={ops!r}) is not valid; choose a non-empty subset of {', '.join(OPS)}.")
  f = magnitude / MAX_MAGNITUDE
  affine_names = [n for n in names if n in AFFINE_OPS]
  pixel_names = [n for n in names if n in PIXEL_OPS]
  names = affine_names + pixel_names
  # Index i < len(affine_names) is a geometric op, the rest are pixel ops.
  affine_branches = [lambda sign, size, fn=AFFINE_OPS[n]: fn(f, sign, size) for n in affine_names]
  pixel_branches = [lambda image, sign, fn=PIXEL_OPS[n]: fn(image, f, sign) for n in pixel_names]

  def apply_one(image, index, sign):
    outputs = []
    if affine_branches:
      which = jnp.clip(index, 0, len(affine_branches) - 1)
      matrix, offset = jax.lax.switch(which, affine_branches, sign, image.shape[:2])
      outputs.append(geometric.affine(image, matrix, offset))
    if pixel_branches:
      which = jnp.clip(index - len(affine_branches), 0, len(pixel_branches) - 1)
      outputs.append(jax.lax.switch(which, pixel_branches, image, sign))
    return outputs[0] if len(outputs) == 1 else jnp.where(index < len(affine_branches), *outputs)

  def one(u, image):
    for i in range(num_ops):
      index = jnp.minimum(jnp.floor(u[2 * i] * len(names)), len(names) - 1).astype(jnp.int32)
      image = apply_one(image, index, jnp.where(u[2 * i + 1] < 0.5, 1.0, -1.0))
    return image

  return per_example(one, 2 * num_ops)
