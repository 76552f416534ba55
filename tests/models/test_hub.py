"""Pretrained weights by name (models/pretrained.py): hub caches built on disk, read with HF_HUB_OFFLINE=1.

Each test writes a Hugging Face cache folder as huggingface_hub lays it out (`models--ORG--NAME/` with `blobs/`,
`snapshots/<commit>/` links and `refs/main`) holding a safetensors file in timm's (or torchvision's) layout, made
from a jaxcls model's own variables with every tensor randomised, so a wrong mapping of any of them shows. The
expected timm key names are written out from timm's modules (timm/models/resnet.py, convnext.py,
vision_transformer.py, vgg.py, efficientnet.py), independently of the mapping under test.
"""

import hashlib
import json
import os
import subprocess

import jax
import ml_collections
import numpy as np
import pytest
from conftest import REPO, subprocess_env
from PIL import Image

pytest.importorskip("huggingface_hub")
pytest.importorskip("safetensors")

from safetensors.numpy import save_file  # noqa: E402

from jaxcls import models  # noqa: E402
from jaxcls.core.errors import CheckpointError, ConfigError  # noqa: E402
from jaxcls.models import layouts, pretrained  # noqa: E402
from jaxcls.models.convnext import ConvNeXt  # noqa: E402
from jaxcls.models.mobilenet import MobileNetV2  # noqa: E402
from jaxcls.models.vgg import VGG  # noqa: E402
from jaxcls.models.vit import VisionTransformer  # noqa: E402
from jaxcls.store import restore  # noqa: E402
from jaxcls.training import transfer  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHAPE = (32, 32, 3)
RESNET = {"name": "resnet18", "width": 8}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
  """An empty hub cache folder, with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at it."""
  cache = tmp_path / "hub"
  cache.mkdir()
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  return cache


def write_repo(cache, repo: str, files: dict[str, bytes], commit: str = COMMIT, ref: str = "main"):
  """A repo in huggingface_hub's cache layout: content-addressed blobs, snapshot links, and the ref's commit."""
  folder = cache / f"models--{repo.replace('/', '--')}"
  snapshot = folder / "snapshots" / commit
  (folder / "blobs").mkdir(parents=True, exist_ok=True)
  snapshot.mkdir(parents=True, exist_ok=True)
  (folder / "refs").mkdir(exist_ok=True)
  for name, content in files.items():
    blob = folder / "blobs" / hashlib.sha256(content).hexdigest()
    blob.write_bytes(content)
    os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
  (folder / "refs" / ref).write_text(commit)
  return snapshot


def safetensors_bytes(state: dict, tmp_path) -> bytes:
  path = tmp_path / "scratch.safetensors"
  save_file(state, str(path))
  return path.read_bytes()


def timm_config(
  architecture: str,
  size: int = 32,
  crop: float = 0.95,
  mean=(0.5, 0.4, 0.3),
  std=(0.2, 0.25, 0.3),
  num_classes: int = 10,
) -> bytes:
  """A config.json as timm's push_to_hf_hub writes it (save_config_for_hf)."""
  return json.dumps(
    {
      "architecture": architecture,
      "num_classes": num_classes,
      "num_features": 64,
      "global_pool": "avg",
      "pretrained_cfg": {
        "tag": "test",
        "input_size": [3, size, size],
        "crop_pct": crop,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": list(mean),
        "std": list(std),
        "num_classes": num_classes,
        "first_conv": "conv1",
        "classifier": "fc",
      },
    }
  ).encode()


