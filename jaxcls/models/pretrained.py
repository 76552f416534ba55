"""Pretrained weights by name: `hf-hub:ORG/NAME[@REVISION]`, `torchvision:NAME[.WEIGHTS]` or a `.safetensors` file.

So that fine-tuning from ImageNet weights is one `--config.init_from=...`, with no conversion step and no torch for
the hub: a hub repo is read through `huggingface_hub` (its cache, `HF_HUB_CACHE`/`HF_HOME` and `HF_HUB_OFFLINE`
honoured) and `safetensors.numpy`; `torchvision:` uses torchvision's own weight cache and needs torch.

A state_dict in timm's or torchvision's layout is detected by its key names and mapped onto the configured jaxcls
model by `models/layouts.py`. The weights keep their own class count here; `training/transfer.py` re-initialises
the head when the run's differs. A timm repo's `config.json` (`pretrained_cfg`) gives the preprocessing, written
into the config's dataset keys that are still at jaxcls's defaults by `with_preprocessing`, before the data is
built.
"""

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from jaxcls.core.errors import CheckpointError, ConfigError
from jaxcls.models import layouts

HUB_PREFIXES = ("hf-hub:", "hf_hub:")  # timm accepts both spellings
TORCHVISION_PREFIX = "torchvision:"
WEIGHTS_FILE = "model.safetensors"  # what timm pushes to the hub
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONFIG_FILE = "config.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TORCHVISION_ID = re.compile(r"^[a-z][a-z0-9_]*(\.[A-Za-z0-9_]+)?$")
_EXAMPLES = (
  "hf-hub:timm/resnet50.a1_in1k, hf-hub:timm/resnet50.a1_in1k@<commit or branch>, "
  "torchvision:resnet50, torchvision:resnet50.IMAGENET1K_V2 or /path/to/model.safetensors"
)


def handles(init_from: Any) -> bool:
  """Whether `config.init_from` names pretrained weights this module reads (not a workdir or a .msgpack file)."""
  text = str(init_from or "")
  return text.startswith(HUB_PREFIXES + (TORCHVISION_PREFIX,)) or text.lower().endswith(".safetensors")


@dataclasses.dataclass(frozen=True)
class Spec:
  """A parsed `init_from`: a hub repo (and revision), a torchvision model (and weights) or a local file."""

  text: str
  kind: str  # 'hub' | 'torchvision' | 'file'
  repo: str = ""
  revision: str | None = None  # None: the repo's default branch ('main')
  name: str = ""  # torchvision model name, e.g. 'resnet50'
  weights: str = ""  # torchvision weights member, e.g. 'IMAGENET1K_V2'; '' = its DEFAULT
  path: str = ""


def parse(init_from: str) -> Spec:
  """The `Spec` of `init_from`; a ConfigError shows the accepted forms when it is malformed."""
  text = str(init_from).strip()
  for prefix in HUB_PREFIXES:
    if text.startswith(prefix):
      repo, at, revision = text[len(prefix) :].partition("@")
      if not _HUB_ID.match(repo) or (at and not revision.strip()) or " " in revision:
        raise ConfigError(
          f"config.init_from={text!r} is not a hub name; write hf-hub:ORG/NAME or "
          f"hf-hub:ORG/NAME@REVISION, e.g. {_EXAMPLES}."
        )
      return Spec(text=text, kind="hub", repo=repo, revision=revision or None)
  if text.startswith(TORCHVISION_PREFIX):
    name = text[len(TORCHVISION_PREFIX) :]
    if not _TORCHVISION_ID.match(name):
      raise ConfigError(
        f"config.init_from={text!r} is not a torchvision name; write torchvision:MODEL or "
        f"torchvision:MODEL.WEIGHTS, e.g. {_EXAMPLES}."
      )
    model, _, weights = name.partition(".")
    return Spec(text=text, kind="torchvision", name=model, weights=weights)
  if text.lower().endswith(".safetensors"):
    return Spec(text=text, kind="file", path=text)
  raise ConfigError(f"config.init_from={text!r} names no pretrained weights; use one of: {_EXAMPLES}.")


# ---------------------------------------------------------------------------------------------------- the hub


def hub_cache_dir() -> str:
  """The hub cache folder huggingface_hub uses, read from the environment now (its constants are read at import)."""
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top

  for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    if os.environ.get(name):
      return os.path.expanduser(os.environ[name])
  if os.environ.get("HF_HOME"):
    return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
  return constants.HF_HUB_CACHE


