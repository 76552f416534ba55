"""Tests of the model registry, the shared layers, SimpleCNN and the ResNets.

On a 2-core CPU, XLA compilation rather than compute is the cost, so: parameter counts and the deep ResNets'
shapes and training steps go through `jax.eval_shape` (traced, never compiled); real programs are compiled
once each with XLA's optimisations off (with them, compiling a tiny ResNet-18's init takes over 30 s, mostly
in the threefry random-bit generators); and test images come from numpy, not from eager jax.random ops.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxcls import models
from jaxcls.errors import ConfigError
from jaxcls.models import layers
from jaxcls.models import resnet

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TINY_RESNET = {"width": 8, "stem": "small"}
# Test programs run once or twice: a cheap compile beats a fast program.
_CHEAP_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compiled(fn, *args):
  """`fn` jitted for the shapes of `args`, with the cheap compile options."""
  return jax.jit(fn).lower(*args).compile(_CHEAP_COMPILE)


def run(fn, *args):
  return compiled(fn, *args)(*args)


def _keys(seed=0):
  params_key, dropout_key = jax.random.split(jax.random.key(seed))
  return {"params": params_key, "dropout": dropout_key}


def _images(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _init(model, x, seed=0):
  return run(lambda keys, x: model.init(keys, x, train=False), _keys(seed), x)


def _tiny_config(name, **extra):
  base = dict(TINY_RESNET) if name.startswith("resnet") else {"widths": (8, 16, 32)}
  return {"name": name, **base, **extra}


def _same(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda p, q: bool(np.array_equal(p, q)), a, b)))


@pytest.mark.parametrize("config, shape", [
    ({"name": "simple_cnn"}, (2, 8, 8, 1)),
    ({"name": "simple_cnn", "widths": (8, 16)}, (3, 33, 47, 3)),
    ({"name": "resnet18", "width": 8}, (2, 33, 47, 3)),
])
def test_logits_shape_and_dtype_for_odd_input_sizes(config, shape):
  model = models.build(config, num_classes=7)
  logits, _ = run(lambda keys, x: model.init_with_output(keys, x, train=False), _keys(), _images(shape))
  assert logits.shape == (shape[0], 7)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name, stem", [("resnet50", "small"), ("resnet101", "imagenet")])
def test_deep_resnet_logits_shape_for_odd_input_sizes(name, stem):
  model = models.build({"name": name, "width": 8, "stem": stem}, num_classes=7)
  x = jax.ShapeDtypeStruct((1, 33, 47, 3), jnp.float32)
  logits, _ = jax.eval_shape(lambda x: model.init_with_output(_keys(), x, train=False), x)
  assert logits.shape == (1, 7) and logits.dtype == jnp.float32


@pytest.mark.parametrize("name, expected", [
    ("resnet18", 11_689_512),
    ("resnet34", 21_797_672),
    ("resnet50", 25_557_032),
    ("resnet101", 44_549_160),
    ("resnet152", 60_192_808),
])
def test_resnet_parameter_counts_match_torchvision(name, expected):
  model = models.build({"name": name}, num_classes=1000)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  logits, variables = jax.eval_shape(lambda x: model.init_with_output(_keys(), x, train=False), x)
  assert sum(p.size for p in jax.tree.leaves(variables["params"])) == expected
  assert logits.shape == (1, 1000)


def test_resnet_imagenet_stem_and_v15_stride_placement():
  model = models.build({"name": "resnet50"}, num_classes=10)

  def features(x):
    variables = model.init(_keys(), x, train=False)
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    return state["intermediates"]

  inter = jax.eval_shape(features, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert inter["conv1"]["__call__"][0].shape == (1, 112, 112, 64)
  block = inter["layer2_0"]
  assert block["conv1"]["__call__"][0].shape == (1, 56, 56, 128)  # the 1x1 keeps the size
  assert block["conv2"]["__call__"][0].shape == (1, 28, 28, 128)  # v1.5: the 3x3 strides
  assert inter["layer4_2"]["__call__"][0].shape == (1, 7, 7, 2048)


def test_same_key_gives_identical_params_and_another_key_differs():
  model = models.build({"name": "simple_cnn"}, num_classes=10)
  x = _images((2, 8, 8, 1))
  init = compiled(lambda keys, x: model.init(keys, x, train=False), _keys(), x)
  a, b, c = init(_keys(0), x), init(_keys(0), x), init(_keys(1), x)
  assert _same(a, b)
  assert not np.array_equal(a["params"]["head"]["kernel"], c["params"]["head"]["kernel"])


def test_dropout_is_active_only_in_training():
  model = models.build({"name": "simple_cnn", "norm": "none", "dropout": 0.5, "dense": (32,)}, 10)
  x = _images((4, 8, 8, 1))
  variables = _init(model, x)
  assert "batch_stats" not in variables
  evaluate = compiled(lambda v, x: model.apply(v, x, train=False), variables, x)
  train = compiled(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}),
                   variables, x, jax.random.key(0))
  np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))
  train1, train2 = train(variables, x, jax.random.key(1)), train(variables, x, jax.random.key(2))
  assert not np.allclose(train1, train2)
  assert not np.allclose(train1, evaluate(variables, x))


def test_batch_norm_updates_running_stats_only_in_training_and_eval_uses_them():
  model = models.build({"name": "simple_cnn", "widths": (8, 16), "dropout": 0.0}, 10)
  x = _images((4, 8, 8, 1)) * 3.0 + 1.0
  variables = _init(model, x)

  def forward(variables, x, train):
    return model.apply(variables, x, train=train, mutable=["batch_stats"])

  _, eval_state = run(lambda v, x: forward(v, x, False), variables, x)
  assert _same(eval_state["batch_stats"], variables["batch_stats"])
  _, train_state = run(lambda v, x: forward(v, x, True), variables, x)
  before = variables["batch_stats"]["BatchNorm_0"]["mean"]
  assert not np.allclose(before, train_state["batch_stats"]["BatchNorm_0"]["mean"])
  # Eval normalises with the running stats: each example's logits ignore the rest of the batch ...
  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
  np.testing.assert_allclose(evaluate(variables, x[:1]), evaluate(variables, x)[:1], rtol=1e-5, atol=1e-5)
  # ... and change when those stats change.
  updated = {"params": variables["params"], "batch_stats": train_state["batch_stats"]}
  assert not np.allclose(evaluate(variables, x), evaluate(updated, x))


@pytest.mark.parametrize("block, last", [(resnet.BasicBlock, "bn2"), (resnet.Bottleneck, "bn3")])
def test_zero_init_residual_zeroes_the_last_batch_norm_scale_of_a_block(block, last):
  x = _images((1, 8, 8, 16))
  for zero in (False, True):
    module = block(filters=4, strides=2, zero_init_residual=zero)
    params = run(lambda keys, x: module.init(keys, x), _keys(), x)["params"]
    assert np.all(params[last]["scale"] == (0.0 if zero else 1.0))
    assert np.all(params["bn1"]["scale"] == 1.0) and np.all(params["downsample_bn"]["scale"] == 1.0)


def test_resnet_passes_zero_init_residual_to_every_block():
  model = models.build({"name": "resnet18", "zero_init_residual": True, **TINY_RESNET}, 10)
  params = _init(model, _images((1, 16, 16, 3)))["params"]
  blocks = [k for k in params if k.startswith("layer")]
  assert len(blocks) == 8
  assert all(not np.any(params[k]["bn2"]["scale"]) for k in blocks)
  assert np.all(params["bn1"]["scale"] == 1.0)


@pytest.mark.parametrize("name", ["simple_cnn", "resnet18"])
def test_bfloat16_computes_in_bfloat16_with_float32_params_and_logits(name):
  model = models.build(_tiny_config(name), num_classes=5, dtype="bfloat16")

  def train_forward(x):
    variables = model.init(_keys(), x, train=False)
    logits, state = model.apply(variables, x, train=True, rngs=_keys(1), capture_intermediates=True,
                                mutable=["batch_stats", "intermediates"])
    return variables, logits, state

  variables, logits, state = jax.eval_shape(train_forward, jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))
  float32 = jnp.dtype(jnp.float32)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {float32}
  assert {p.dtype for p in jax.tree.leaves(state["batch_stats"])} == {float32}
  assert logits.dtype == float32
  conv_name = "conv1" if name.startswith("resnet") else "Conv_0"
  assert state["intermediates"][conv_name]["__call__"][0].dtype == jnp.bfloat16


def test_bfloat16_logits_are_finite():
  model = models.build({"name": "simple_cnn"}, num_classes=10, dtype=jnp.bfloat16)
  logits, _ = run(lambda keys, x: model.init_with_output(keys, x, train=False), _keys(), _images((2, 8, 8, 1)))
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))


@pytest.mark.parametrize("activation", layers.ACTIVATIONS)
def test_every_activation_builds_and_runs(activation):
  model = models.build({"name": "simple_cnn", "widths": (4, 8), "activation": activation}, num_classes=3)
  logits, variables = run(lambda keys, x: model.init_with_output(keys, x, train=False),
                          _keys(), _images((2, 8, 8, 1)))
  assert np.all(np.isfinite(logits))
  alphas = [p for path, p in jax.tree_util.tree_leaves_with_path(variables["params"])
            if path[-1].key == "alpha"]
  if activation == "prelu":
    assert [a.shape for a in alphas] == [(4,), (8,)]  # one slope per channel, per layer
    assert all(np.all(a == 0.25) for a in alphas)
  else:
    assert not alphas


@pytest.mark.parametrize("kind, expected", [
    ("relu", [0.0, 0.0, 2.0]),
    ("leaky_relu", [-0.4, 0.0, 2.0]),
    ("prelu", [-0.5, 0.0, 2.0]),
])
def test_activation_values(kind, expected):
  act = layers.Activation(kind, negative_slope=0.2)
  y, _ = run(lambda key, x: act.init_with_output(key, x), jax.random.key(0), np.array([[-2.0, 0.0, 2.0]]))
  np.testing.assert_allclose(y[0], expected, rtol=1e-6)


def test_unknown_activation_and_pooling_list_the_valid_ones():
  with pytest.raises(ConfigError, match="Unknown activation 'rleu'.*Valid: relu, leaky_relu, prelu"):
    models.build({"name": "simple_cnn", "activation": "rleu"}, 10)
  with pytest.raises(ConfigError, match="Unknown activation 'swish'.*Valid:"):
    models.build({"name": "resnet18", "activation": "swish"}, 10)
  with pytest.raises(ConfigError, match=r"Unknown pooling 'mean'\..* Valid: max, avg\."):
    models.build({"name": "simple_cnn", "pooling": "mean"}, 10)


def test_pooling_by_name():
  x = np.arange(16.0, dtype=np.float32).reshape(1, 4, 4, 1)
  pooled = run(lambda x: (layers.pool(x, "max"), layers.pool(x, "avg")), x)
  np.testing.assert_array_equal(pooled[0][0, :, :, 0], [[5.0, 7.0], [13.0, 15.0]])
  np.testing.assert_array_equal(pooled[1][0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])


def _init_and_sgd_step(model, x, labels):
  """Initial params, params after one SGD step on (x, labels), and that step's loss."""
  tx = optax.sgd(0.1, momentum=0.9)
  variables = model.init(_keys(), x, train=False)
  params = variables["params"]

  def loss_fn(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True, rngs=_keys(1),
                            mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  return params, optax.apply_updates(params, updates), loss


# Compiled and run; the other ResNets' steps are traced but not compiled (a tiny ResNet-50's step takes over
# 30 s to compile on two CPU cores). They share resnet18's code except for the bottleneck block, which
# `test_zero_init_residual_...` runs and their traced steps differentiate, and the blocks per stage, which the
# parameter counts check.
_RUN_STEP = ("simple_cnn", "resnet18")


@pytest.mark.parametrize("name", models.model_names())
def test_one_sgd_step_per_registered_model(name):
  model = models.build(_tiny_config(name), num_classes=4)
  x, labels = _images((2, 16, 16, 3)), np.array([0, 3])
  if name not in _RUN_STEP:
    before, after, loss = jax.eval_shape(lambda x: _init_and_sgd_step(model, x, labels), x)
    assert loss.shape == () and jax.tree.structure(before) == jax.tree.structure(after)
    return
  before, after, loss = run(lambda x: _init_and_sgd_step(model, x, labels), x)
  assert np.isfinite(loss)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
  resnet_family = name.startswith("resnet")
  assert changed["conv1" if resnet_family else "Conv_0"]["kernel"]
  assert changed["fc" if resnet_family else "head"]["kernel"]


def test_unknown_model_name_lists_known_models():
  with pytest.raises(ConfigError, match=r"Unknown model 'resnet19'\. Did you mean 'resnet18'.*Known: .*simple_cnn"):
    models.build({"name": "resnet19"}, 10)


def test_misspelt_argument_is_one_helpful_sentence():
  with pytest.raises(ConfigError) as info:
    models.build({"name": "simple_cnn", "widht": (8, 16)}, 10)
  message = str(info.value)
  assert message.startswith("Unknown argument 'widht' for model 'simple_cnn'. Did you mean 'widths'? Valid: ")
  assert "activation, convs_per_block, dense, dropout" in message
  assert "\n" not in message


def test_arguments_fixed_by_the_family_or_by_jaxcls_and_bad_values_are_rejected():
  with pytest.raises(ConfigError, match="Unknown argument 'stage_sizes' for model 'resnet18'"):
    models.build({"name": "resnet18", "stage_sizes": (1, 1, 1, 1)}, 10)
  with pytest.raises(ConfigError, match="'num_classes' of model 'simple_cnn' is set by jaxcls"):
    models.build({"name": "simple_cnn", "num_classes": 3}, 10)
  with pytest.raises(ConfigError, match="config.model.name is missing"):
    models.build({"widths": (8,)}, 10)
  with pytest.raises(ConfigError, match="Unknown dtype 'float64'"):
    models.build({"name": "simple_cnn"}, 10, dtype="float64")
  with pytest.raises(ConfigError, match="Unknown stem 'tiny'.*Valid: imagenet, small"):
    models.build({"name": "resnet18", "stem": "tiny"}, 10)
  with pytest.raises(ConfigError, match="Unknown norm 'layer'.*Valid: batch, none"):
    models.build({"name": "simple_cnn", "norm": "layer"}, 10)
  with pytest.raises(ConfigError, match="dropout must be in"):
    models.build({"name": "simple_cnn", "dropout": 1.5}, 10)


def test_config_dict_with_lists_becomes_tuples():
  config = ml_collections.ConfigDict({"name": "simple_cnn", "widths": [4, 8], "dense": [16]})
  model = models.build(config, num_classes=3, dtype=jnp.float32)
  assert model.widths == (4, 8) and model.dense == (16,)
  assert model.dtype == jnp.float32
  variables = jax.eval_shape(lambda x: model.init(_keys(), x), jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))
  assert variables["params"]["Dense_0"]["kernel"].shape == (8, 16)


def test_registry_lists_every_family():
  assert set(models.model_names()) == {"simple_cnn", *RESNETS}
  assert models.model_arguments("resnet18") == {
      "stem": "imagenet", "width": 64, "activation": "relu", "negative_slope": 0.01,
      "zero_init_residual": False}
