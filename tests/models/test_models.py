"""Tests of the model registry, the shared layers and every model family.

On a 2-core CPU, XLA compilation rather than compute is the cost, so: parameter counts and full-size shapes go
through `jax.eval_shape` (traced, never compiled); real programs (one training step per family, on a narrow,
shallow instance of it) are compiled once each with XLA's optimisations off; keys use the 'rbg' generator, as
the trainer does (XLA compiles threefry-based inits ~10x slower); test images come from numpy.
Parity of the converted weights with torchvision is in test_torch_parity.py (needs torch).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import CHEAP_COMPILE

from jaxcls import models
from jaxcls.core.errors import ConfigError
from jaxcls.models import alexnet, convnext, cost, layers, resnet, vgg, vit

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TINY_RESNET = {"width": 8, "stem": "small"}
# Test programs run once or twice: a cheap compile beats a fast program.


def compiled(fn, *args):
  """`fn` jitted for the shapes of `args`, with the cheap compile options."""
  return jax.jit(fn).lower(*args).compile(CHEAP_COMPILE)


def run(fn, *args):
  return compiled(fn, *args)(*args)


def _keys(seed=0):
  params_key, dropout_key = jax.random.split(jax.random.key(seed, impl="rbg"))
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


@pytest.mark.parametrize(
  "config, shape",
  [
    ({"name": "simple_cnn"}, (2, 8, 8, 1)),
    ({"name": "simple_cnn", "widths": (8, 16)}, (3, 33, 47, 3)),
  ],
)
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


# torchvision's counts (1000 classes, 224x224); ViT-Ti/S from their definitions (timm's vit_tiny/small_patch16_224).
PARAMETER_COUNTS = {
  "alexnet": 61_100_840,
  "vgg11": 132_863_336,
  "vgg11_bn": 132_868_840,
  "vgg13": 133_047_848,
  "vgg13_bn": 133_053_736,
  "vgg16": 138_357_544,
  "vgg16_bn": 138_365_992,
  "vgg19": 143_667_240,
  "vgg19_bn": 143_678_248,
  "resnet18": 11_689_512,
  "resnet34": 21_797_672,
  "resnet50": 25_557_032,
  "resnet101": 44_549_160,
  "resnet152": 60_192_808,
  "wide_resnet50_2": 68_883_240,
  "resnext50_32x4d": 25_028_904,
  "mobilenet_v2": 3_504_872,
  "convnext_tiny": 28_589_128,
  "convnext_small": 50_223_688,
  "convnext_base": 88_591_464,
  "vit_ti16": 5_717_416,
  "vit_s16": 22_050_664,
  "vit_b16": 86_567_656,
  "airbench94": 2_225_080,  # ours (airbench's net, 1000 classes at 224); no torchvision reference
  "lenet5": 146_156,
  "simple_cnn": 222_472,  # ours, no reference
}


@pytest.mark.parametrize("name", sorted(PARAMETER_COUNTS))
def test_parameter_counts_match_torchvision(name):
  model = models.build({"name": name}, num_classes=1000)
  assert cost.count_params(model, (224, 224, 3)) == PARAMETER_COUNTS[name]


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
  train = compiled(
    lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}), variables, x, jax.random.key(0)
  )
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
    params = run(module.init, _keys(), x)["params"]
    assert np.all(params[last]["scale"] == (0.0 if zero else 1.0))
    assert np.all(params["bn1"]["scale"] == 1.0) and np.all(params["downsample_bn"]["scale"] == 1.0)


def test_resnet_passes_zero_init_residual_to_every_block():
  model = resnet.ResNet(10, stage_sizes=(2, 1), zero_init_residual=True, **TINY_RESNET)
  params = _init(model, _images((1, 8, 8, 3)))["params"]
  blocks = [k for k in params if k.startswith("layer")]
  assert len(blocks) == 3
  assert all(not np.any(params[k]["bn2"]["scale"]) for k in blocks)
  assert np.all(params["bn1"]["scale"] == 1.0)


@pytest.mark.parametrize("name", ["simple_cnn", "resnet18"])
def test_bfloat16_computes_in_bfloat16_with_float32_params_and_logits(name):
  model = models.build(_tiny_config(name), num_classes=5, dtype="bfloat16")

  def train_forward(x):
    variables = model.init(_keys(), x, train=False)
    logits, state = model.apply(
      variables, x, train=True, rngs=_keys(1), capture_intermediates=True, mutable=["batch_stats", "intermediates"]
    )
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
  logits, variables = run(lambda keys, x: model.init_with_output(keys, x, train=False), _keys(), _images((2, 8, 8, 1)))
  assert np.all(np.isfinite(logits))
  alphas = [p for path, p in jax.tree_util.tree_leaves_with_path(variables["params"]) if path[-1].key == "alpha"]
  if activation == "prelu":
    assert [a.shape for a in alphas] == [(4,), (8,)]  # one slope per channel, per layer
    assert all(np.all(a == 0.25) for a in alphas)
  else:
    assert not alphas


@pytest.mark.parametrize(
  "kind, expected",
  [
    ("relu", [0.0, 0.0, 2.0]),
    ("leaky_relu", [-0.4, 0.0, 2.0]),
    ("prelu", [-0.5, 0.0, 2.0]),
  ],
)
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
  assert set(models.model_names()) == set(PARAMETER_COUNTS)
  assert models.model_arguments("resnet18") == {
    "stem": "imagenet",
    "width": 64,
    "activation": "relu",
    "negative_slope": 0.01,
    "norm": "batch",
    "zero_init_residual": False,
    "stochastic_depth": 0.0,
    "dropout": 0.0,
    "space_to_depth_stem": False,
    "norm_float32_reductions": True,
  }
  assert models.model_arguments("convnext_small")["stochastic_depth"] == 0.4  # torchvision's default per size
  assert "stochastic_depth" in models.model_arguments("convnext_base")


# One narrow, shallow instance per family: (module, input side, first layer, head).
TINY_FAMILIES = {
  "airbench": (lambda: models.build({"name": "airbench94", "widths": (8, 16, 16)}, 4), 32, "stem", "head"),
  "simple_cnn": (lambda: models.build({"name": "simple_cnn", "widths": (8, 16)}, 4), 8, "Conv_0", "head"),
  "lenet5": (lambda: models.build({"name": "lenet5", "dropout": 0.1}, 4), 28, "c1", "output"),
  "alexnet": (lambda: alexnet.AlexNet(4, widths=(4, 8, 8, 8, 8), hidden=16), 63, "features_0", "classifier_6"),
  "vgg_bn": (lambda: vgg.VGG(4, stages=((4,), (8, 8)), norm="batch", hidden=16), 9, "features_0", "classifier_6"),
  "resnet": (lambda: resnet.ResNet(4, stage_sizes=(1, 1), **TINY_RESNET), 8, "conv1", "fc"),
  "resnext": (
    lambda: resnet.ResNet(
      4,
      stage_sizes=(1, 1),
      block=resnet.Bottleneck,
      groups=2,
      width_per_group=16,
      width=8,
      stem="small",
      stochastic_depth=0.2,
      dropout=0.1,
    ),
    8,
    "conv1",
    "fc",
  ),
  "mobilenet_v2": (
    lambda: models.build(
      {"name": "mobilenet_v2", "width_mult": 0.25, "variant": "small", "settings": ((1, 16, 1, 1), (6, 24, 2, 2))}, 4
    ),
    8,
    "features_0_0",
    "classifier_1",
  ),
  "convnext": (
    lambda: convnext.ConvNeXt(4, depths=(1, 1), dims=(8, 16), variant="small"),
    8,
    "features_0_0",
    "classifier_2",
  ),
  "vit": (
    lambda: vit.VisionTransformer(
      4, patch_size=4, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32, dropout=0.1, stochastic_depth=0.1
    ),
    8,
    "conv_proj",
    "head",
  ),
}


def _init_and_sgd_step(model, x, labels):
  """Initial variables, params after one SGD step on (x, labels), that step's loss, and a re-init."""
  tx = optax.sgd(0.1, momentum=0.9)
  variables = model.init(_keys(), x, train=False)
  params = variables["params"]

  def loss_fn(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True, rngs=_keys(1), mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  return variables, optax.apply_updates(params, updates), loss, model.init(_keys(), x, train=False)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_one_sgd_step_per_family_and_deterministic_init(family):
  make, side, first, head = TINY_FAMILIES[family]
  model = make()
  x, labels = _images((2, side, side, 3)), np.array([0, 3])
  variables, after, loss, again = run(lambda x: _init_and_sgd_step(model, x, labels), x)
  assert np.isfinite(loss)
  assert _same(variables, again)  # init is a function of the key alone
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), variables["params"], after)
  assert changed[head]["kernel"]
  if family != "vit":  # ViT's head starts at zero (as torchvision's), so nothing below it moves on step one
    assert changed[first]["kernel"]
    assert np.mean(jax.tree.leaves(changed)) > 0.9


