"""Test-time augmentation: a model's logits averaged over fixed views of each image (`config.eval_tta`).

One place defines the views, so the eval step, `python -m jaxcls.predict` and an exported model all average the
same views with the same weights, and predict's probabilities stay equal to evaluation's. Averaging is over
logits, so it works for every task: the task turns the averaged logits into its outputs afterwards.

  'none'            the image alone.
  'flip'            the image and its left-right mirror, 1/2 each.
  'flip_translate'  airbench's level-2 TTA (KellerJordan/cifar10-airbench, `infer_mirror_translate`):
                    0.5 * flip(x) + 0.5 * mean(flip(x read at (0, 0)), flip(x read at (2, 2))) of a 1-pixel
                    reflect-padded x, i.e. x moved one pixel down-right and one pixel up-left: 6 forward passes.

Views are pixel permutations (mirror, reflect-padded shift), so they commute with the per-pixel normalisation and
may be taken on uint8 or float images alike.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.config import eval_tta
from jaxcls.core.errors import ConfigError

KINDS = eval_tta.EVAL_TTA_KINDS  # the config layer owns the names, to check a config without jax
# How many forward passes each kind costs.
PASSES = {"none": 1, "flip": 2, "flip_translate": 6}


check = eval_tta.check_eval_tta  # `kind` when it names a TTA; otherwise a ConfigError listing the valid names


def from_config(config) -> str:
  """The config's checked `eval_tta`; 'none' for a workdir's config.json written before the key existed."""
  return check(config.get("eval_tta", "none"))


def _mirror(images: jax.Array) -> jax.Array:
  return images[:, :, ::-1, :]


def _translate(images: jax.Array, offset: int) -> jax.Array:
  """The image read at (offset, offset) from a 1-pixel reflect-padded copy: offset 0 moves it down-right."""
  height, width = images.shape[1], images.shape[2]
  if min(height, width) < 2:
    raise ConfigError(
      f"eval_tta='flip_translate' needs images of at least 2x2 pixels, got {height}x{width}; "
      "use eval_tta='flip' or 'none'."
    )
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  return padded[:, offset : offset + height, offset : offset + width, :]


def views(images: jax.Array, kind: str) -> tuple[list[jax.Array], np.ndarray]:
  """(views of `images` [B, H, W, C], one weight per view, summing to 1) for TTA `kind`."""
  check(kind)
  if kind == "none":
    return [images], np.array([1.0])
  if kind == "flip":
    return [images, _mirror(images)], np.array([0.5, 0.5])
  shifted = [_translate(images, 0), _translate(images, 2)]
  out = [images, _mirror(images)]
  for view in shifted:
    out += [view, _mirror(view)]
  # airbench: 0.5 * mirror-mean(x) + 0.5 * mean over the two shifts of mirror-mean(shift).
  return out, np.array([0.25, 0.25, 0.125, 0.125, 0.125, 0.125])


def apply_tta(apply_fn: Callable[[jax.Array], jax.Array], images: jax.Array, kind: str) -> jax.Array:
  """The weighted mean of `apply_fn(view)` (logits [B, ...]) over the views of `images`; jittable.

  'none' returns `apply_fn(images)` untouched. Otherwise the views go through one `lax.scan`, so the model is
  traced and compiled once rather than once per view, and only one view's activations are live at a time; the
  mean is accumulated in float32.
  """
  if check(kind) == "none":
    return apply_fn(images)
  images_per_view, weights = views(images, kind)

  def add_view(total, view_and_weight):
    view, weight = view_and_weight
    return total + weight * apply_fn(view).astype(jnp.float32), None

  logits = jax.eval_shape(apply_fn, images)
  total, _ = jax.lax.scan(
    add_view, jnp.zeros(logits.shape, jnp.float32), (jnp.stack(images_per_view), jnp.asarray(weights, jnp.float32))
  )
  return total