def random_state(model, layout: str, seed: int = 0) -> dict[str, np.ndarray]:
  """A state_dict of `model` in `layout` with every tensor random, at scales that keep activations finite (weights
  ~ 1/sqrt(fan-in), norm scales and variances near 1)."""
  state = layouts.state_dict(model, zeros(model), layout, SHAPE)
  rng = np.random.default_rng(seed)
  out = {}
  for key, value in state.items():
    noise = rng.standard_normal(value.shape).astype(np.float32)
    if value.ndim >= 2 and not key.endswith(("cls_token", "pos_embed")):
      noise /= np.sqrt(np.prod(value.shape[1:]))
    elif key.endswith(("running_var", "weight")):  # 1-D: norm scales and batch-norm variances
      noise = 1.0 + 0.25 * np.abs(noise)
    else:
      noise *= 0.1
    out[key] = noise.astype(np.float32)
  return out


def zeros(model) -> dict:
  """Zero variables of `model` for SHAPE images, from their shapes alone (nothing compiled)."""
  keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  shapes = jax.eval_shape(lambda: model.init(keys, np.zeros((1, *SHAPE), np.float32), train=False))
  return jax.tree.map(lambda s: np.zeros(s.shape, np.float32), dict(shapes))


def flat(tree) -> dict[str, np.ndarray]:
  return {"/".join(p.key for p in path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(tree)}


# ------------------------------------------------------------------------------------------------ ResNet-18


def test_resnet18_from_an_offline_hub_cache_equals_the_file(hub_cache, tmp_path):
  model = models.build(RESNET, 10)
  state = random_state(model, "timm")
  state.update(
    {
      f"{k.rsplit('.', 1)[0]}.num_batches_tracked": np.asarray(7, np.int64)
      for k in list(state)
      if k.endswith("running_mean")
    }
  )
  write_repo(
    hub_cache,
    "timm/resnet18.test",
    {"model.safetensors": safetensors_bytes(state, tmp_path), "config.json": timm_config("resnet18")},
  )
  config = ml_collections.ConfigDict(RESNET)
  source = transfer.pretrained_source("hf-hub:timm/resnet18.test", -1, config, SHAPE)
  loaded = flat(source.variables)
  # Independent spot checks of the layout: OIHW -> HWIO, Linear [out, in] -> Dense [in, out], batch norm.
  np.testing.assert_array_equal(loaded["params/conv1/kernel"], state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(loaded["params/fc/kernel"], state["fc.weight"].T)
  np.testing.assert_array_equal(loaded["params/layer2_0/downsample_bn/scale"], state["layer2.0.downsample.1.weight"])
  np.testing.assert_array_equal(loaded["batch_stats/layer4_1/bn2/var"], state["layer4.1.bn2.running_var"])
  np.testing.assert_array_equal(loaded["batch_stats/bn1/mean"], state["bn1.running_mean"])
  # Every tensor of the file, and nothing else, exactly.
  back = layouts.state_dict(model, source.variables, "timm", SHAPE)
  weights = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  assert sorted(back) == sorted(weights)
  for key, value in weights.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  assert "hf-hub:timm/resnet18.test" in source.description and "timm/torchvision layout" in source.description
  assert source.image_shape == SHAPE


def test_resnet_head_of_another_class_count_is_reinitialised(hub_cache, tmp_path):
  state = random_state(models.build(RESNET, 1000), "timm")
  write_repo(hub_cache, "timm/resnet18.big", {"model.safetensors": safetensors_bytes(state, tmp_path)})
  config = ml_collections.ConfigDict(RESNET)
  source = transfer.pretrained_source("hf-hub:timm/resnet18.big", -1, config, SHAPE)
  assert flat(source.variables)["params/fc/bias"].shape == (1000,)  # the weights' own head, as loaded
  fresh_model = models.build(RESNET, 5)
  fresh = {
    "params": jax.tree.map(lambda x: x + 1.0, zeros(fresh_model)["params"]),
    "batch_stats": zeros(fresh_model)["batch_stats"],
  }
  head = transfer.find_head(config, 5, SHAPE)
  merged = transfer.merge(fresh, source, head, "auto", [str(i) for i in range(5)], config)
  out = flat(merged.variables)
  assert not merged.head_kept and "shape differs" in merged.reason
  np.testing.assert_array_equal(out["params/fc/kernel"], flat(fresh)["params/fc/kernel"])
  np.testing.assert_array_equal(
    out["params/layer1_0/conv2/kernel"], state["layer1.0.conv2.weight"].transpose(2, 3, 1, 0)
  )


def test_timm_resnet_keys_are_torchvisions():
  model = models.build(RESNET, 10)
  keys = set(random_state(model, "timm"))
  assert keys == set(random_state(model, "torchvision"))
  assert {
    "conv1.weight",
    "bn1.running_var",
    "layer1.0.conv1.weight",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.running_mean",
    "layer4.1.bn2.bias",
    "fc.weight",
    "fc.bias",
  } <= keys


# ------------------------------------------------------------------------------ ConvNeXt, ViT, VGG, MobileNetV2


def _convnext_keys(depths) -> set[str]:
  keys = {f"stem.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
  keys |= {f"head.{m}.{p}" for m in ("norm", "fc") for p in ("weight", "bias")}
  for stage, depth in enumerate(depths):
    if stage:
      keys |= {f"stages.{stage}.downsample.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    for block in range(depth):
      prefix = f"stages.{stage}.blocks.{block}."
      keys |= {prefix + f"{m}.{p}" for m in ("conv_dw", "norm", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")}
      keys.add(prefix + "gamma")
  return keys


@pytest.mark.parametrize("layout", ["timm", "torchvision"])
def test_tiny_convnext_from_the_hub_equals_the_file(hub_cache, tmp_path, layout):
  model = ConvNeXt(num_classes=10, depths=(1, 1, 2, 1), dims=(8, 16, 16, 24))
  state = random_state(model, layout)
  if layout == "timm":
    assert set(state) == _convnext_keys((1, 1, 2, 1))
    assert state["stages.2.blocks.1.gamma"].shape == (16,)
    assert state["stages.1.downsample.1.weight"].shape == (16, 8, 2, 2)
  else:
    assert state["features.5.1.layer_scale"].shape == (16, 1, 1)
  write_repo(hub_cache, f"org/convnext-{layout}", {"model.safetensors": safetensors_bytes(state, tmp_path)})
  weights = pretrained.load(f"hf-hub:org/convnext-{layout}", model, SHAPE)
  assert weights.layout == layout and weights.num_classes == 10 and weights.preprocessing is None
  loaded = flat(weights.variables["params"])
  name = "stages.2.blocks.1.mlp.fc1.weight" if layout == "timm" else "features.5.1.block.3.weight"
  np.testing.assert_array_equal(loaded["features_5_1/block_3/kernel"], state[name].T)
  back = layouts.state_dict(model, weights.variables, layout, SHAPE)
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_tiny_vit_from_the_hub_equals_the_file(hub_cache, tmp_path):
  model = VisionTransformer(num_classes=10, patch_size=8, hidden_dim=16, num_layers=2, num_heads=2, mlp_dim=32)
  state = random_state(model, "timm")
  expected = {
    "cls_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "norm.weight",
    "norm.bias",
    "head.weight",
    "head.bias",
  }
  expected |= {
    f"blocks.{i}.{m}.{p}"
    for i in (0, 1)
    for p in ("weight", "bias")
    for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
  }
  assert set(state) == expected
  assert state["blocks.1.attn.qkv.weight"].shape == (48, 16) and state["pos_embed"].shape == (1, 17, 16)
  write_repo(hub_cache, "timm/vit_tiny_test", {"model.safetensors": safetensors_bytes(state, tmp_path)})
  weights = pretrained.load("hf-hub:timm/vit_tiny_test", model, SHAPE)
  loaded = flat(weights.variables["params"])
  np.testing.assert_array_equal(
    loaded["encoder_layer_1/self_attention/in_proj/kernel"], state["blocks.1.attn.qkv.weight"].T
  )
  np.testing.assert_array_equal(loaded["class_token"], state["cls_token"])
  back = layouts.state_dict(model, weights.variables, "timm", SHAPE)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  with pytest.raises(CheckpointError, match=r"pos_embed.*dataset.image_size=\(32, 32\)"):
    pretrained.load("hf-hub:timm/vit_tiny_test", model, (48, 48, 3))


def test_tiny_vgg_reads_timms_conv_classifier(hub_cache, tmp_path):
  model = VGG(num_classes=10, stages=((8,), (8,), (16,), (16,), (16,)), hidden=32)
  state = random_state(model, "timm")
  assert state["pre_logits.fc1.weight"].shape == (32, 16, 7, 7)  # timm's ConvMlp: a 7x7 conv
  assert state["pre_logits.fc2.weight"].shape == (32, 32, 1, 1)
  assert {"features.0.weight", "features.12.bias", "head.fc.weight"} <= set(state)
  write_repo(hub_cache, "timm/vgg_tiny", {"model.safetensors": safetensors_bytes(state, tmp_path)})
  weights = pretrained.load("hf-hub:timm/vgg_tiny", model, SHAPE)
  loaded = flat(weights.variables["params"])
  # torchvision's first Linear is timm's conv flattened in (C, H, W) order, transposed to [in, out].
  np.testing.assert_array_equal(loaded["classifier_0/kernel"], state["pre_logits.fc1.weight"].reshape(32, -1).T)


def test_tiny_mobilenet_v2_reads_timms_efficientnet_names(hub_cache, tmp_path):
  model = MobileNetV2(num_classes=10, width_mult=0.25)
  state = random_state(model, "timm")
  repeats = (1, 2, 3, 4, 3, 3, 1)
  blocks = {f"blocks.{s}.{j}" for s, n in enumerate(repeats) for j in range(n)}
  assert {k.rsplit(".", 2)[0] for k in state if k.startswith("blocks.")} == blocks
  bn = ("weight", "bias", "running_mean", "running_var")
  assert {f"blocks.0.0.{m}" for m in ("conv_dw.weight", "conv_pw.weight")} | {f"blocks.0.0.bn2.{p}" for p in bn} <= set(
    state
  )
  assert {
    "blocks.1.0.conv_pw.weight",
    "blocks.1.0.conv_dw.weight",
    "blocks.1.0.conv_pwl.weight",
    "blocks.6.0.bn3.running_var",
    "conv_stem.weight",
    "bn1.weight",
    "conv_head.weight",
    "bn2.running_var",
    "classifier.weight",
    "classifier.bias",
  } <= set(state)
  assert state["blocks.1.0.conv_dw.weight"].shape[1] == 1  # depthwise
  write_repo(hub_cache, "timm/mobilenetv2_tiny", {"model.safetensors": safetensors_bytes(state, tmp_path)})
  weights = pretrained.load("hf-hub:timm/mobilenetv2_tiny", model, SHAPE)
  np.testing.assert_array_equal(
    flat(weights.variables)["batch_stats/features_2/conv_3/var"], state["blocks.1.0.bn3.running_var"]
  )


@pytest.mark.parametrize(
  "name, side, shapes",
  [
    ("resnet152", 32, {"layer3.35.conv3.weight": (1024, 256, 1, 1), "fc.weight": (1000, 2048)}),
    (
      "convnext_tiny",
      32,
      {
        "stages.3.blocks.2.mlp.fc1.weight": (3072, 768),
        "stages.3.blocks.2.gamma": (768,),
        "stages.3.downsample.1.weight": (768, 384, 2, 2),
        "head.fc.weight": (1000, 768),
      },
    ),
    (
      "vit_b16",
      224,
      {
        "pos_embed": (1, 197, 768),
        "blocks.11.attn.qkv.weight": (2304, 768),
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "head.weight": (1000, 768),
      },
    ),
    (
      "vgg16_bn",
      32,
      {
        "pre_logits.fc1.weight": (4096, 512, 7, 7),
        "pre_logits.fc2.weight": (4096, 4096, 1, 1),
        "head.fc.weight": (1000, 4096),
      },
    ),
    (
      "mobilenet_v2",
      32,
      {
        "blocks.6.0.conv_pwl.weight": (320, 960, 1, 1),
        "conv_head.weight": (1280, 320, 1, 1),
        "blocks.0.0.conv_dw.weight": (32, 1, 3, 3),
        "classifier.weight": (1000, 1280),
      },
    ),
  ],
)
def test_full_size_models_have_timms_names_and_shapes(name, side, shapes):
  """The registered ImageNet models, traced only: every variable has its own timm key, with timm's shapes."""
  model = models.build({"name": name}, 1000)
  keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  abstract = jax.eval_shape(lambda: model.init(keys, np.zeros((1, side, side, 3), np.float32), train=False))
  variables = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), dict(abstract))
  state = layouts.state_dict(model, variables, "timm", (side, side, 3))
  assert len(state) == len(jax.tree.leaves(variables))  # no two variables share a key
  for key, shape in shapes.items():
    assert state[key].shape == shape, key


def test_a_local_safetensors_file_in_torchvision_layout(tmp_path):
  model = models.build(RESNET, 10)
  state = random_state(model, "torchvision", seed=4)
  path = tmp_path / "resnet18.safetensors"
  save_file(state, str(path))
  weights = pretrained.load(str(path), model, SHAPE, "resnet18")
  np.testing.assert_array_equal(
    flat(weights.variables)["params/layer3_1/conv1/kernel"], state["layer3.1.conv1.weight"].transpose(2, 3, 1, 0)
  )
  assert weights.description.startswith(f"weights file {path}")


# ------------------------------------------------------------------------------------------------ preprocessing


def _finetune_config(init_from: str, **dataset) -> ml_collections.ConfigDict:
  from jaxcls.config import base

  config = base.get_base_config()
  config.init_from = init_from
  config.model.name = "resnet18"
  for key, value in dataset.items():
    config.dataset[key] = value
  return config


def test_the_weights_config_fills_the_preprocessing_left_at_defaults(hub_cache):
  write_repo(hub_cache, "timm/resnet18.pre", {"config.json": timm_config("resnet18", size=40, crop=0.9)})
  config = _finetune_config("hf-hub:timm/resnet18.pre", eval_crop="center")
  out = transfer.with_weights_preprocessing(config)
  assert tuple(out.dataset.mean) == (0.5, 0.4, 0.3) and tuple(out.dataset.std) == (0.2, 0.25, 0.3)
  assert tuple(out.dataset.image_size) == (40, 40)
  assert out.dataset.eval_crop == "center" and out.dataset.center_crop_fraction == 0.9
  assert config.dataset.mean is None  # the input config is not changed
  # Keys the config sets are kept.
  kept = transfer.with_weights_preprocessing(
    _finetune_config("hf-hub:timm/resnet18.pre", image_size=(16, 16), mean=(0.1, 0.1, 0.1))
  )
  assert tuple(kept.dataset.image_size) == (16, 16) and tuple(kept.dataset.mean) == (0.1, 0.1, 0.1)
  assert tuple(kept.dataset.std) == (0.2, 0.25, 0.3)
  plain = _finetune_config("")
  assert transfer.with_weights_preprocessing(plain) is plain
  # Weights with no config.json: ImageNet's statistics, the image size left to the config.
  write_repo(hub_cache, "org/no-config", {"model.safetensors": b"unused here"})
  bare = transfer.with_weights_preprocessing(_finetune_config("hf-hub:org/no-config"))
  assert tuple(bare.dataset.mean) == pretrained.IMAGENET_MEAN and tuple(bare.dataset.std) == pretrained.IMAGENET_STD
  assert bare.dataset.image_size is None


def test_a_repo_of_another_architecture_is_named(hub_cache, tmp_path):
  state = random_state(models.build(RESNET, 10), "timm")
  write_repo(
    hub_cache,
    "timm/resnet50.x",
    {"model.safetensors": safetensors_bytes(state, tmp_path), "config.json": timm_config("resnet50")},
  )
  with pytest.raises(ConfigError, match=r"'resnet50' but config.model.name='resnet18'.*--config.model.name=resnet50"):
    transfer.pretrained_source("hf-hub:timm/resnet50.x", -1, ml_collections.ConfigDict(RESNET), SHAPE)


def test_revisions_and_hf_home(tmp_path, monkeypatch):
  """@COMMIT reads that snapshot, @BRANCH its ref; HF_HOME/hub is the cache when HF_HUB_CACHE is unset."""
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
  monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  cache = tmp_path / "home" / "hub"
  model = models.build(RESNET, 10)
  old, new = random_state(model, "timm", seed=1), random_state(model, "timm", seed=2)
  other = "f" * 40
  write_repo(
    cache, "timm/resnet18.rev", {"model.safetensors": safetensors_bytes(old, tmp_path)}, commit=other, ref="v1"
  )
  write_repo(cache, "timm/resnet18.rev", {"model.safetensors": safetensors_bytes(new, tmp_path)})
  assert pretrained.hub_cache_dir() == str(cache)
  for spec, state in (
    ("hf-hub:timm/resnet18.rev", new),
    (f"hf-hub:timm/resnet18.rev@{other}", old),
    ("hf-hub:timm/resnet18.rev@v1", old),
    (f"hf_hub:timm/resnet18.rev@{COMMIT}", new),
  ):
    weights = pretrained.load(spec, model, SHAPE, "resnet18")
    np.testing.assert_array_equal(
      flat(weights.variables)["params/layer1_1/conv2/kernel"],
      state["layer1.1.conv2.weight"].transpose(2, 3, 1, 0),
      err_msg=spec,
    )


def test_a_torchvision_name_of_another_architecture_is_named_before_reading():
  with pytest.raises(ConfigError, match=r"'vit_b_16' but config.model.name='resnet18'.*--config.model.name=vit_b16"):
    pretrained.load("torchvision:vit_b_16", models.build(RESNET, 10), SHAPE, "resnet18")


# ------------------------------------------------------------------------------------------------ errors


def test_offline_and_not_cached_names_repo_revision_cache_and_fix(hub_cache):
  with pytest.raises(ConfigError) as info:
    pretrained.load("hf-hub:timm/resnet50.a1_in1k", models.build(RESNET, 10), SHAPE)
  message = str(info.value)
  for part in (
    "timm/resnet50.a1_in1k",
    "revision 'main'",
    str(hub_cache),
    "HF_HUB_OFFLINE",
    "hf download timm/resnet50.a1_in1k model.safetensors config.json",
  ):
    assert part in message, (part, message)
  write_repo(hub_cache, "timm/resnet18.rev", {"config.json": b"{}"})
  with pytest.raises(ConfigError, match=r"revision 'v2'.*--revision v2"):
    pretrained.load("hf-hub:timm/resnet18.rev@v2", models.build(RESNET, 10), SHAPE)


@pytest.mark.parametrize(
  "spec",
  [
    "hf-hub:resnet50",
    "hf-hub:timm/resnet50@",
    "hf-hub:timm/a b",
    "torchvision:ResNet 50",
    "torchvision:",
    "resnet50.msgpack",
  ],
)
def test_a_bad_spec_is_refused_with_the_accepted_forms(spec):
  with pytest.raises(ConfigError, match="hf-hub:timm/resnet50.a1_in1k"):
    pretrained.parse(spec)


def test_a_step_is_refused_for_pretrained_weights():
  with pytest.raises(ConfigError, match="init_from_step=-1"):
    transfer.pretrained_source("hf-hub:timm/x", 5, ml_collections.ConfigDict(RESNET), SHAPE)


def test_a_shape_mismatch_names_the_files_key_and_shapes(hub_cache, tmp_path):
  state = random_state(models.build(RESNET, 10), "timm")
  write_repo(hub_cache, "timm/resnet18.w8", {"model.safetensors": safetensors_bytes(state, tmp_path)})
  with pytest.raises(
    CheckpointError,
    match=r"timm/torchvision layout.*conv1.weight is \(8, 3, 7, 7\) in the file, "
    r"params/conv1/kernel needs \(16, 3, 7, 7\)",
  ):
    pretrained.load("hf-hub:timm/resnet18.w8", models.build({"name": "resnet18", "width": 16}, 10), SHAPE)


def test_a_model_without_a_pretrained_layout_is_refused(tmp_path):
  path = tmp_path / "w.safetensors"
  save_file({"a": np.zeros(2, np.float32)}, str(path))
  with pytest.raises(ConfigError, match="no torchvision or timm layout"):
    pretrained.load(str(path), models.build({"name": "simple_cnn"}, 10), SHAPE)


@pytest.mark.skipif(__import__("importlib").util.find_spec("torch") is not None, reason="torch is installed")
def test_torchvision_without_torch_names_the_install():
  with pytest.raises(ConfigError, match=r"pip install torch torchvision.*hf-hub:timm/resnet50.tv_in1k"):
    pretrained.load("torchvision:resnet50", models.build(RESNET, 10), SHAPE)


# ------------------------------------------------------------------------------------------------ one command


def test_finetune_folder_config_from_an_offline_hub_cache(hub_cache, tmp_path, python):
  """`configs/finetune_folder.py` as a user runs it, from a hub cache built offline: with the backbone frozen, the
  checkpoint's backbone is the file's exactly, the head is new, and the workdir's config holds the weights'
  preprocessing."""
  state = random_state(models.build(RESNET, 10), "timm", seed=7)
  write_repo(
    hub_cache,
    "timm/resnet18.tiny",
    {
      "model.safetensors": safetensors_bytes(state, tmp_path),
      "config.json": timm_config("resnet18", size=32, crop=0.95),
    },
  )
  rng = np.random.default_rng(0)
  for label in ("cat", "dog"):
    (tmp_path / "images" / label).mkdir(parents=True)
    for i in range(8):
      pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
  workdir = tmp_path / "run"
  env = dict(subprocess_env(), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub_cache))
  result = subprocess.run(
    [
      python,
      "-m",
      "jaxcls.main",
      "--config",
      os.path.join(REPO, "configs", "finetune_folder.py"),
      "--workdir",
      str(workdir),
      f"--config.dataset.path={tmp_path / 'images'}",
      "--config.init_from=hf-hub:timm/resnet18.tiny",
      "--config.model.name=resnet18",
      "--config.model.width=8",
      "--config.optimizer.backbone_lr_factor=0",
      "--config.num_train_steps=2",
      "--config.optimizer.warmup_steps=0",
      "--config.batch_size=8",
      "--config.dataset.workers=2",
    ],
    env=env,
    cwd=str(tmp_path),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "timm/torchvision layout, 102 of 102 tensors loaded" in result.stderr, result.stderr[-3000:]
  run = restore.restore(str(workdir))
  assert tuple(run.config.dataset.mean) == (0.5, 0.4, 0.3) and tuple(run.config.dataset.std) == (0.2, 0.25, 0.3)
  assert tuple(run.config.dataset.image_size) == (32, 32) and run.config.dataset.center_crop_fraction == 0.95
  loaded = layouts.state_dict(models.build(RESNET, 2), run.variables, "timm", SHAPE)
  for key, value in state.items():
    if not key.startswith("fc."):
      np.testing.assert_array_equal(loaded[key], value, err_msg=key)
  assert loaded["fc.weight"].shape == (2, 64)


# ------------------------------------------------------------------------ logit parity (where torch is installed)
# CI has no torch, so these skip there; run them where torch, torchvision and timm are installed (see
# tests/models/test_torch_parity.py for such an environment, plus `pip install timm huggingface_hub safetensors`).

TIMM_MODELS = [
  ("resnet18", "resnet18", 64),
  ("resnet50", "resnet50", 64),
  ("convnext_tiny", "convnext_tiny", 64),
  ("vit_base_patch16_224", "vit_b16", 224),
  ("vgg11_bn", "vgg11_bn", 64),
  ("mobilenetv2_100", "mobilenet_v2", 64),
]


def _randomised(torch, net, side: int):
  """`net` with its constant tensors randomised and batch norm calibrated on random images, in eval mode."""
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, tensor in net.state_dict().items():
      if not tensor.is_floating_point():
        continue
      noise = torch.randn(tensor.shape, generator=generator) * 0.1
      if tensor.numel() == 1 or bool(torch.all(tensor == tensor.flatten()[0])):
        tensor.copy_((1.0 if name.endswith(("weight", "gamma")) and tensor.ndim == 1 else 0.0) + noise)
      elif name.startswith(("head", "heads.head")):
        tensor.copy_(noise)
    for module in net.modules():  # the last norm of each residual block, scaled down as training leaves it
      for attribute in ("bn3", "bn2"):
        norm = getattr(module, attribute, None)
        if type(module).__name__ in ("Bottleneck", "BasicBlock") and norm is not None:
          norm.weight.mul_(0.2)
          break
  norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
  for m in norms:
    m.reset_running_stats()
    m.momentum = None
  if norms:
    net.train()
    with torch.no_grad():
      net(torch.from_numpy(np.random.default_rng(2).standard_normal((16, 3, side, side)).astype(np.float32)))
  return net.eval()


def _assert_parity(torch, net, model, variables, side: int) -> None:
  images = np.random.default_rng(0).standard_normal((2, 3, side, side)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(images)).numpy()
  logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images.transpose(0, 2, 3, 1)))
  difference = float(np.max(np.abs(logits - expected)))
  assert difference <= 1e-4, (difference, float(np.max(np.abs(expected))))


@pytest.mark.parametrize("timm_name, name, side", TIMM_MODELS)
def test_hub_weights_give_timms_logits(hub_cache, tmp_path, timm_name, name, side):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  torch.manual_seed(0)
  net = _randomised(torch, timm.create_model(timm_name, pretrained=False, num_classes=10), side)
  state = {k: v.detach().cpu().contiguous().numpy() for k, v in net.state_dict().items()}
  write_repo(hub_cache, f"timm/{timm_name}.parity", {"model.safetensors": safetensors_bytes(state, tmp_path)})
  model = models.build({"name": name}, 10)
  weights = pretrained.load(f"hf-hub:timm/{timm_name}.parity", model, (side, side, 3), name)
  assert weights.layout in ("timm", "timm/torchvision") and weights.num_classes == 10
  _assert_parity(torch, net, model, weights.variables, side)


@pytest.mark.parametrize("tv_name, name, side", [("resnet18", "resnet18", 64), ("convnext_tiny", "convnext_tiny", 64)])
def test_torchvision_spec_reads_torchs_weight_cache(tmp_path, monkeypatch, tv_name, name, side):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch.hub.get_dir() reads it on every call
  weights = torchvision.models.get_model_weights(tv_name).DEFAULT
  torch.manual_seed(0)
  net = _randomised(torch, getattr(torchvision.models, tv_name)(weights=None), side)
  cached = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(weights.url)
  cached.parent.mkdir(parents=True)
  torch.save(net.state_dict(), cached)  # torch.hub reads a cached file without downloading (or hashing) it
  model = models.build({"name": name}, 1000)
  loaded = pretrained.load(f"torchvision:{tv_name}", model, (side, side, 3), name)
  assert loaded.layout in ("torchvision", "timm/torchvision") and loaded.num_classes == 1000
  assert loaded.preprocessing.mean == (0.485, 0.456, 0.406) and loaded.preprocessing.eval_crop == "center"
  _assert_parity(torch, net, model, loaded.variables, side)
