"""State_dict layouts, torchvision's and timm's, to and from the variables of a jaxcls model.

jaxcls names its parameters after torchvision (`models/torchvision.py` maps a flax path to a torchvision key with
each model's `TORCH_RENAMES`), so a timm checkpoint is read by one more step: the torchvision key -> timm's key.
Which layout a state_dict has is told by its key names. The timm names below are read from timm's own modules
(pytorch-image-models, timm/models/resnet.py, convnext.py, vision_transformer.py, vgg.py and efficientnet.py with
_efficientnet_blocks.py), not guessed:

- ResNet (and Wide ResNet, ResNeXt): timm's keys are torchvision's (`conv1`, `layer1.0.downsample.0`, `fc`).
- ConvNeXt: `stem.0/1`, `stages.{i}.downsample.0/1` (norm, conv; none in stage 0), `stages.{i}.blocks.{j}` with
  `conv_dw`, `norm`, `mlp.fc1`, `mlp.fc2` and `gamma` ([C]; torchvision's layer_scale is [C, 1, 1]), `head.norm`
  and `head.fc`.
- ViT: `patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.{i}` with `norm1`, `attn.qkv` (q, k, v stacked as in
  torch's in_proj), `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`, then `norm` and `head`.
- VGG: `features.*` as torchvision; the classifier is timm's ConvMlp, `pre_logits.fc1` a 7x7 conv ([4096, 512, 7,
  7], torchvision's first Linear reshaped) and `pre_logits.fc2` a 1x1 conv, then `head.fc`.
- MobileNetV2 (timm's `mobilenetv2_100`, built by efficientnet.py): `conv_stem`, `bn1`, `blocks.{stage}.{j}` (the
  first, expansion-1 stage: `conv_dw`, `bn1`, `conv_pw`, `bn2`; the others: `conv_pw`, `bn1`, `conv_dw`, `bn2`,
  `conv_pwl`, `bn3`), `conv_head`, `bn2` and `classifier`.
"""

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxcls.core.errors import CheckpointError, ConfigError
from jaxcls.models import convnext, mobilenet, resnet, torchvision, vgg, vit

_IGNORED = ("num_batches_tracked",)  # batch norm's counters: no weights


def _resnet(key: str, model) -> str:
  del model
  return key


def _convnext(key: str, model) -> str:
  del model
  head = {"classifier.0.": "head.norm.", "classifier.2.": "head.fc."}
  for old, timm in head.items():
    if key.startswith(old):
      return timm + key[len(old) :]
  match = re.match(r"features\.(\d+)\.(\d+)\.(.*)$", key)
  if not match:
    return key
  index, sub, rest = int(match[1]), int(match[2]), match[3]
  if index == 0:
    return f"stem.{sub}.{rest}"
  if index % 2 == 0:  # the norm + conv between stages
    return f"stages.{index // 2}.downsample.{sub}.{rest}"
  block = {
    "block.0.": "conv_dw.",
    "block.2.": "norm.",
    "block.3.": "mlp.fc1.",
    "block.5.": "mlp.fc2.",
    "layer_scale": "gamma",
  }
  for old, timm in block.items():
    if rest.startswith(old):
      rest = timm + rest[len(old) :]
      break
  return f"stages.{index // 2}.blocks.{sub}.{rest}"


def _vit(key: str, model) -> str:
  del model
  fixed = {"class_token": "cls_token", "encoder.pos_embedding": "pos_embed"}
  if key in fixed:
    return fixed[key]
  prefixes = {"conv_proj.": "patch_embed.proj.", "encoder.ln.": "norm.", "heads.head.": "head."}
  for old, timm in prefixes.items():
    if key.startswith(old):
      return timm + key[len(old) :]
  match = re.match(r"encoder\.layers\.encoder_layer_(\d+)\.(.*)$", key)
  if not match:
    return key
  rest = match[2]
  parts = {
    "ln_1.": "norm1.",
    "ln_2.": "norm2.",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.": "attn.proj.",
    "mlp.0.": "mlp.fc1.",
    "mlp.3.": "mlp.fc2.",
  }
  for old, timm in parts.items():
    if rest.startswith(old):
      rest = timm + rest[len(old) :]
      break
  return f"blocks.{match[1]}.{rest}"