def hub_offline() -> bool:
  """Whether `HF_HUB_OFFLINE` forbids network calls (read now, like `hub_cache_dir`)."""
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top

  value = os.environ.get("HF_HUB_OFFLINE")
  if value is not None:
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")
  return bool(constants.HF_HUB_OFFLINE)


def _hub_library():
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    from huggingface_hub import errors  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError(
      "config.init_from=hf-hub:... needs the huggingface_hub and safetensors packages "
      "(pip install huggingface_hub safetensors)."
    ) from e
  return huggingface_hub, errors


def _revision_text(spec: Spec) -> str:
  return f"revision {spec.revision!r}" if spec.revision else "revision 'main' (the default branch)"


def _download_command(spec: Spec, files=(WEIGHTS_FILE, CONFIG_FILE)) -> str:
  revision = f" --revision {spec.revision}" if spec.revision else ""
  return f"hf download {spec.repo} {' '.join(files)}{revision}"


def _hub_file(spec: Spec, filename: str, required: bool) -> str | None:
  """The local path of `filename` in the repo (downloaded into the cache if allowed); None if optional and absent."""
  hub, errors = _hub_library()
  cache, offline = hub_cache_dir(), hub_offline()
  if offline and not required:
    found = hub.try_to_load_from_cache(spec.repo, filename, cache_dir=cache, revision=spec.revision)
    if isinstance(found, str):
      return found
    if found is None:  # never fetched (as opposed to known to be absent)
      logging.warning(
        "init_from %s: %s is not in the hub cache %s (HF_HUB_OFFLINE is set), so its preprocessing "
        "is unknown; the config's dataset keys are used.",
        spec.text,
        filename,
        cache,
      )
    return None
  try:
    return hub.hf_hub_download(spec.repo, filename, revision=spec.revision, cache_dir=cache, local_files_only=offline)
  except errors.LocalEntryNotFoundError as e:
    if not required:
      logging.warning(
        "init_from %s: cannot reach the hub for %s and it is not in the cache %s; the config's dataset keys are used.",
        spec.text,
        filename,
        cache,
      )
      return None
    why = "HF_HUB_OFFLINE is set, so nothing is downloaded" if offline else "the hub could not be reached"
    raise ConfigError(
      f"config.init_from={spec.text!r}: {filename} of {spec.repo}, {_revision_text(spec)}, is not in the Hugging "
      f"Face cache {cache} and {why}; on a machine online run `{_download_command(spec)}` (with HF_HUB_CACHE or "
      f"HF_HOME pointing at the cache you copy here), or unset HF_HUB_OFFLINE."
    ) from e
  except errors.RemoteEntryNotFoundError as e:
    if not required:
      return None
    raise ConfigError(
      f"config.init_from={spec.text!r}: {spec.repo} ({_revision_text(spec)}) has no {filename}; "
      "jaxcls reads timm-style repos holding model.safetensors (e.g. the timm/ organisation's), "
      "or give a local .safetensors file."
    ) from e
  except errors.RevisionNotFoundError as e:
    raise ConfigError(
      f"config.init_from={spec.text!r}: {spec.repo} has no {_revision_text(spec)}; give a branch, "
      "tag or commit of the repo after '@', or none for its default branch."
    ) from e
  except errors.GatedRepoError as e:
    raise ConfigError(
      f"config.init_from={spec.text!r}: {spec.repo} is gated; accept its terms on huggingface.co "
      "and log in (`hf auth login`, or set HF_TOKEN)."
    ) from e
  except errors.RepositoryNotFoundError as e:
    raise ConfigError(
      f"config.init_from={spec.text!r}: the hub has no repo {spec.repo!r} (or it is private: log "
      "in with `hf auth login` or set HF_TOKEN); check ORG/NAME."
    ) from e
  except (errors.HFValidationError, ValueError) as e:
    raise ConfigError(f"config.init_from={spec.text!r} is not a valid hub name ({e}); e.g. {_EXAMPLES}.") from e
  except errors.HfHubHTTPError as e:
    raise ConfigError(
      f"config.init_from={spec.text!r}: the hub refused {filename} of {spec.repo} ({str(e).splitlines()[0][:200]})."
    ) from e