@pytest.mark.parametrize(
  "config, shape",
  [
    ({"name": "lenet5"}, (1, 29, 35, 1)),
    ({"name": "alexnet"}, (1, 67, 101, 3)),
    ({"name": "alexnet", "variant": "small"}, (1, 33, 47, 3)),
    ({"name": "vgg11_bn"}, (1, 33, 47, 3)),
    ({"name": "vgg16", "variant": "small"}, (1, 32, 32, 3)),
    ({"name": "resnext50_32x4d", "stem": "small"}, (1, 33, 47, 3)),
    ({"name": "mobilenet_v2"}, (1, 33, 47, 3)),
    ({"name": "mobilenet_v2", "variant": "small"}, (1, 32, 32, 3)),
    ({"name": "convnext_tiny"}, (1, 33, 47, 3)),
    ({"name": "convnext_tiny", "variant": "small"}, (1, 32, 32, 3)),
    ({"name": "vit_ti16"}, (1, 48, 80, 3)),
    ({"name": "vit_s16", "patch_size": 4}, (1, 32, 32, 3)),
  ],
)
def test_every_family_takes_odd_and_small_input_sizes(config, shape):
  model = models.build(config, num_classes=7)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  logits, _ = jax.eval_shape(lambda x: model.init_with_output(_keys(), x, train=False), x)
  assert logits.shape == (1, 7) and logits.dtype == jnp.float32


