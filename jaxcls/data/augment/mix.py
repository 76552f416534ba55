"""Mixup and CutMix: blend each example with a partner from the same batch and mix their labels to match.

The partner of example i is example B-1-i of the global batch (the batch reversed), so pairing does not depend on
sharding. Each example draws its own mixing weight lam ~ Beta(alpha, alpha). Labels come out as soft float32
[B, K] (integer labels are one-hot encoded first); the task smooths them when label smoothing is on. An example
whose partner is padding (mask False) is left unmixed.
"""

import jax
import jax.numpy as jnp

from jaxcls.data.augment.base import AUGMENTATIONS, check_range, to_float, to_uint8
from jaxcls.data.augment.erase import box_mask


def soft_labels(labels: jax.Array, num_classes: int) -> jax.Array:
  """Labels as [B, K] float rows, so mixing ops can blend them whether they came hard or already soft."""
  return labels.astype(jnp.float32) if labels.ndim == 2 else jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def _mixing_op(name: str, alpha: float, probability: float, num_classes: int, mix_one):
  """An op that draws lam per example and lets mix_one(key, image, partner, lam) -> (image, actual lam) mix."""
  check_range(name, "alpha", alpha, 0.0, 1e3)
  check_range(name, "probability", probability, 0.0, 1.0)

  def one(key, image, partner):
    k_coin, k_lam, k_mix = jax.random.split(key, 3)
    if alpha == 0 or probability == 0:
      return image, jnp.float32(1.0)
    lam = jax.random.beta(k_lam, alpha, alpha)
    lam = jnp.where(jax.random.bernoulli(k_coin, probability), lam, 1.0)
    return mix_one(k_mix, image, partner, lam)

  def op(key, images, labels, mask):
    keys = jax.random.split(key, images.shape[0])
    mixed, lam = jax.vmap(one)(keys, images, images[::-1])
    use = mask[::-1]
    lam = jnp.where(use, lam, 1.0)
    images = jnp.where(use[:, None, None, None], mixed, images)
    targets = soft_labels(labels, num_classes)
    return images, lam[:, None] * targets + (1.0 - lam[:, None]) * targets[::-1]

  return op


@AUGMENTATIONS.register("mixup")
def mixup(alpha: float = 0.2, probability: float = 1.0, *, num_classes: int):
  """lam * image + (1 - lam) * partner, labels likewise (Zhang et al., 2018); alpha 0 is the identity."""

  def mix_one(key, image, partner, lam):
    del key
    return to_uint8(lam * to_float(image) + (1.0 - lam) * to_float(partner)), lam

  return _mixing_op("mixup", alpha, probability, num_classes, mix_one)


@AUGMENTATIONS.register("cutmix")
def cutmix(alpha: float = 1.0, probability: float = 1.0, *, num_classes: int):
  """Pastes a box of the partner covering about 1 - lam of the image (Yun et al., 2019); labels follow the area.

  The box is clipped at the borders, and the label weight is the area actually pasted.
  """

  def mix_one(key, image, partner, lam):
    h, w, _ = image.shape
    cut = jnp.sqrt(1.0 - lam)
    box_h, box_w = cut * h, cut * w
    centre = jax.random.uniform(key, (2,)) * jnp.array([h, w], jnp.float32)
    top, left = centre[0] - box_h / 2, centre[1] - box_w / 2
    inside = box_mask(h, w, top, left, box_h, box_w)
    pasted = jnp.mean(inside.astype(jnp.float32))
    return jnp.where(inside[..., None], partner, image), 1.0 - pasted

  return _mixing_op("cutmix", alpha, probability, num_classes, mix_one)
