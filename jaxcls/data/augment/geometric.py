"""Geometric ops: crops, flips, rotation, and the bilinear resampler they (and RandAugment) share.

Pixel centres sit at integer coordinates; an op computes, for every output pixel, the source coordinate it reads,
so the identity transform reads each pixel exactly and returns the image unchanged.
"""

import math

import jax
import jax.numpy as jnp

from jaxcls.core.errors import ConfigError
from jaxcls.data.augment.base import AUGMENTATIONS, check_range, per_example, to_float, to_uint8, with_probability


def sample_bilinear(image: jax.Array, ys: jax.Array, xs: jax.Array, fill=None) -> jax.Array:
  """uint8 [H, W, C] read at float source coordinates ys, xs [h, w] -> uint8 [h, w, C].

  Points outside the image take `fill` (a grey level), or the nearest edge pixel when `fill` is None.
  """
  h, w, _ = image.shape
  if fill is None:
    ys, xs = jnp.clip(ys, 0.0, h - 1.0), jnp.clip(xs, 0.0, w - 1.0)
  y0, x0 = jnp.floor(ys), jnp.floor(xs)
  wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
  src = to_float(image)

  def read(y, x):
    inside = (y >= 0) & (y <= h - 1) & (x >= 0) & (x <= w - 1)
    value = src[jnp.clip(y, 0, h - 1).astype(jnp.int32), jnp.clip(x, 0, w - 1).astype(jnp.int32)]
    return value if fill is None else jnp.where(inside[..., None], value, float(fill))

  top = read(y0, x0) * (1 - wx) + read(y0, x0 + 1) * wx
  bottom = read(y0 + 1, x0) * (1 - wx) + read(y0 + 1, x0 + 1) * wx
  return to_uint8(top * (1 - wy) + bottom * wy)


def affine(image: jax.Array, matrix: jax.Array, offset: jax.Array, fill=0) -> jax.Array:
  """Reads output pixel p (relative to the centre) from source centre + matrix @ p + offset, as (y, x)."""
  h, w, _ = image.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
  ys = cy + matrix[0, 0] * y + matrix[0, 1] * x + offset[0]
  xs = cx + matrix[1, 0] * y + matrix[1, 1] * x + offset[1]
  return sample_bilinear(image, ys, xs, fill)


def rotate_image(image: jax.Array, degrees: jax.Array, fill=0) -> jax.Array:
  """Rotates counter-clockwise by `degrees` about the centre; uncovered corners take `fill`."""
  theta = jnp.deg2rad(degrees)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  return affine(image, jnp.array([[cos, sin], [-sin, cos]]), jnp.zeros(2), fill)


_ATTEMPTS = 10
BOX_DRAWS = 2 * _ATTEMPTS + 2  # uniforms `sample_box` reads


def sample_box(u: jax.Array, height: int, width: int, scale, ratio):
  """A random box (top, left, h, w) covering a `scale` fraction of the area with aspect w/h in `ratio`.

  `u` holds BOX_DRAWS uniforms. Like torchvision, tries a few candidates and keeps the first that fits; if none
  fits, the first is clipped to the image. scale=(1, 1), ratio=(1, 1) on a square image is the whole image.
  """
  fraction = scale[0] + (scale[1] - scale[0]) * u[:_ATTEMPTS]
  log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[_ATTEMPTS : 2 * _ATTEMPTS]
  area, aspect = height * width * fraction, jnp.exp(log_ratio)
  box_w, box_h = jnp.sqrt(area * aspect), jnp.sqrt(area / aspect)
  pick = jnp.argmax((box_w <= width) & (box_h <= height))  # 0 when none fits
  box_h, box_w = jnp.minimum(box_h[pick], height), jnp.minimum(box_w[pick], width)
  return u[-2] * (height - box_h), u[-1] * (width - box_w), box_h, box_w


@AUGMENTATIONS.register("random_crop")
def random_crop(padding: int = 4, mode: str = "reflect"):
  """Pads each side by `padding` pixels ('reflect' or 'constant' zeros), then crops back at a random offset."""
  if mode not in ("reflect", "constant"):
    raise ConfigError(f"random_crop mode={mode!r} is not valid; use 'reflect' or 'constant'.")
  if not isinstance(padding, int) or padding < 0:
    raise ConfigError(f"random_crop(padding={padding!r}) is not valid; use an integer >= 0.")

  def one(u, image):
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode=mode)
    dy, dx = jnp.minimum(jnp.floor(u * (2 * padding + 1)), 2 * padding).astype(jnp.int32)
    return jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)

  return per_example(one, 2)


@AUGMENTATIONS.register("random_resized_crop")
def random_resized_crop(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """Crops a random box (area fraction in `scale`, aspect in `ratio`) and resizes it back to the image size.

  Bilinear, without antialiasing: fine for the small zoom-outs of training crops.
  """
  check_range("random_resized_crop", "scale", scale, 0.0, 1.0)
  check_range("random_resized_crop", "ratio", ratio, 1e-3, 1e3)

  def one(u, image):
    h, w, _ = image.shape
    top, left, box_h, box_w = sample_box(u, h, w, scale, ratio)
    ys = top + (jnp.arange(h, dtype=jnp.float32) + 0.5) * (box_h / h) - 0.5
    xs = left + (jnp.arange(w, dtype=jnp.float32) + 0.5) * (box_w / w) - 0.5
    return sample_bilinear(image, *jnp.meshgrid(ys, xs, indexing="ij"))

  return per_example(one, BOX_DRAWS)


@AUGMENTATIONS.register("flip_lr")
def flip_lr(probability: float = 0.5):
  """Mirrors each image left-right with the given probability."""
  check_range("flip_lr", "probability", probability, 0.0, 1.0)
  return per_example(with_probability(probability, lambda u, image: image[:, ::-1]), 1)


@AUGMENTATIONS.register("flip_ud")
def flip_ud(probability: float = 0.5):
  """Flips each image upside down with the given probability (for data without a natural 'up')."""
  check_range("flip_ud", "probability", probability, 0.0, 1.0)
  return per_example(with_probability(probability, lambda u, image: image[::-1]), 1)


@AUGMENTATIONS.register("rotate")
def rotate(degrees: float = 15.0, fill: int = 0):
  """Rotates each image by an angle drawn uniformly from [-degrees, degrees]; corners take the grey `fill`."""
  check_range("rotate", "degrees", degrees, 0.0, 180.0)
  check_range("rotate", "fill", fill, 0, 255)

  def one(u, image):
    return rotate_image(image, degrees * (2.0 * u[0] - 1.0), fill)

  return per_example(one, 1)
