"""Penultimate features of any registered model: the input of its classification head, without editing the model.

Every family ends in a Dense head that is a direct child of the model (`head`, `fc`, `classifier_6`, ...); hidden
Dense layers inside blocks sit deeper. So the head's input is the argument of the *last* call to an `nn.Dense`
directly under the root module, which `flax.linen.intercept_methods` captures during a normal `model.apply`.
That holds for all 25 registered models and needs no per-family table; tests check features @ kernel + bias ==
logits for several families.

`FeatureExtractor` runs the capture jitted and sharded over the data mesh, on uint8 batches like the eval step,
and drops padded rows.
"""

from collections.abc import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.core import parallel
from jaxcls.core.errors import ConfigError, DataError
from jaxcls.models import forward


def apply_with_features(model: nn.Module, variables: dict, images: jax.Array) -> tuple[jax.Array, jax.Array, str]:
  """(head input [B, D], logits, the head's name) of `model` in eval mode on normalised `images`."""
  captured = []

  def capture_head_input(next_fun, args, kwargs, context):
    module = context.module
    if (
      context.method_name == "__call__"
      and isinstance(module, nn.Dense)
      and module.scope is not None
      and len(module.scope.path) == 1
    ):
      captured.append((module.name, args[0]))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture_head_input):
    logits = model.apply(variables, images, train=False)
  if not captured:
    raise ConfigError(
      f"Model {type(model).__name__} has no Dense layer directly under it, so its classification "
      "head (and the penultimate features) cannot be found; give the model a top-level nn.Dense "
      "head."
    )
  name, features = captured[-1]
  return features.reshape(features.shape[0], -1), logits, name


class FeatureExtractor:
  """Jitted, mesh-sharded penultimate features of uint8 batches {image, label, mask}; padding is dropped.

  Args:
    model: the classifier (any registered model).
    mean, std: per-channel normalisation in [0, 1] units, as training used (DatasetInfo.mean / .std).
    dtype: compute dtype name, 'float32' or 'bfloat16'; features come back as float32.
    mesh: the data mesh; batches are split along it.
  """

  def __init__(self, model: nn.Module, *, mean, std, dtype: str, mesh):
    compute_dtype = forward.compute_dtype(dtype, "dtype")
    self.mesh = mesh

    def features_of(variables, batch):
      images = forward.normalize(batch["image"], mean, std, compute_dtype)
      features, _, _ = apply_with_features(model, variables, images)
      return {"features": features.astype(jnp.float32), "label": batch["label"], "mask": batch["mask"]}

    self._features_of = jax.jit(
      features_of,
      in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
      out_shardings=parallel.batch_sharded(mesh),
    )

  def __call__(self, variables: dict, batches: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [N, D], labels [N]) of the valid rows of `batches` (process-local host batches), in order.

    Every process gets the features of all processes' examples (global batch order).
    """
    variables = forward.model_variables(variables)
    outputs = [self._features_of(variables, parallel.to_global(batch, self.mesh)) for batch in batches]
    if not outputs:
      raise DataError("No batches to extract features from; the split is empty.")
    host = parallel.to_host(outputs)
    mask = np.concatenate([o["mask"] for o in host]).astype(bool)
    features = np.concatenate([o["features"] for o in host])[mask]
    labels = np.concatenate([o["label"] for o in host])[mask]
    return features, labels