def _vgg(key: str, model) -> str:
  del model
  head = {"classifier.0.": "pre_logits.fc1.", "classifier.3.": "pre_logits.fc2.", "classifier.6.": "head.fc."}
  for old, timm in head.items():
    if key.startswith(old):
      return timm + key[len(old) :]
  return key


def _mobilenet(key: str, model) -> str:
  repeats = [int(n) for _, _, n, _ in model.settings]
  expansions = [int(t) for t, _, _, _ in model.settings]
  if key.startswith("classifier.1."):
    return "classifier." + key[len("classifier.1.") :]
  match = re.match(r"features\.(\d+)\.(.*)$", key)
  if not match:
    return key
  index, rest = int(match[1]), match[2]
  if index == 0:
    return {"0": "conv_stem", "1": "bn1"}[rest[0]] + rest[1:]
  if index > sum(repeats):  # the last 1x1 conv to 1280 channels
    return {"0": "conv_head", "1": "bn2"}[rest[0]] + rest[1:]
  block, stage = index - 1, 0
  while block >= repeats[stage]:
    block -= repeats[stage]
    stage += 1
  if expansions[stage] == 1:  # timm's DepthwiseSeparableConv
    names = {"conv.0.0.": "conv_dw.", "conv.0.1.": "bn1.", "conv.1.": "conv_pw.", "conv.2.": "bn2."}
  else:  # timm's InvertedResidual
    names = {
      "conv.0.0.": "conv_pw.",
      "conv.0.1.": "bn1.",
      "conv.1.0.": "conv_dw.",
      "conv.1.1.": "bn2.",
      "conv.2.": "conv_pwl.",
      "conv.3.": "bn3.",
    }
  for old, timm in names.items():
    if rest.startswith(old):
      return f"blocks.{stage}.{block}.{timm}{rest[len(old) :]}"
  return key


# Checked in this order, so a subclass (e.g. VGGBatchNorm, the ConvNeXt sizes) finds its family.
_FAMILIES: tuple[tuple[type, str, Callable[[str, object], str]], ...] = (
  (resnet.ResNet, "resnet", _resnet),
  (convnext.ConvNeXt, "convnext", _convnext),
  (vit.VisionTransformer, "vit", _vit),
  (vgg.VGG, "vgg", _vgg),
  (mobilenet.MobileNetV2, "mobilenet_v2", _mobilenet),
)


def family(model) -> str | None:
  """The timm family of a jaxcls model ('resnet', 'convnext', 'vit', 'vgg', 'mobilenet_v2'), None if timm has none."""
  for cls, name, _ in _FAMILIES:
    if isinstance(model, cls):
      return name
  return None


def timm_key(model, torchvision_key: str) -> str | None:
  """timm's state_dict key for a torchvision key of `model`; None when the model has no timm layout."""
  for cls, _, rename in _FAMILIES:
    if isinstance(model, cls):
      return rename(torchvision_key, model)
  return None


