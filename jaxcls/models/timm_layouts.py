"""timm's state_dict key names for the jaxcls models that have timm weights, as a map from torchvision's names.

jaxcls names its parameters after torchvision (`models/torchvision.py` maps a flax path to a torchvision key), so
a timm checkpoint is read by one more step: the torchvision key -> timm's key. The names below are read from timm's
own modules (pytorch-image-models, timm/models/resnet.py, convnext.py, vision_transformer.py, vgg.py and
efficientnet.py with _efficientnet_blocks.py), not guessed:

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

import re
from collections.abc import Callable

import numpy as np

from jaxcls.models import convnext, mobilenet, resnet, vgg, vit


def _resnet(key: str, model) -> str:
  del model
  return key


def _convnext(key: str, model) -> str:
  del model
  head = {"classifier.0.": "head.norm.", "classifier.2.": "head.fc."}
  for tv, timm in head.items():
    if key.startswith(tv):
      return timm + key[len(tv):]
  match = re.match(r"features\.(\d+)\.(\d+)\.(.*)$", key)
  if not match:
    return key
  index, sub, rest = int(match[1]), int(match[2]), match[3]
  if index == 0:
    return f"stem.{sub}.{rest}"
  if index % 2 == 0:  # the norm + conv between stages
    return f"stages.{index // 2}.downsample.{sub}.{rest}"
  block = {"block.0.": "conv_dw.", "block.2.": "norm.", "block.3.": "mlp.fc1.", "block.5.": "mlp.fc2.",
           "layer_scale": "gamma"}
  for tv, timm in block.items():
    if rest.startswith(tv):
      rest = timm + rest[len(tv):]
      break
  return f"stages.{index // 2}.blocks.{sub}.{rest}"


def _vit(key: str, model) -> str:
  del model
  fixed = {"class_token": "cls_token", "encoder.pos_embedding": "pos_embed"}
  if key in fixed:
    return fixed[key]
  prefixes = {"conv_proj.": "patch_embed.proj.", "encoder.ln.": "norm.", "heads.head.": "head."}
  for tv, timm in prefixes.items():
    if key.startswith(tv):
      return timm + key[len(tv):]
  match = re.match(r"encoder\.layers\.encoder_layer_(\d+)\.(.*)$", key)
  if not match:
    return key
  rest = match[2]
  parts = {"ln_1.": "norm1.", "ln_2.": "norm2.", "self_attention.in_proj_weight": "attn.qkv.weight",
           "self_attention.in_proj_bias": "attn.qkv.bias", "self_attention.out_proj.": "attn.proj.",
           "mlp.0.": "mlp.fc1.", "mlp.3.": "mlp.fc2."}
  for tv, timm in parts.items():
    if rest.startswith(tv):
      rest = timm + rest[len(tv):]
      break
  return f"blocks.{match[1]}.{rest}"


def _vgg(key: str, model) -> str:
  del model
  head = {"classifier.0.": "pre_logits.fc1.", "classifier.3.": "pre_logits.fc2.", "classifier.6.": "head.fc."}
  for tv, timm in head.items():
    if key.startswith(tv):
      return timm + key[len(tv):]
  return key


def _mobilenet(key: str, model) -> str:
  repeats = [int(n) for _, _, n, _ in model.settings]
  expansions = [int(t) for t, _, _, _ in model.settings]
  if key.startswith("classifier.1."):
    return "classifier." + key[len("classifier.1."):]
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
    names = {"conv.0.0.": "conv_pw.", "conv.0.1.": "bn1.", "conv.1.0.": "conv_dw.", "conv.1.1.": "bn2.",
             "conv.2.": "conv_pwl.", "conv.3.": "bn3."}
  for tv, timm in names.items():
    if rest.startswith(tv):
      return f"blocks.{stage}.{block}.{timm}{rest[len(tv):]}"
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
    "vit_tiny_patch16_224": "vit_ti16", "vit_small_patch16_224": "vit_s16", "vit_base_patch16_224": "vit_b16",
    "vit_base_patch16_384": "vit_b16", "vit_b_16": "vit_b16", "mobilenetv2_100": "mobilenet_v2",
}
