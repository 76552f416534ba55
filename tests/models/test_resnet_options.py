"""Tests of the two ResNet speed options: the space-to-depth stem (exact) and bf16 batch-norm statistics.

Like test_models.py, programs are compiled with XLA's optimisations off (a cheap compile beats a fast program)
and keys use the 'rbg' generator. The space-to-depth stem is checked against nn.Conv's 7x7/2 conv with the same
kernel (outputs, kernel gradients, parameter trees); the batch-norm option against the HLO it lowers to.
"""

import collections
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CHEAP_COMPILE

from jaxcls import models
from jaxcls.core.errors import ConfigError
from jaxcls.models import layers, resnet

TINY = dict(stage_sizes=(1,), width=8)  # 'imagenet' stem + one basic block: enough to exercise both options


def run(fn, *args):
  return jax.jit(fn).lower(*args).compile(CHEAP_COMPILE)(*args)


def _keys(seed=0):
  params_key, dropout_key = jax.random.split(jax.random.key(seed, impl="rbg"))
  return {"params": params_key, "dropout": dropout_key}


def _images(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _plain_stem(features):
  return nn.Conv(features, (7, 7), strides=(2, 2), padding=[(3, 3), (3, 3)], use_bias=False)


# --- space-to-depth stem -------------------------------------------------------------------------------------


def test_space_to_depth_orders_channels_as_pixel_offset_then_channel():
  x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  z = np.asarray(resnet.space_to_depth(jnp.asarray(x)))
  assert z.shape == (2, 2, 3, 12)
  for i in range(2):
    for j in range(2):
      np.testing.assert_array_equal(z[:, :, :, (2 * i + j) * 3 : (2 * i + j + 1) * 3], x[:, i::2, j::2, :])


@pytest.mark.parametrize(
  "shape",
  [(2, 64, 64, 3), (1, 24, 40, 3), (1, 17, 22, 2), (1, 9, 9, 3)],
  ids=["224-like", "non-square", "odd-height", "odd-both"],
)
def test_space_to_depth_stem_equals_the_7x7_stride_2_conv_and_its_kernel_gradient(shape):
  x = _images(shape)
  kernel = _images((7, 7, shape[-1], 16), seed=1)
  cotangent = _images((shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, 16), seed=2)

  def outputs_and_kernel_grad(module):
    def loss(kernel, x, cotangent):
      y = module.apply({"params": {"kernel": kernel}}, x)
      return jnp.sum(y * cotangent), y

    return jax.value_and_grad(loss, has_aux=True)

  (_, plain), plain_grad = run(outputs_and_kernel_grad(_plain_stem(16)), kernel, x, cotangent)
  (_, s2d), s2d_grad = run(outputs_and_kernel_grad(resnet.SpaceToDepthStemConv(16)), kernel, x, cotangent)
  assert s2d.shape == plain.shape == cotangent.shape
  scale = np.abs(plain).max()
  np.testing.assert_allclose(s2d, plain, rtol=0, atol=2e-6 * scale)
  assert s2d_grad.shape == (7, 7, shape[-1], 16)
  np.testing.assert_allclose(s2d_grad, plain_grad, rtol=0, atol=2e-6 * np.abs(plain_grad).max())


def test_space_to_depth_stem_keeps_the_parameter_tree_values_and_logits_of_the_plain_resnet():
  x = _images((2, 32, 32, 3))
  plain, s2d = resnet.ResNet(5, **TINY), resnet.ResNet(5, space_to_depth_stem=True, **TINY)
  plain_vars = run(lambda keys, x: plain.init(keys, x), _keys(), x)
  s2d_vars = run(lambda keys, x: s2d.init(keys, x), _keys(), x)
  # Same structure, shapes and initial values: checkpoints, torch weights and transfer learning carry over.
  assert jax.tree.structure(plain_vars) == jax.tree.structure(s2d_vars)
  assert s2d_vars["params"]["conv1"]["kernel"].shape == (7, 7, 3, 8)
  jax.tree.map(np.testing.assert_array_equal, plain_vars, s2d_vars)

  def train_forward(model):
    return lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])

  plain_logits, plain_stats = run(train_forward(plain), plain_vars, x)
  s2d_logits, s2d_stats = run(train_forward(s2d), plain_vars, x)
  np.testing.assert_allclose(s2d_logits, plain_logits, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s2d_stats, plain_stats)


def test_space_to_depth_stem_in_bfloat16_casts_like_nn_conv():
  x = _images((1, 16, 16, 3))
  kernel = _images((7, 7, 3, 8), seed=1)
  variables = {"params": {"kernel": kernel}}
  plain = nn.Conv(8, (7, 7), strides=(2, 2), padding=[(3, 3), (3, 3)], use_bias=False, dtype=jnp.bfloat16)
  s2d = resnet.SpaceToDepthStemConv(8, dtype=jnp.bfloat16)
  y_plain = run(lambda v, x: plain.apply(v, x), variables, x)
  y_s2d = run(lambda v, x: s2d.apply(v, x), variables, x)
  assert y_s2d.dtype == y_plain.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(y_s2d), np.float32(y_plain), rtol=0, atol=0.02 * np.abs(y_plain).max())


# --- bf16 batch-norm statistics ------------------------------------------------------------------------------


def _op_dtypes(hlo_text: str) -> collections.Counter:
  """(op, result element type) -> count, over the StableHLO/CHLO ops of a lowered program."""
  counts = collections.Counter()
  for line in hlo_text.splitlines():
    op = re.search(r"= ((?:stablehlo|chlo)\.\w+)", line)
    result_types = re.findall(r"tensor<[0-9x]*(bf16|f32)>", line)
    if op and result_types:
      counts[(op.group(1), result_types[-1])] += 1
  return counts