def test_vit_rejects_sizes_its_patches_or_position_embedding_do_not_fit():
  model = models.build({"name": "vit_ti16"}, num_classes=3)
  with pytest.raises(ConfigError, match="not divisible by its patch_size 16"):
    jax.eval_shape(lambda x: model.init(_keys(), x), jax.ShapeDtypeStruct((1, 40, 48, 3), jnp.float32))
  variables = jax.eval_shape(lambda x: model.init(_keys(), x), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  with pytest.raises(ConfigError, match="initialised for 4 patches, not 16"):
    jax.eval_shape(lambda v, x: model.apply(v, x), variables, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))


def test_adaptive_avg_pool_matches_torch_bins():
  x = np.random.default_rng(0).standard_normal((1, 5, 3, 2)).astype(np.float32)
  pooled = run(lambda x: layers.adaptive_avg_pool(x, (3, 4)), x)
  # torch bins: rows [0,2) [1,4) [3,5); cols [0,1) [0,2) [1,3) [2,3)
  rows, cols = [(0, 2), (1, 4), (3, 5)], [(0, 1), (0, 2), (1, 3), (2, 3)]
  expected = np.array([[x[0, a:b, c:d].mean(axis=(0, 1)) for c, d in cols] for a, b in rows])
  np.testing.assert_allclose(pooled[0], expected, rtol=1e-6)
  np.testing.assert_allclose(
    run(lambda x: layers.adaptive_avg_pool(x, (1, 1)), x)[:, 0, 0], x.mean(axis=(1, 2)), rtol=1e-6
  )


def test_drop_path_drops_whole_examples_in_training_only():
  x = np.ones((64, 2, 2, 3), np.float32)
  drop = layers.DropPath(0.5)
  train = run(lambda x, key: drop.apply({}, x, train=True, rngs={"dropout": key}), x, jax.random.key(0, impl="rbg"))
  per_example = train.reshape(64, -1)
  assert set(np.unique(per_example)) == {0.0, 2.0}  # survivors scaled by 1 / (1 - rate)
  assert np.all(per_example.min(axis=1) == per_example.max(axis=1))  # all or nothing per example
  assert 10 < np.sum(per_example[:, 0] == 0.0) < 54
  np.testing.assert_array_equal(drop.apply({}, x, train=False), x)
  assert layers.drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])


@pytest.mark.parametrize(
  "norm, leaves",
  [
    ("batch", {"params": {"scale", "bias"}, "batch_stats": {"mean", "var"}}),
    ("group", {"params": {"scale", "bias"}}),
    ("layer", {"params": {"scale", "bias"}}),
  ],
)
def test_norm_choice_for_resnet_and_mobilenet(norm, leaves):
  for config in (
    {"name": "resnet18", "norm": norm, **TINY_RESNET},
    {"name": "mobilenet_v2", "norm": norm, "width_mult": 0.25},
  ):
    model = models.build(config, num_classes=3)
    variables = jax.eval_shape(
      functools.partial(model.init, _keys()), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    )
    assert set(variables) == set(leaves)
    bn1 = variables["params"]["bn1" if config["name"] == "resnet18" else "features_0_1"]
    assert set(bn1) == leaves["params"]
  with pytest.raises(ConfigError, match="Unknown norm 'instance'.*Valid: batch, group, layer"):
    models.build({"name": "resnet50", "norm": "instance"}, 3)


def test_group_norm_uses_a_group_count_that_divides_the_channels():
  module = layers.norm("group", True, channels=24, dtype=jnp.float32)
  assert module.num_groups == 24
  assert layers.norm("group", True, channels=96, dtype=jnp.float32).num_groups == 32