def _commit_of(path: str) -> str:
  match = re.search(r"[/\\]snapshots[/\\]([0-9a-f]{40})[/\\]", path)
  return match[1][:12] if match else ""


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"Cannot read {what} {path!r} ({type(e).__name__}: {str(e)[:200]}).") from e
  if not isinstance(value, dict):
    raise CheckpointError(f"{what} {path!r} is not a JSON object.")
  return value


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A safetensors state_dict as NumPy arrays (float ones as float32), with DataParallel's `module.` stripped."""
  try:
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError(f"Reading {path!r} needs the safetensors package (pip install safetensors).") from e
  if not os.path.isfile(path):
    raise ConfigError(f"config.init_from={path!r} does not exist; give an existing .safetensors file.")
  try:
    state = load_file(path)
  except Exception as e:  # the Rust reader raises SafetensorError (and others) on a damaged file
    raise CheckpointError(f"Cannot read the safetensors file {path!r} ({type(e).__name__}: {str(e)[:200]}).") from e
  state = {k.removeprefix("module."): np.asarray(v) for k, v in state.items()}
  return {k: v.astype(np.float32) if v.dtype.kind == "f" or str(v.dtype) == "bfloat16" else v for k, v in state.items()}


# -------------------------------------------------------------------------------------------- torchvision


def _torchvision_weights(spec: Spec):
  """torchvision's weights object for `spec` (needs torch and torchvision)."""
  try:
    from torchvision import models as tv_models  # pylint: disable=g-import-not-at-top  (imports torch)
  except ImportError as e:
    raise ConfigError(
      f"config.init_from={spec.text!r} needs torch and torchvision (pip install torch "
      "torchvision); without them use the same weights from the hub, e.g. "
      f"hf-hub:timm/{spec.name}.tv_in1k, which needs no torch."
    ) from e
  try:
    enum = tv_models.get_model_weights(spec.name)
  except (ValueError, KeyError) as e:
    raise ConfigError(
      f"config.init_from={spec.text!r}: torchvision has no model {spec.name!r} with weights; "
      "e.g. resnet50, convnext_tiny, vit_b_16, vgg16, mobilenet_v2."
    ) from e
  if not spec.weights:
    return enum.DEFAULT
  try:
    return enum[spec.weights]
  except KeyError as e:
    names = ", ".join(m.name for m in enum)
    raise ConfigError(
      f"config.init_from={spec.text!r}: torchvision's {spec.name} has no weights "
      f"{spec.weights!r}; it has: {names} (or leave it out for DEFAULT)."
    ) from e


