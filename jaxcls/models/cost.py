"""What a model costs: trainable parameters and the FLOPs of one image's forward pass.

FLOPs come from XLA's own cost analysis of the eval-mode forward pass (a multiply-add counts as two) rather than
a hand count per layer. The analysis of the lowered HLO takes seconds; that of the compiled program (what actually
runs, fusions and all) takes minutes per large model on a small CPU and differs only in elementwise work (ResNet-18
at 224x224: 3.373 vs 3.375 GFLOPs; 1.2% on a tiny 16x16 net), so `compiled=True` is an option, not the default.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _keys() -> dict[str, jax.Array]:
  return {"params": jax.random.key(0, impl="rbg"), "dropout": jax.random.key(1, impl="rbg")}


def count_params(model: nn.Module, image_shape: tuple[int, ...]) -> int:
  """Trainable parameters of `model` for images of `image_shape` [H, W, C] (traced, nothing computed)."""
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(_keys(), x, train=False), x)
  return int(sum(p.size for p in jax.tree.leaves(variables.get("params", {}))))


def forward_flops(model: nn.Module, image_shape: tuple[int, ...], batch_size: int = 1, compiled: bool = False) -> float:
  """FLOPs per image of the eval-mode forward pass, from XLA's cost analysis (of the compiled program if asked)."""
  x = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(_keys(), x, train=False), x)
  lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x)
  analysis: Any = lowered.compile().cost_analysis() if compiled else lowered.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per device program
    analysis = analysis[0]
  return float(analysis.get("flops", 0.0)) / batch_size
