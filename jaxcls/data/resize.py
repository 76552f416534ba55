"""Host-side resize of in-memory images, done once at load time so every step reads ready-sized arrays.

Pillow's bilinear filter widens its support when shrinking, so downscaling is antialiased (no moire), and the
result matches what users get when they resize their own images with Pillow.
"""

from collections.abc import Sequence

import numpy as np
from PIL import Image

from jaxcls.core.errors import ConfigError


def parse_image_size(value: Sequence[int] | None) -> tuple[int, int] | None:
  """`dataset.image_size` as (height, width), or None to keep the native size."""
  if value is None:
    return None
  if isinstance(value, int):
    value = (value, value)
  try:
    size = tuple(int(v) for v in value)
  except (TypeError, ValueError):
    size = ()
  if len(size) != 2 or min(size) < 1:
    raise ConfigError(f"dataset.image_size={value!r} is invalid; use (height, width) with positive integers.")
  return size


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 [N, H, W, C] images resized to `size` (height, width); returned unchanged if already that size."""
  height, width = size
  if images.shape[1:3] == (height, width):
    return images
  out = np.empty((len(images), height, width, images.shape[3]), np.uint8)
  for i, image in enumerate(images):
    if image.shape[2] == 3:
      out[i] = np.asarray(Image.fromarray(np.asarray(image)).resize((width, height), Image.Resampling.BILINEAR))
    else:  # Pillow has no mode for arbitrary channel counts: resize each channel as its own grayscale image
      for c in range(image.shape[2]):
        out[i, :, :, c] = np.asarray(
          Image.fromarray(np.ascontiguousarray(image[:, :, c])).resize((width, height), Image.Resampling.BILINEAR)
        )
  return out