def _torchvision_state(spec: Spec) -> tuple[dict[str, np.ndarray], str]:
  weights = _torchvision_weights(spec)
  import torch  # pylint: disable=g-import-not-at-top

  folder = os.path.join(torch.hub.get_dir(), "checkpoints")
  try:
    # torch.hub's cache (downloaded, and its hash checked, only when missing), as weights.get_state_dict does.
    state = torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True, map_location="cpu")
  except Exception as e:  # urllib raises many types when offline, torch.load others on a damaged file
    file = os.path.join(folder, os.path.basename(weights.url))
    if os.path.isfile(file):
      raise CheckpointError(
        f"config.init_from={spec.text!r}: torch cannot read its cached {file} "
        f"({type(e).__name__}: {str(e)[:200]}); delete it to download it again."
      ) from e
    raise ConfigError(
      f"config.init_from={spec.text!r}: {os.path.basename(file)} is not in torch's weight cache "
      f"{folder} and could not be downloaded ({type(e).__name__}); fetch {weights.url} into that "
      "folder (or set TORCH_HOME)."
    ) from e
  state = {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
  return state, f"{spec.text} ({type(weights).__name__}.{weights.name})"


# ---------------------------------------------------------------------------------------------- preprocessing


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """What the weights were trained and evaluated with, in jaxcls's dataset terms (None: not stated)."""

  source: str  # where it was read, for the log
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  image_size: tuple[int, int] | None = None
  eval_crop: str | None = None  # 'center' | 'resize'
  center_crop_fraction: float | None = None
  interpolation: str | None = None  # reported only: jaxcls resizes bilinearly

  def dataset_keys(self) -> dict[str, Any]:
    """The `config.dataset` keys this sets, in the order they are logged."""
    keys = ("mean", "std", "image_size", "eval_crop", "center_crop_fraction")
    return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def timm_preprocessing(config: Mapping[str, Any], source: str) -> Preprocessing | None:
  """The preprocessing of a timm `config.json` (its `pretrained_cfg`); None if it states none."""
  cfg = config.get("pretrained_cfg")
  if not isinstance(cfg, Mapping):
    return None
  size = cfg.get("input_size")
  image_size = (int(size[-2]), int(size[-1])) if isinstance(size, (list, tuple)) and len(size) == 3 else None
  mode = cfg.get("crop_mode", "center" if cfg.get("crop_pct") is not None else None)
  eval_crop = {"center": "center", "squash": "resize"}.get(mode)
  crop = cfg.get("crop_pct") if eval_crop == "center" else None
  floats = lambda v: tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else None
  return Preprocessing(
    source=source,
    mean=floats(cfg.get("mean")),
    std=floats(cfg.get("std")),
    image_size=image_size,
    eval_crop=eval_crop,
    center_crop_fraction=float(crop) if crop is not None else None,
    interpolation=cfg.get("interpolation"),
  )


def _torchvision_preprocessing(spec: Spec) -> Preprocessing:
  import inspect  # pylint: disable=g-import-not-at-top

  weights = _torchvision_weights(spec)
  transform = weights.transforms  # functools.partial(ImageClassification, crop_size=..., resize_size=...)
  settings = {
    k: p.default
    for k, p in inspect.signature(transform.func).parameters.items()
    if p.default is not inspect.Parameter.empty
  }
  settings.update(transform.keywords)
  crop = int(settings["crop_size"][0] if isinstance(settings["crop_size"], (list, tuple)) else settings["crop_size"])
  resize = settings["resize_size"]
  resize = int(resize[0] if isinstance(resize, (list, tuple)) else resize)
  return Preprocessing(
    source=f"torchvision's {type(weights).__name__}.{weights.name}.transforms",
    mean=tuple(map(float, settings["mean"])),
    std=tuple(map(float, settings["std"])),
    image_size=(crop, crop),
    eval_crop="center",
    center_crop_fraction=crop / resize,
    interpolation=str(getattr(settings.get("interpolation"), "value", "bilinear")),
  )


def _hub_config(spec: Spec) -> tuple[dict | None, str | None]:
  path = _hub_file(spec, CONFIG_FILE, required=False)
  return (_read_json(path, f"{spec.repo}'s {CONFIG_FILE}"), path) if path else (None, None)


def _file_config(spec: Spec) -> tuple[dict | None, str | None]:
  """A timm `config.json` beside a local .safetensors file (as `save_pretrained` writes them), if there is one."""
  path = os.path.join(os.path.dirname(os.path.abspath(spec.path)), CONFIG_FILE)
  if not os.path.isfile(path):
    return None, None
  config = _read_json(path, "the weights' config")
  # A jaxcls workdir's config.json is no timm config: only one with timm's keys counts.
  return (config, path) if "pretrained_cfg" in config or "architecture" in config else (None, None)


def read_preprocessing(init_from: str) -> Preprocessing | None:
  """The preprocessing the weights `init_from` names were trained with, if they ship it (no weights are read)."""
  spec = parse(init_from)
  if spec.kind == "torchvision":
    return _torchvision_preprocessing(spec)
  config, path = _hub_config(spec) if spec.kind == "hub" else _file_config(spec)
  return timm_preprocessing(config, f"{spec.text}'s {CONFIG_FILE}") if config is not None else None


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
  return a == b


def with_preprocessing(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the weights' preprocessing in every dataset key it still has at jaxcls's default.

  A key the config sets (to other than the default) is kept, with a warning when it differs from the weights'.
  Weights that ship no preprocessing get ImageNet's mean and std. Unchanged (the same object) when
  `config.init_from` names no pretrained weights.
  """
  if not handles(config.get("init_from")):
    return config
  pre = read_preprocessing(config.init_from)
  if pre is None:  # timm's and torchvision's ImageNet weights expect ImageNet's statistics, not the data's own
    logging.warning(
      "init_from %s ships no preprocessing config; unset dataset.mean/std become ImageNet's.", config.init_from
    )
    pre = Preprocessing(
      source="ImageNet's mean and std (the weights ship no config)", mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
  from jaxcls.config import base  # pylint: disable=g-import-not-at-top

  defaults = base.get_base_config().dataset
  out = ml_collections.ConfigDict(config.to_dict())
  applied, kept = [], []
  for key, value in pre.dataset_keys().items():
    current = out.dataset.get(key)
    if current is None or _same(current, defaults.get(key)):
      out.dataset[key] = value
      applied.append(f"dataset.{key}={value!r}")
    elif not _same(current, value):
      kept.append(f"dataset.{key}={_plain(current)!r} (the weights': {value!r})")
  logging.info(
    "init_from %s: preprocessing from %s: %s%s.",
    config.init_from,
    pre.source,
    ", ".join(applied) or "nothing applied",
    f"; kept from the config: {', '.join(kept)}" if kept else "",
  )
  if kept:
    logging.warning(
      "init_from: the config sets %s; the pretrained weights expect otherwise, which usually costs accuracy.",
      ", ".join(kept),
    )
  if pre.interpolation and pre.interpolation != "bilinear":
    logging.info(
      "init_from: the weights were evaluated with %s resizing; jaxcls resizes bilinearly.", pre.interpolation
    )
  return out


def _plain(value):
  return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


# ------------------------------------------------------------------------------------------------ loading


@dataclasses.dataclass(frozen=True)
class Weights:
  """Pretrained variables for a model, and what is known of them (for the transfer log and the config)."""

  description: str
  variables: dict  # {'params': ..., 'batch_stats': ...} of NumPy arrays, with the weights' own head
  layout: str
  num_classes: int
  loaded: int  # state_dict entries used
  skipped: tuple[str, ...]  # state_dict entries that hold no weights (num_batches_tracked)
  preprocessing: Preprocessing | None = None


_READABLE = {
  "timm": "resnet18-152, wide_resnet50_2, resnext50_32x4d, convnext_tiny/small/base, vit_*_patch16_224, "
  "vgg11-19(_bn) and mobilenetv2_100",
  "torchvision": "resnet18-152, wide_resnet50_2, resnext50_32x4d, convnext_tiny/small/base, vit_b_16, "
  "vgg11-19(_bn), mobilenet_v2 and alexnet",
}


def _check_architecture(
  spec: Spec, config: Mapping[str, Any] | None, model_name: str | None, library: str = "timm"
) -> None:
  """A ConfigError when the weights name an architecture other than config.model.name (before anything is read)."""
  if not config or not model_name:
    return
  if "architecture" not in config:
    if "architectures" in config or "model_type" in config:
      raise ConfigError(
        f"config.init_from={spec.text!r} is a transformers model ({config.get('model_type')!r}), "
        "whose layout jaxcls does not read; use the same weights from the timm/ organisation."
      )
    return
  from jaxcls import models  # pylint: disable=g-import-not-at-top

  architecture = str(config["architecture"])
  ours = layouts.ARCHITECTURES.get(architecture, architecture)
  if ours not in models.model_names():
    raise ConfigError(
      f"config.init_from={spec.text!r} holds a {library} {architecture!r}, which jaxcls has no model "
      f"for; jaxcls reads {library}'s {_READABLE[library]}."
    )
  if ours != model_name:
    raise ConfigError(
      f"config.init_from={spec.text!r} holds a {architecture!r} but config.model.name="
      f"{model_name!r}; set --config.model.name={ours}."
    )


def load(init_from: str, model, image_shape, model_name: str | None = None) -> Weights:
  """The weights `init_from` names, as variables of `model` (rebuilt with the weights' class count).

  `model` is the configured module (any class count); `model_name`, when given, is checked against the
  architecture a hub repo's config.json names.
  """
  spec = parse(init_from)
  config = None
  if spec.kind == "hub":
    config, _ = _hub_config(spec)
    _check_architecture(spec, config, model_name)  # before the weights are downloaded
    path = _hub_file(spec, WEIGHTS_FILE, required=True)
    commit = _commit_of(path)
    pinned = commit and spec.revision and spec.revision.startswith(commit)
    description = f"{spec.text}{f' (commit {commit})' if commit and not pinned else ''}"
    state = read_safetensors(path)
  elif spec.kind == "torchvision":
    _check_architecture(spec, {"architecture": spec.name}, model_name, "torchvision")
    state, description = _torchvision_state(spec)
  else:
    state = read_safetensors(spec.path)
    config, _ = _file_config(spec)
    description = f"weights file {spec.path}"
  _check_architecture(spec, config, model_name)
  preprocessing = (
    _torchvision_preprocessing(spec)
    if spec.kind == "torchvision"
    else timm_preprocessing(config, f"{spec.text}'s {CONFIG_FILE}")
    if config
    else None
  )
  num_classes = layouts.head_classes(model, state, image_shape)
  variables, layout, skipped = layouts.to_variables(
    model.clone(num_classes=num_classes), state, image_shape, f"The weights of {spec.text}"
  )
  loaded = len(state) - len(skipped)
  skipped_text = f"skipped {len(skipped)} num_batches_tracked counters" if skipped else "skipped none"
  logging.info(
    "init_from %s: %s layout, %d of %d tensors loaded into %s (%d-class head), %s.",
    description,
    layout,
    loaded,
    len(state),
    model_name or type(model).__name__,
    num_classes,
    skipped_text,
  )
  return Weights(
    description=f"{description}, {layout} layout",
    variables=variables,
    layout=layout,
    num_classes=num_classes,
    loaded=loaded,
    skipped=tuple(skipped),
    preprocessing=preprocessing,
  )