def _block_train_hlo(float32_reductions, dtype):
  block = resnet.Bottleneck(filters=4, strides=2, dtype=dtype, norm_float32_reductions=float32_reductions)
  x = jax.ShapeDtypeStruct((2, 8, 8, 16), dtype)
  variables = jax.eval_shape(lambda x: block.init(_keys(), x), x)

  def forward(v, x):
    return block.apply(v, x, train=True, mutable=["batch_stats"])

  return jax.jit(forward).lower(variables, x).as_text()


def test_bfloat16_reductions_move_the_batch_norm_statistics_arithmetic_to_bfloat16():
  f32_ops = _op_dtypes(_block_train_hlo(True, jnp.bfloat16))
  bf16_ops = _op_dtypes(_block_train_hlo(False, jnp.bfloat16))
  norms = 4  # bn1, bn2, bn3, downsample_bn
  # Both: sum(x) and sum(x*x) accumulate in float32 (jnp.mean upcasts half-precision sums).
  assert f32_ops[("stablehlo.reduce", "f32")] == bf16_ops[("stablehlo.reduce", "f32")] == 2 * norms
  assert f32_ops[("stablehlo.reduce", "bf16")] == bf16_ops[("stablehlo.reduce", "bf16")] == 0
  # Default: squares, variance, centring and rsqrt in float32.
  for op in ("chlo.square", "stablehlo.subtract", "stablehlo.rsqrt"):
    assert f32_ops[(op, "bf16")] == 0 and f32_ops[(op, "f32")] > 0, op
  assert f32_ops[("stablehlo.rsqrt", "f32")] == norms
  # Option off: all of them in bfloat16.
  for op in ("chlo.square", "stablehlo.subtract", "stablehlo.rsqrt"):
    assert bf16_ops[(op, "f32")] == 0 and bf16_ops[(op, "bf16")] > 0, op
  assert bf16_ops[("stablehlo.rsqrt", "bf16")] == norms


def test_float32_reductions_change_nothing_in_float32():
  assert _block_train_hlo(True, jnp.float32) == _block_train_hlo(False, jnp.float32)


def test_bfloat16_reductions_stay_close_in_training_and_change_nothing_in_eval():
  x = _images((4, 32, 32, 3))
  exact = resnet.ResNet(5, dtype=jnp.bfloat16, **TINY)
  approx = resnet.ResNet(5, dtype=jnp.bfloat16, norm_float32_reductions=False, **TINY)
  variables = run(lambda keys, x: exact.init(keys, x), _keys(), x)
  approx_vars = run(lambda keys, x: approx.init(keys, x), _keys(), x)
  jax.tree.map(np.testing.assert_array_equal, variables, approx_vars)  # same tree, float32 batch stats
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(approx_vars["batch_stats"]))

  def train_forward(model):
    return lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])

  exact_logits, exact_stats = run(train_forward(exact), variables, x)
  approx_logits, approx_stats = run(train_forward(approx), variables, x)
  assert not np.array_equal(exact_logits, approx_logits)  # the option did something...
  scale = np.abs(exact_logits).max()
  np.testing.assert_allclose(approx_logits, exact_logits, rtol=0, atol=0.05 * scale)  # ...within bf16 rounding
  for a, b in zip(jax.tree.leaves(approx_stats), jax.tree.leaves(exact_stats)):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=0.02, atol=1e-3)

  trained = {"params": variables["params"], **exact_stats}
  eval_exact = run(lambda v, x: exact.apply(v, x, train=False), trained, x)
  eval_approx = run(lambda v, x: approx.apply(v, x, train=False), trained, x)
  np.testing.assert_array_equal(eval_approx, eval_exact)


def test_norm_float32_reductions_reaches_every_batch_norm():
  model = models.build({"name": "resnet50", "norm_float32_reductions": False}, 10)
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      seen.append((context.module.name, context.module.force_float32_reductions))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.init(_keys(), x, train=True), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert len(seen) == 1 + 16 * 3 + 4  # stem, three per bottleneck, four downsample projections
  assert all(force is False for _, force in seen)


# --- configuration -------------------------------------------------------------------------------------------


def test_options_are_model_config_keys():
  assert models.model_arguments("resnet50")["space_to_depth_stem"] is False
  assert models.model_arguments("resnet50")["norm_float32_reductions"] is True
  model = models.build(
    {"name": "resnet50", "space_to_depth_stem": True, "norm_float32_reductions": False}, 10, dtype="bfloat16"
  )
  assert model.space_to_depth_stem is True and model.norm_float32_reductions is False


@pytest.mark.parametrize(
  "options, message",
  [
    ({"stem": "small", "space_to_depth_stem": True}, r"stem 'small' has none\. Set stem='imagenet'"),
    ({"space_to_depth_stem": "true"}, r"model.space_to_depth_stem='true' is not valid .*; it must be True or False"),
    ({"norm_float32_reductions": 0}, r"model.norm_float32_reductions=0 is not valid .*; it must be True or False"),
    ({"norm": "group", "norm_float32_reductions": False}, r"batch norm only, not norm 'group'"),
  ],
)
def test_bad_option_combinations_raise_config_errors(options, message):
  with pytest.raises(ConfigError, match=message):
    models.build({"name": "resnet18", **options}, 10)


def test_layers_norm_rejects_float32_reductions_off_for_group_and_layer_norm():
  batch_norm = layers.norm("batch", True, channels=8, dtype=jnp.bfloat16, float32_reductions=False)
  assert batch_norm.force_float32_reductions is False
  for kind in ("group", "layer"):
    with pytest.raises(ConfigError, match=f"batch norm only, not to norm '{kind}'"):
      layers.norm(kind, True, channels=8, dtype=jnp.bfloat16, float32_reductions=False)