def test_mobilenet_zero_init_residual_zeroes_the_last_norm_of_blocks_with_a_skip():
  model = models.build(
    {
      "name": "mobilenet_v2",
      "zero_init_residual": True,
      "width_mult": 0.25,
      "settings": ((1, 16, 1, 1), (6, 24, 2, 2)),
    },
    3,
  )
  params = _init(model, _images((1, 8, 8, 3)))["params"]
  assert not np.any(params["features_3"]["conv_3"]["scale"])  # 24 -> 24, stride 1: skip
  assert np.all(params["features_2"]["conv_3"]["scale"] == 1.0)  # 16 -> 24: no skip
  assert np.all(params["features_3"]["conv_0_1"]["scale"] == 1.0)


@pytest.mark.parametrize(
  "config",
  [
    {"name": "alexnet", "activation": "prelu", "variant": "small"},
    {"name": "vgg11", "activation": "leaky_relu", "variant": "small"},
    {"name": "mobilenet_v2", "activation": "silu"},
    {"name": "convnext_tiny", "activation": "elu", "dropout": 0.2, "stochastic_depth": 0.3},
    {"name": "vit_ti16", "activation": "relu", "dropout": 0.1, "attention_dropout": 0.1, "stochastic_depth": 0.1},
    {"name": "lenet5", "activation": "prelu", "pooling": "avg"},
  ],
)
def test_families_accept_their_configurable_options(config):
  model = models.build(config, num_classes=3)
  variables = jax.eval_shape(lambda x: model.init(_keys(), x), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  alphas = [path for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"]) if path[-1].key == "alpha"]
  assert bool(alphas) == (config["activation"] == "prelu")
  with pytest.raises(ConfigError, match="Unknown activation 'swish'"):
    models.build({**config, "activation": "swish"}, 3)


def test_convnext_layer_scale_and_vit_head_start_like_torchvision():
  model = convnext.ConvNeXt(3, depths=(1, 1), dims=(8, 16), layer_scale=1e-6)
  params = jax.eval_shape(lambda x: model.init(_keys(), x), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert params["params"]["features_1_0"]["layer_scale"].shape == (8,)
  small_vit = vit.VisionTransformer(3, patch_size=8, hidden_dim=8, num_layers=1, num_heads=2, mlp_dim=8)
  variables = _init(small_vit, _images((1, 16, 16, 3)))
  assert not np.any(variables["params"]["head"]["kernel"]) and not np.any(variables["params"]["class_token"])
  assert variables["params"]["pos_embedding"].shape == (1, 5, 8)


def test_model_cost_counts_params_and_xla_flops():
  model = models.build({"name": "simple_cnn", "widths": (8,), "norm": "none"}, num_classes=2)
  params, flops = cost.count_params(model, (8, 8, 1)), cost.forward_flops(model, (8, 8, 1))
  assert params == (3 * 3 * 1 * 8 + 8) + (8 * 2 + 2)
  conv_flops = 2 * 8 * 8 * 3 * 3 * 8  # multiply-adds of the 3x3 conv over the 8x8 map
  assert conv_flops <= flops < 2 * conv_flops


def test_list_models_command_prints_params_and_gflops():
  from jaxcls import list_models  # pylint: disable=g-import-not-at-top

  lines = list(list_models.table(["lenet5", "simple_cnn"], (32, 32, 1), 10))
  assert lines[0].split()[:3] == ["model", "params", "GFLOPs"]
  lenet = lines[1].split()
  assert lenet[0] == "lenet5" and lenet[1] == "61,706" and float(lenet[2]) > 0
  assert lines[2].split()[0] == "simple_cnn"
  for shape, classes, words in (
    ((0, 0, 1), 10, "--image_size=0"),
    ((8, 8, 0), 10, "--channels=0"),
    ((8, 8, 1), 0, "--num_classes=0"),
  ):
    with pytest.raises(ConfigError, match=f"^{words} must be at least 1.$"):  # before: every row a division by zero
      list(list_models.table(["lenet5"], shape, classes))


def test_lowered_flops_agree_with_the_compiled_programs():
  """The fast default (HLO cost analysis before compiling) stays close to the compiled program's count.

  They differ only in elementwise work that XLA simplifies: 1.2% on this tiny net, 0.06% on ResNet-18 at 224.
  """
  from jaxcls.models import cost  # pylint: disable=g-import-not-at-top

  model = models.build({"name": "resnet18", "stem": "small", "width": 8}, 10)
  lowered = cost.forward_flops(model, (16, 16, 3))
  compiled = cost.forward_flops(model, (16, 16, 3), compiled=True)
  assert lowered == pytest.approx(compiled, rel=0.02)
