"""Colour ops: brightness / contrast / saturation / hue jitter, grayscale, Gaussian blur.

The adjustments work on float pixels in [0, 255] units (RandAugment reuses them); the ops round back to uint8.
Images with other than 3 channels have no hue or saturation: those adjustments leave them unchanged.
"""

import math

import jax
import jax.numpy as jnp

from jaxcls.data.augment.base import AUGMENTATIONS, check_range, per_example, to_float, to_uint8, with_probability

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision and PIL


def gray(x: jax.Array) -> jax.Array:
  """Luma [H, W, 1] of float pixels [H, W, C] (the channel mean when C is not 3)."""
  if x.shape[-1] != 3:
    return jnp.mean(x, axis=-1, keepdims=True)
  return jnp.sum(x * jnp.asarray(_LUMA, x.dtype), axis=-1, keepdims=True)


def blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
  """other + factor * (image - other): factor 1 is `image`, 0 is `other`, > 1 pushes away from `other`."""
  return jnp.clip(other + factor * (image - other), 0.0, 255.0)


def adjust_brightness(x, factor):
  """Blends towards black: factor 1 keeps the image, 0 gives black (torchvision's definition)."""
  return blend(x, jnp.zeros_like(x), factor)


def adjust_contrast(x, factor):
  """Blends towards the mean grey level: factor 0 gives a flat grey image."""
  return blend(x, jnp.mean(gray(x)), factor)


def adjust_saturation(x, factor):
  """Blends towards the grey version (a no-op for one-channel images): factor 0 gives grey."""
  return x if x.shape[-1] != 3 else blend(x, gray(x), factor)


def adjust_hue(x, delta):
  """Rotates the hue by `delta` turns (in [-0.5, 0.5]) in HSV space."""
  if x.shape[-1] != 3:
    return x
  rgb = x / 255.0
  value = jnp.max(rgb, -1)
  chroma = value - jnp.min(rgb, -1)
  safe = jnp.where(chroma > 0, chroma, 1.0)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  hue = jnp.where(value == r, (g - b) / safe, jnp.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  hue = jnp.where(chroma > 0, hue / 6.0, 0.0)
  hue = jnp.mod(hue + delta, 1.0)
  saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  # HSV -> RGB without branches: channel n reads k = (n + 6 hue) mod 6.
  k = jnp.mod(jnp.asarray([5.0, 3.0, 1.0]) + 6.0 * hue[..., None], 6.0)
  ramp = jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  out = value[..., None] * (1.0 - saturation[..., None] * ramp)
  return out * 255.0


def _factor(u, strength):
  """A multiplicative factor, uniform in [max(0, 1 - strength), 1 + strength] for u uniform in [0, 1)."""
  low = max(0.0, 1.0 - strength)
  return low + (1.0 + strength - low) * u


@AUGMENTATIONS.register("color_jitter")
def color_jitter(
  brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.0, probability: float = 1.0
):
  """Brightness, contrast, saturation and hue jitter, in that fixed order, each drawn per example.

  Strengths as in torchvision's ColorJitter: factors in [1 - s, 1 + s], hue shift in [-hue, hue] turns.
  """
  for name, value, high in (
    ("brightness", brightness, 10.0),
    ("contrast", contrast, 10.0),
    ("saturation", saturation, 10.0),
    ("hue", hue, 0.5),
    ("probability", probability, 1.0),
  ):
    check_range("color_jitter", name, value, 0.0, high)

  def one(u, image):
    x = to_float(image)
    x = adjust_brightness(x, _factor(u[0], brightness))
    x = adjust_contrast(x, _factor(u[1], contrast))
    x = adjust_saturation(x, _factor(u[2], saturation))
    if hue > 0:  # the HSV round trip is the costliest part; skip it when hue is off
      x = adjust_hue(x, hue * (2.0 * u[3] - 1.0))
    return to_uint8(x)

  return per_example(with_probability(probability, one), 5)


@AUGMENTATIONS.register("grayscale")
def grayscale(probability: float = 0.2):
  """Replaces each image by its luma (in every channel) with the given probability."""
  check_range("grayscale", "probability", probability, 0.0, 1.0)

  def one(u, image):
    del u
    return to_uint8(jnp.broadcast_to(gray(to_float(image)), image.shape))

  return per_example(with_probability(probability, one), 1)


def blur(image: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """Separable Gaussian blur of uint8 [H, W, C] with a (traced) sigma; reflect padding keeps the size."""
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 1e-3)) ** 2)
  weights = weights / jnp.sum(weights)
  h, w, _ = image.shape
  x = jnp.pad(to_float(image), ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
  x = sum(weights[i] * x[i : i + h] for i in range(2 * radius + 1))
  x = sum(weights[i] * x[:, i : i + w] for i in range(2 * radius + 1))
  return to_uint8(x)


@AUGMENTATIONS.register("gaussian_blur")
def gaussian_blur(sigma=(0.1, 2.0), probability: float = 0.5):
  """Blurs with a Gaussian of standard deviation drawn from `sigma` (pixels), with the given probability.

  The kernel spans 3 sigma of the largest sigma (at most the image size); sigma 0 is the identity.
  """
  check_range("gaussian_blur", "sigma", sigma, 0.0, 100.0)
  check_range("gaussian_blur", "probability", probability, 0.0, 1.0)
  low, high = sigma

  def one(u, image):
    radius = max(1, min(int(math.ceil(3 * high)), min(image.shape[:2]) - 1))
    return blur(image, low + (high - low) * u[0], radius)

  return per_example(with_probability(probability, one), 2)
