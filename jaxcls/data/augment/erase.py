"""Random erasing (cutout): blanks a random rectangle, so the model cannot rely on one region of the image."""

import jax
import jax.numpy as jnp

from jaxcls.core.errors import ConfigError
from jaxcls.data.augment.base import AUGMENTATIONS, check_range
from jaxcls.data.augment.geometric import BOX_DRAWS, sample_box


def box_mask(height: int, width: int, top, left, box_h, box_w) -> jax.Array:
  """bool [H, W]: True at pixels whose centre lies inside the box (top, left, h, w)."""
  ys = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
  xs = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5
  return (ys >= top) & (ys < top + box_h) & (xs >= left) & (xs < left + box_w)


@AUGMENTATIONS.register("random_erasing")
def random_erasing(probability: float = 0.25, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), value="random"):
  """Erases a box of `scale` area fraction and aspect `ratio` with the given probability (Zhong et al., 2017).

  `value` is 'random' (uniform noise per pixel, as timm) or one grey level 0..255 (0 is the classic cutout).
  """
  check_range("random_erasing", "probability", probability, 0.0, 1.0)
  check_range("random_erasing", "scale", scale, 0.0, 1.0)
  check_range("random_erasing", "ratio", ratio, 1e-3, 1e3)
  if value != "random" and not (isinstance(value, int) and 0 <= value <= 255):
    raise ConfigError(f"random_erasing(value={value!r}) is not valid; use 'random' or a grey level 0..255.")

  def one(key, image):
    k_u, k_noise = jax.random.split(key)
    u = jax.random.uniform(k_u, (BOX_DRAWS + 1,))
    h, w, _ = image.shape
    inside = box_mask(h, w, *sample_box(u[:BOX_DRAWS], h, w, scale, ratio)) & (u[-1] < probability)
    if value == "random":
      fill = jax.random.bits(k_noise, image.shape, jnp.uint8)
    else:
      fill = jnp.full(image.shape, value, jnp.uint8)
    return jnp.where(inside[..., None], fill, image)

  def op(key, images, labels, mask):
    del mask
    if probability == 0:
      return images, labels
    return jax.vmap(one)(jax.random.split(key, images.shape[0]), images), labels

  return op
