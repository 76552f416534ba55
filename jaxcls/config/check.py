"""Catches misspelt config keys, in config files and in `--config.key=value` overrides, with one clear line.

ml_collections would raise a KeyError traceback deep in flag parsing; users need the key and its closest valid
neighbours instead. Keys under `model.` are the chosen model's own arguments: they may be absent from the base
config and are checked against the model's signature when it is built.
"""

import ast
import math
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from jaxcls.config import base as config_base
from jaxcls.config.eval_tta import check_eval_tta
from jaxcls.core import extensions
from jaxcls.core.errors import ConfigError
from jaxcls.core.registry import closest

OPEN_SECTIONS = ("model",)
# Built-in sources that never read dataset.decode_processes (in-memory arrays; tfds decodes in tf.data's threads):
# a value > 0 with them would silently do nothing. A user's own source may read it.
NO_DECODE_PROCESSES = ("digits", "arrays", "synthetic", "idx", "tfds")


def leaf_paths(config: Mapping[str, Any], prefix: str = "") -> list[str]:
  """Dotted paths of every non-dict value, e.g. 'optimizer.learning_rate'."""
  paths = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      paths += leaf_paths(value, path + ".")
    else:
      paths.append(path)
  return paths


def unknown_key_message(path: str, known: list[str]) -> str:
  """One line for a key jaxcls does not read, with the closest known keys (by whole path, then by last part)."""
  hint = closest(path, known)
  if not hint:
    hint = closest(path.split(".")[-1], known) or [p for p in known if p.endswith("." + path.split(".")[-1])]
  suggestion = f" Did you mean {' or '.join(repr(h) for h in hint[:3])}?" if hint else ""
  return f"Unknown config key {path!r}.{suggestion} (The keys are listed in jaxcls/config/base.py.)"


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects keys that jaxcls does not read, so a typo never silently does nothing, and unknown TTA names.

  First imports the modules `config.imports` names, so that names they register (a model, task, writer, ...)
  are known to every check and build that follows.
  """
  extensions.import_extensions(config)
  known = leaf_paths(config_base.get_base_config())
  known_set = set(known) | {s for p in known for s in _parents(p)}
  for path in leaf_paths(config):
    if path.split(".")[0] in OPEN_SECTIONS:
      continue
    if path not in known_set:
      raise ConfigError(unknown_key_message(path, known))
  check_ranges(config)
  if "eval_tta" in config:  # before any data loads or anything compiles
    check_eval_tta(config.eval_tta)


def _parents(path: str) -> list[str]:
  parts = path.split(".")
  return [".".join(parts[:i]) for i in range(1, len(parts))]


def split_argv(argv: list[str], config: ml_collections.ConfigDict) -> tuple[list[str], dict[str, Any]]:
  """Separates `--config.model.X=v` overrides for model arguments absent from the file.

  ml_collections cannot add keys from the command line; model arguments are open-ended, so these are
  applied after parsing. Any other override of a key the config lacks raises ConfigError here.
  Returns the argv to hand to absl and the {model_arg: value} to set afterwards.
  """
  kept, model_args = [], {}
  known = leaf_paths(config)
  known_set = set(known) | {s for p in known for s in _parents(p)}
  for arg in argv:
    if not arg.startswith("--config."):
      kept.append(arg)
      continue
    path, _, raw = arg[len("--config.") :].partition("=")
    if path in known_set:
      kept.append(arg)
    elif path.startswith("model.") and path.count(".") == 1 and raw:
      model_args[path.split(".", 1)[1]] = parse_value(raw)
    else:
      raise ConfigError(unknown_key_message(path, known))
  return kept, model_args


def parse_value(raw: str) -> Any:
  """A Python literal when it parses as one ('3', '(32, 64)', 'True'), else the string itself."""
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


# --- Ranges and types of the numeric keys: each with the meaning of its edge values, as config_base.py says. ---

# (test, the range in words); the words finish "must be ...".
_ANY = (lambda v: True, "a number")
_GE0 = (lambda v: v >= 0, ">= 0")
_GT0 = (lambda v: v > 0, "> 0")
_GE1 = (lambda v: v >= 1, ">= 1")
_UNIT_OPEN = (lambda v: 0 <= v < 1, "in [0, 1)")
_OPEN_UNIT = (lambda v: 0 < v < 1, "strictly between 0 and 1")
_HALF_OPEN_UNIT = (lambda v: 0 < v <= 1, "in (0, 1]")
_CADENCE = (lambda v: v >= 0, ">= 0 (0 = once per epoch)")
_CADENCE_OR_END = (lambda v: v >= -1, ">= -1 (0 = once per epoch, -1 = only at the end)")

# key -> (type: 'int' | 'float' | 'bool', optional (None allowed), (test, words), hint or '').
# Tuple-valued keys: the type and range apply to every element (`'ints'`, `'floats'`).
RANGES: dict[str, tuple[str, bool, tuple[Callable[[Any], bool], str], str]] = {
  "seed": ("int", False, _ANY, ""),
  "dataset.test_fraction": ("float", False, _OPEN_UNIT, "e.g. 0.2"),
  "dataset.val_fraction": ("float", False, _UNIT_OPEN, "0 = no 'val' split"),
  "dataset.split_seed": ("int", False, _ANY, ""),
  "dataset.shuffle_buffer": ("int", False, _GE1, "e.g. 16384"),
  "dataset.download": ("bool", False, _ANY, ""),
  "dataset.deterministic": ("bool", False, _ANY, ""),
  "dataset.idx_transpose": ("bool", False, _ANY, ""),
  "dataset.class_depth": ("int", False, (lambda v: v in (1, 2), "1 or 2"), "1 = class folders, 2 = coarse/fine"),
  "dataset.cache_limit_mb": ("float", False, _GE0, ""),
  "dataset.workers": ("int", False, _GE0, "0 = one per CPU core"),
  "dataset.decode_processes": ("int", False, _GE0, "0 = decode in threads, N = in N worker processes"),
  "dataset.max_image_pixels": ("int", False, _GE1, ""),
  "dataset.center_crop_fraction": ("float", False, _HALF_OPEN_UNIT, "e.g. 0.875"),
  "dataset.num_classes": ("int", False, _GE1, ""),
  "dataset.num_train_examples": ("int", False, _GE1, ""),
  "dataset.num_eval_examples": ("int", False, _GE1, ""),
  "dataset.channels": ("int", False, _GE0, "3 = RGB, 1 = grayscale, 0 = a folder's own (1 if all grayscale)"),
  "task.label_smoothing": ("float", False, _UNIT_OPEN, "0 = off"),
  "task.focal_gamma": ("float", False, _GE0, ""),
  "task.asl_gamma_neg": ("float", False, _GE0, ""),
  "task.asl_gamma_pos": ("float", False, _GE0, ""),
  "task.asl_clip": ("float", False, _UNIT_OPEN, ""),
  "task.level_weights": ("floats", False, _GE0, "() = all 1"),
  "optimizer.learning_rate": ("float", False, _GE0, "e.g. 0.1"),
  "optimizer.momentum": ("float", False, _UNIT_OPEN, "e.g. 0.9"),
  "optimizer.nesterov": ("bool", False, _ANY, ""),
  "optimizer.b1": ("float", False, _UNIT_OPEN, "e.g. 0.9"),
  "optimizer.b2": ("float", False, _UNIT_OPEN, "e.g. 0.999"),
  "optimizer.eps": ("float", False, _GT0, "e.g. 1e-8"),
  "optimizer.weight_decay": ("float", False, _GE0, "0 = off"),
  "optimizer.warmup_steps": ("int", False, _GE0, "0 = no warmup"),
  "optimizer.end_learning_rate_factor": ("float", False, _GE0, "0 = decay to zero"),
  "optimizer.step_boundaries": ("floats", False, _OPEN_UNIT, "fractions of training, e.g. (0.5, 0.75)"),
  "optimizer.step_factor": ("float", False, _GT0, "e.g. 0.1"),
  "optimizer.grad_clip_norm": ("float", False, _GE0, "0 = off"),
  "optimizer.backbone_lr_factor": ("float", False, _GE0, "0 = frozen backbone"),
  "optimizer.muon_momentum": ("float", False, _UNIT_OPEN, "e.g. 0.95"),
  "optimizer.muon_ns_steps": ("int", False, _GE1, "e.g. 5"),
  "optimizer.muon_fallback_learning_rate": ("float", True, _GE0, "None = learning_rate"),
  "optimizer.muon_normalize_weights": ("bool", False, _ANY, ""),
  "batch_size": ("int", False, _GE1, "the global batch, e.g. 128"),
  "eval_batch_size": ("int", True, _GE1, "None = batch_size"),
  "prefetch_to_device": ("int", False, (lambda v: v >= -1, ">= -1"), "0 = off, -1 = auto"),
  "num_epochs": ("float", False, _GE0, "ignored when num_train_steps > 0"),
  "num_train_steps": ("int", False, (lambda v: v >= -1, ">= -1"), "-1 or 0 = use num_epochs"),
  "log_every_steps": ("int", False, _CADENCE, ""),
  "eval_every_steps": ("int", False, _CADENCE_OR_END, ""),
  "checkpoint_every_steps": ("int", False, _CADENCE_OR_END, ""),
  "checkpoint_every_secs": ("float", False, _GE0, "0 = off"),
  "keep_checkpoints": ("int", False, _GE1, "the newest N are kept; at least the last one must be"),
  "async_checkpointing": ("bool", False, _ANY, ""),
  "ema_decay": ("float", False, _UNIT_OPEN, "0 = off, e.g. 0.999; 1 would freeze the average at the initial weights"),
  "fewshot.every_steps": ("int", False, _GE0, "0 = with every evaluation"),
  "fewshot.shots": ("ints", False, _GE1, "e.g. (1, 5, 10, 25)"),
  "fewshot.seeds": ("int", False, _GE1, ""),
  "fewshot.l2_reg": ("float", False, _GT0, "e.g. 1024"),
  "fewshot.knn_k": ("ints", False, _GE1, "e.g. (1, 10); () = none"),
  "fewshot.train_examples": ("int", False, _GE0, "0 = one epoch"),
  "fewshot.batch_size": ("int", False, _GE0, "0 = eval_batch_size"),
}


def _lookup(config, path: str) -> tuple[bool, Any]:
  node = config
  for part in path.split("."):
    if not isinstance(node, (Mapping, ml_collections.ConfigDict)) or part not in node:
      return False, None
    node = node[part]
  return True, node


def _has_type(value: Any, kind: str) -> bool:
  if isinstance(value, bool):
    return kind == "bool"
  if kind == "int":
    return isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu")
  if kind == "float":
    return isinstance(value, (int, float)) and math.isfinite(value)
  return False


_TYPE_WORDS = {"int": "an integer", "float": "a finite number", "bool": "True or False"}


def check_ranges(config) -> None:
  """A one-line ConfigError for a numeric key of the wrong type or outside its documented range (RANGES)."""
  for path, (kind, optional, (test, words), hint) in RANGES.items():
    found, value = _lookup(config, path)
    if not found or (optional and value is None):
      continue
    element = kind[:-1] if kind in ("ints", "floats") else kind
    values = value if kind != element else (value,)
    if kind != element and not isinstance(value, (tuple, list)):
      _range_error(path, value, f"a tuple of {_TYPE_WORDS[element].split(' ', 1)[1]}s", hint)
    for item in values:
      if not _has_type(item, element):
        range_words = f", {words}" if element != "bool" and test is not _ANY[0] else ""
        _range_error(
          path, value, _TYPE_WORDS[element] + ("" if kind == element else " in each element") + range_words, hint
        )
      if element != "bool" and not test(item):
        _range_error(path, value, words if kind == element else f"a tuple of numbers each {words}", hint)
  found, step = _lookup(config, "init_from_step")
  if found and not _is_step_choice(step):
    _range_error(
      "init_from_step", step, "a checkpoint step >= 0, -1 or 'latest', or 'best'", "restore.parse_step reads it"
    )
  if config.get("num_train_steps", -1) <= 0 and config.get("num_epochs", 1) <= 0:
    raise ConfigError(
      f"config.num_epochs={config['num_epochs']} and config.num_train_steps="
      f"{config['num_train_steps']} train for no step; set one of them to a positive value."
    )
  ds = config.get("dataset")
  if (
    ds is not None and "test_fraction" in ds and "val_fraction" in ds and ds["test_fraction"] + ds["val_fraction"] >= 1
  ):
    raise ConfigError(
      f"config.dataset.test_fraction={ds['test_fraction']} plus val_fraction={ds['val_fraction']} "
      "leave nothing to train on; their sum must be below 1."
    )
  if ds is not None and ds.get("decode_processes", 0) and ds.get("name") in NO_DECODE_PROCESSES:
    raise ConfigError(
      f"config.dataset.decode_processes={ds['decode_processes']} decodes image files of dataset.name='folder' in "
      f"worker processes, and the {ds['name']!r} source has none to decode there; set decode_processes=0."
    )


def _is_step_choice(value: Any) -> bool:
  """Whether `value` is what restore.parse_step accepts (checked here without importing jax)."""
  if isinstance(value, bool):
    return False
  if isinstance(value, int):
    return value >= -1
  return isinstance(value, str) and (value.strip().lower() in ("", "latest", "-1", "best") or value.strip().isdigit())


def _range_error(path: str, value: Any, words: str, hint: str):
  raise ConfigError(f"config.{path}={value!r} is not valid; it must be {words}" + (f" ({hint})." if hint else "."))