def timm_tensor(model, timm_key_: str, torchvision_tensor: np.ndarray) -> np.ndarray:
  """A torchvision-layout tensor in the shape timm stores it (the inverse of the reshape on loading)."""
  if isinstance(model, convnext.ConvNeXt) and timm_key_.endswith(".gamma"):
    return torchvision_tensor.reshape(-1)
  if isinstance(model, vgg.VGG) and timm_key_ == "pre_logits.fc1.weight":
    channels = int(model.stages[-1][-1])
    side = int(round((torchvision_tensor.shape[1] // channels) ** 0.5))  # the 7x7 of the adaptive pool
    return torchvision_tensor.reshape(torchvision_tensor.shape[0], channels, side, side)
  if isinstance(model, vgg.VGG) and timm_key_ == "pre_logits.fc2.weight":
    return torchvision_tensor.reshape(*torchvision_tensor.shape, 1, 1)
  return torchvision_tensor


# timm's `architecture` (config.json) and torchvision's model names -> jaxcls model names, where they differ only
# in spelling; a name not listed maps to itself if jaxcls has it.
ARCHITECTURES = {
  "vit_tiny_patch16_224": "vit_ti16",
  "vit_small_patch16_224": "vit_s16",
  "vit_base_patch16_224": "vit_b16",
  "vit_base_patch16_384": "vit_b16",
  "vit_b_16": "vit_b16",
  "mobilenetv2_100": "mobilenet_v2",
}


# ------------------------------------------------------------------------------------- variables <-> state_dict


def _torch_shape(name: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  if name == "kernel" and len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if name == "kernel" and len(flax_shape) == 2:
    return (flax_shape[1], flax_shape[0])
  return tuple(flax_shape)


def _leaves(model, image_shape) -> list[tuple[str, tuple[str, ...], tuple[int, ...], str]]:
  """(collection, path inside it, shape, torchvision key) of every variable of `model`."""
  return _traced_leaves(model, tuple(int(d) for d in image_shape))


@functools.lru_cache(maxsize=16)  # loading traces each model a few times (layout, head, mapping): once is enough
def _traced_leaves(model, image_shape: tuple[int, ...]) -> list[tuple[str, tuple[str, ...], tuple[int, ...], str]]:
  renames = getattr(type(model), "TORCH_RENAMES", None)
  if renames is None:
    raise ConfigError(
      f"Model {type(model).__name__} has no torchvision or timm layout, so config.init_from cannot "
      "name pretrained weights for it; use a ResNet, ConvNeXt, ViT, VGG, MobileNetV2 or AlexNet."
    )
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(torchvision.abstract_variables(model, tuple(image_shape))):
    names = tuple(p.key for p in path)
    out.append((names[0], names[1:], tuple(leaf.shape), torchvision.torch_key(names[0], names[1:], renames)))
  return sorted(out, key=lambda leaf: leaf[0] != "params")  # parameters first: problems read better


def _layouts(model) -> dict[str, Any]:
  """Layout name -> torchvision key to that layout's key."""
  layouts = {"torchvision": lambda key: key}
  if family(model) is not None:
    layouts["timm"] = lambda key: timm_key(model, key)
  return layouts


def detect_layout(model, state_dict: Mapping[str, Any], image_shape) -> str:
  """'torchvision' or 'timm': the layout whose key names cover more of `model`'s variables in `state_dict`."""
  keys = [leaf[3] for leaf in _leaves(model, image_shape)]
  hits = {name: sum(rename(k) in state_dict for k in keys) for name, rename in _layouts(model).items()}
  return max(hits, key=lambda name: (hits[name], name == "torchvision"))


def layout_name(model, layout: str, image_shape) -> str:
  """`layout`, or 'timm/torchvision' where the two name every variable alike (ResNets)."""
  keys = [leaf[3] for leaf in _leaves(model, image_shape)]
  renames = list(_layouts(model).values())
  same = len(renames) > 1 and all(len({rename(k) for rename in renames}) == 1 for k in keys)
  return "timm/torchvision" if same else layout


def head_classes(model, state_dict: Mapping[str, Any], image_shape) -> int:
  """The class count of the weights: the length of the head bias (the one leaf whose shape varies with it)."""
  one, two = (_leaves(model.clone(num_classes=n), image_shape) for n in (1, 2))
  rename = _layouts(model)[detect_layout(model, state_dict, image_shape)]
  for a, b in zip(one, two):
    if a[2] != b[2] and a[1][-1] == "bias" and rename(a[3]) in state_dict:
      return int(np.shape(state_dict[rename(a[3])])[0])
  raise CheckpointError(
    f"Cannot find the classifier head of {type(model).__name__} in the weights (no "
    f"{rename(one[-1][3])!r} or similar); are they weights of this architecture?"
  )


def to_variables(
  model, state_dict: Mapping[str, np.ndarray], image_shape, what: str = "the weights"
) -> tuple[dict, str, list[str]]:
  """({'params', 'batch_stats'} of `model` from `state_dict`, its layout, the keys skipped as not weights).

  Every variable must be in the state_dict with its shape, and the state_dict must hold nothing else (apart from
  batch norm's num_batches_tracked): a CheckpointError names the first differences in the file's own key names.
  """
  layout = detect_layout(model, state_dict, image_shape)
  rename = _layouts(model)[layout]
  used, problems, out = set(), [], {}
  what_layout = layout_name(model, layout, image_shape)
  for collection, inner, shape, torch_key in _leaves(model, image_shape):
    key = rename(torch_key)
    where = "/".join((collection, *inner))
    if key not in state_dict:
      problems.append(f"{where} needs {key}, which is missing")
      continue
    value = np.asarray(state_dict[key])
    expected = _torch_shape(inner[-1], shape)
    if value.ndim != len(expected) and value.size == int(np.prod(expected)):
      value = value.reshape(expected)  # timm's VGG classifier as convs, ConvNeXt's layer scale [C] vs [C, 1, 1]
    if value.shape != expected:
      problems.append(f"{key} is {tuple(np.shape(state_dict[key]))} in the file, {where} needs {expected}")
      continue
    used.add(key)
    node = out.setdefault(collection, {})
    for name in inner[:-1]:
      node = node.setdefault(name, {})
    node[inner[-1]] = torchvision._to_flax(inner[-1], value, shape).astype(np.float32)  # noqa: SLF001
  skipped = sorted(k for k in state_dict if k not in used and k.endswith(_IGNORED))
  problems += [f"unexpected key {k}" for k in sorted(state_dict) if k not in used and not k.endswith(_IGNORED)]
  if problems:
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    hint = _vit_hint(model, state_dict) if any("pos_embed" in p for p in problems) else ""
    raise CheckpointError(
      f"{what} ({what_layout} layout) do not fit model {type(model).__name__} as configured: "
      f"{'; '.join(problems[:5])}{more}.{hint} Set config.model to the weights' architecture "
      "and settings."
    )
  out.setdefault("batch_stats", {})
  return out, what_layout, skipped


def _vit_hint(model, state_dict) -> str:
  for key in ("pos_embed", "encoder.pos_embedding"):
    if key in state_dict and np.ndim(state_dict[key]) == 3:
      side = int(round((state_dict[key].shape[1] - 1) ** 0.5)) * int(getattr(model, "patch_size", 16))
      return (
        f" A ViT's position embedding fixes the image size: these weights need dataset.image_size=({side}, {side})."
      )
  return ""


def state_dict(
  model, variables: Mapping[str, Any], layout: str = "timm", image_shape=(224, 224, 3)
) -> dict[str, np.ndarray]:
  """`variables` of `model` as a state_dict in timm's or torchvision's layout (the inverse of `to_variables`).

  For writing weights that timm or torchvision load, and for tests that build hub files from known values.
  """
  layouts = _layouts(model)
  if layout not in layouts:
    raise ConfigError(f"Model {type(model).__name__} has no {layout!r} layout; it has: {', '.join(layouts)}.")
  rename, out = layouts[layout], {}
  for collection, inner, _, torch_key in _leaves(model, image_shape):
    node = variables[collection]
    for name in inner:
      node = node[name]
    value = np.asarray(node, np.float32)
    if inner[-1] == "kernel" and value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif inner[-1] == "kernel" and value.ndim == 2:
      value = value.T
    key = rename(torch_key)
    if layout == "timm":
      value = timm_tensor(model, key, value)
    elif key.endswith(".layer_scale"):
      value = value.reshape(-1, 1, 1)  # torchvision's ConvNeXt stores it [C, 1, 1]
    out[key] = np.ascontiguousarray(value)
  return out
