"""Attribution maps: which pixels of one image a classifier's score for one class depends on.

Every function takes `score_fn(images [B, H, W, C]) -> scores [B, K]` (the model applied in eval mode to
normalised float images, followed by whatever turns logits into per-class scores), one normalised image
[H, W, C] and a class index, and returns an [H, W] float32 map. They are pure and jittable (the class index may be
traced), and take gradients with respect to the normalised input, i.e. the array the model sees.

- `saliency`: max over channels of |d score / d pixel| (Simonyan et al. 2014).
- `smoothgrad`: the gradient averaged over noisy copies of the image, then as `saliency` (Smilkov et al. 2017).
- `integrated_gradients`: (x - baseline) times the gradient averaged along the straight path from the baseline,
  summed over channels, signed; its total is f(x) - f(baseline) up to the quadrature error (Sundararajan et al.
  2017).
- `grad_cam`: ReLU of the last spatial feature map weighted by its spatially averaged gradient, upsampled
  bilinearly to the image (Selvaraju et al. 2017). The feature map is found without touching model code: every
  module method's output is watched with `flax.linen.intercept_methods`, the last [B, h, w, c] output with h*w > 1
  (in order of completion, so a block's output comes after its layers') is the map, and the gradient is taken
  with respect to a zero tensor added to that output. A model with token sequences ([B, N, D] outputs: a vision
  transformer) or without a map larger than 1x1 gets a ConfigError.

Batches of noisy copies or path points go through the model `batch_size` at a time (`jax.lax.map`), so memory
stays bounded for large models and many samples.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.core.errors import ConfigError

ScoreFn = Callable[[jax.Array], jax.Array]  # normalised images [B, H, W, C] -> class scores [B, K]

IG_RULES = ("trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def _score_of(score_fn: ScoreFn, class_index) -> Callable[[jax.Array], jax.Array]:
  """images [B, H, W, C] -> the summed score of `class_index` (examples are independent in eval mode)."""
  return lambda images: jnp.sum(jnp.take(score_fn(images), class_index, axis=1))


def _batched_gradients(score_fn: ScoreFn, images: jax.Array, class_index, batch_size: int) -> jax.Array:
  """d score[class] / d image for each of `images` [N, H, W, C], `batch_size` images per model call."""
  grad_fn = jax.grad(_score_of(score_fn, class_index))
  batch_size = max(1, min(int(batch_size), images.shape[0]))
  if batch_size >= images.shape[0]:
    return grad_fn(images)
  # lax.map with batch_size vmaps over chunks; each chunk is one model call on [chunk, H, W, C].
  return jax.lax.map(lambda image: grad_fn(image[None])[0], images, batch_size=batch_size)


def saliency(score_fn: ScoreFn, image: jax.Array, class_index) -> jax.Array:
  """[H, W] max over channels of |gradient of the class score| at `image`."""
  grads = jax.grad(_score_of(score_fn, class_index))(image[None].astype(jnp.float32))[0]
  return jnp.max(jnp.abs(grads), axis=-1)


def smoothgrad(
  score_fn: ScoreFn,
  image: jax.Array,
  class_index,
  key: jax.Array,
  *,
  noise_level: float = 0.15,
  num_samples: int = 32,
  batch_size: int = 32,
) -> jax.Array:
  """[H, W] saliency of the gradient averaged over `num_samples` copies of `image` plus Gaussian noise.

  The noise's standard deviation is `noise_level` times the image's value range (max - min), the paper's recipe
  (10-20% works best there), so the same setting suits any normalisation.
  """
  if num_samples < 1 or noise_level < 0:
    raise ConfigError(f"SmoothGrad needs num_samples >= 1 and noise_level >= 0; got {num_samples} and {noise_level}.")
  image = image.astype(jnp.float32)
  sigma = noise_level * (jnp.max(image) - jnp.min(image))
  noisy = image[None] + sigma * jax.random.normal(key, (num_samples,) + image.shape, jnp.float32)
  grads = _batched_gradients(score_fn, noisy, class_index, batch_size)
  return jnp.max(jnp.abs(jnp.mean(grads, axis=0)), axis=-1)


def path_points(num_steps: int, rule: str = "trapezoid") -> tuple[jax.Array, jax.Array]:
  """(alphas, weights) of the quadrature of the integral over [0, 1] that integrated gradients uses."""
  if num_steps < 1:
    raise ConfigError(f"Integrated gradients needs num_steps >= 1; got {num_steps}.")
  if rule not in IG_RULES:
    raise ConfigError(f"Unknown integration rule {rule!r}; valid: {', '.join(IG_RULES)}.")
  m = num_steps
  if rule == "trapezoid":
    alphas = jnp.arange(m + 1, dtype=jnp.float32) / m
    weights = jnp.full((m + 1,), 1.0 / m, jnp.float32).at[0].multiply(0.5).at[-1].multiply(0.5)
    return alphas, weights
  offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
  return (jnp.arange(m, dtype=jnp.float32) + offset) / m, jnp.full((m,), 1.0 / m, jnp.float32)


def integrated_gradients_per_channel(
  score_fn: ScoreFn,
  image: jax.Array,
  class_index,
  baseline: jax.Array | None = None,
  *,
  num_steps: int = 32,
  rule: str = "trapezoid",
  batch_size: int = 32,
) -> jax.Array:
  """[H, W, C] signed attributions whose sum approximates score(image) - score(baseline).

  `baseline` (default zeros: the dataset mean, once normalised) is a normalised image of the same shape; a
  black image is `(0 - mean) / std`.
  """
  image = image.astype(jnp.float32)
  baseline = jnp.zeros_like(image) if baseline is None else jnp.broadcast_to(baseline, image.shape).astype(jnp.float32)
  alphas, weights = path_points(num_steps, rule)
  points = baseline[None] + alphas[:, None, None, None] * (image - baseline)[None]
  grads = _batched_gradients(score_fn, points, class_index, batch_size)
  return (image - baseline) * jnp.tensordot(weights, grads, axes=1)


def integrated_gradients(
  score_fn: ScoreFn,
  image: jax.Array,
  class_index,
  baseline: jax.Array | None = None,
  *,
  num_steps: int = 32,
  rule: str = "trapezoid",
  batch_size: int = 32,
) -> jax.Array:
  """[H, W] integrated gradients summed over channels (signed; the map's total keeps the completeness sum)."""
  return jnp.sum(
    integrated_gradients_per_channel(
      score_fn, image, class_index, baseline, num_steps=num_steps, rule=rule, batch_size=batch_size
    ),
    axis=-1,
  )


# --- Grad-CAM. ---


@dataclasses.dataclass(frozen=True)
class FeatureMap:
  """The module output Grad-CAM uses: its position among all watched outputs, its module path and shape."""

  index: int
  module: str
  shape: tuple[int, ...]


def _watch(on_output: Callable[[int, str, jax.Array], jax.Array]):
  """An interceptor that passes every array output of a module method (in completion order) to `on_output`."""
  counter = [0]

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "setup" or not isinstance(out, jax.Array):
      return out
    index = counter[0]
    counter[0] += 1
    name = "/".join(context.module.path) or type(context.module).__name__
    if context.method_name != "__call__":
      name = f"{name}.{context.method_name}"
    return on_output(index, name, out)

  return interceptor


def find_feature_map(score_fn: ScoreFn, image_shape: tuple[int, ...]) -> FeatureMap:
  """The last [1, h, w, c] module output with h*w > 1 (traced abstractly: no computation)."""
  outputs = []

  def record(index, module, out):
    outputs.append(FeatureMap(index, module, tuple(out.shape)))
    return out

  def run(images):
    with nn.intercept_methods(_watch(record)):
      return score_fn(images)

  jax.eval_shape(run, jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32))
  tokens = [o for o in outputs if len(o.shape) == 3]
  if tokens:
    raise ConfigError(
      f"Grad-CAM needs a convolutional model: this one turns its image into token sequences "
      f"({tokens[0].module} outputs shape {tokens[0].shape}), as a vision transformer does; use "
      "saliency, smoothgrad or integrated_gradients."
    )
  spatial = [o for o in outputs if len(o.shape) == 4 and o.shape[1] * o.shape[2] > 1]
  if not spatial:
    raise ConfigError(
      "Grad-CAM needs a convolutional model: this model has no spatial feature map larger than "
      "1x1 at this image size; use saliency, smoothgrad or integrated_gradients."
    )
  return spatial[-1]


def grad_cam(score_fn: ScoreFn, image: jax.Array, class_index, feature_map: FeatureMap | None = None) -> jax.Array:
  """[H, W] Grad-CAM of `class_index` at `feature_map` (default: `find_feature_map`), upsampled to the image."""
  image = image.astype(jnp.float32)
  target = feature_map or find_feature_map(score_fn, image.shape)

  def score_and_map(delta):
    captured = []

    def perturb(index, module, out):
      del module
      if index != target.index:
        return out
      out = out + delta.astype(out.dtype)
      captured.append(out)
      return out

    with nn.intercept_methods(_watch(perturb)):
      score = _score_of(score_fn, class_index)(image[None])
    return score, captured[0]

  grads, activations = jax.grad(score_and_map, has_aux=True)(jnp.zeros(target.shape, jnp.float32))
  channel_weights = jnp.mean(grads[0].astype(jnp.float32), axis=(0, 1))  # [c]
  cam = jax.nn.relu(jnp.sum(activations[0].astype(jnp.float32) * channel_weights, axis=-1))
  return jax.image.resize(cam, image.shape[:2], method="bilinear")
