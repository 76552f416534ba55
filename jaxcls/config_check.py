"""Catches misspelt config keys, in config files and in `--config.key=value` overrides, with one clear line.

ml_collections would raise a KeyError traceback deep in flag parsing; users need the key and its closest valid
neighbours instead. Keys under `model.` are the chosen model's own arguments: they may be absent from the base
config and are checked against the model's signature when it is built.
"""

import ast
from typing import Any, Mapping

import ml_collections

from jaxcls import config_base
from jaxcls.errors import ConfigError
from jaxcls.registry import closest

OPEN_SECTIONS = ("model",)


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
  hint = closest(path, known)
  if not hint:
    hint = closest(path.split(".")[-1], known) or [p for p in known if p.endswith("." + path.split(".")[-1])]
  suggestion = f" Did you mean {' or '.join(repr(h) for h in hint[:3])}?" if hint else ""
  return f"Unknown config key {path!r}.{suggestion} (The keys are listed in jaxcls/config_base.py.)"


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects keys that jaxcls does not read, so a typo never silently does nothing, and unknown TTA names."""
  known = leaf_paths(config_base.get_base_config())
  known_set = set(known) | {s for p in known for s in _parents(p)}
  for path in leaf_paths(config):
    if path.split(".")[0] in OPEN_SECTIONS:
      continue
    if path not in known_set:
      raise ConfigError(unknown_key_message(path, known))
  if "eval_tta" in config:  # a bad name would otherwise surface only at the first evaluation
    from jaxcls import tta  # pylint: disable=g-import-not-at-top  (imports jax; flag parsing does not need it)
    tta.check(config.eval_tta)


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
    path, _, raw = arg[len("--config."):].partition("=")
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
