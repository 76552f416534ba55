"""Model registry and `build`: turn `config.model` into a Flax module.

A registry entry is a callable returning a linen Module (a Module class, or a `functools.partial` of one that
fixes some fields). Its keyword arguments, apart from `num_classes`, `dtype` and the ones a partial fixes, are
the config's `model.*` keys, so adding a model never touches this file beyond one import. A model of one's own
registers from its own module with `jaxcls.register_model(name)` (this registry) and `config.imports`.
"""

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
from absl import logging

from jaxcls.core.errors import ConfigError
from jaxcls.core.registry import Registry, did_you_mean

MODELS = Registry("model")

# Supplied by `build` (or by flax itself), never by the config.
_RESERVED = ("num_classes", "dtype", "parent", "name")


def model_names() -> list[str]:
  """The registered model names, sorted (built-ins and those of config.imports modules imported so far)."""
  return MODELS.names()


def model_arguments(name: str) -> dict[str, Any]:
  """The config arguments model `name` accepts, with their defaults (inspect.Parameter.empty if required)."""
  factory = MODELS.get(name)
  fixed = getattr(factory, "keywords", {})  # set by a functools.partial
  params = inspect.signature(factory).parameters
  return {
    k: p.default
    for k, p in params.items()
    if k not in _RESERVED and k not in fixed and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
  }


def _check_arguments(name: str, given: Mapping[str, Any], valid: Mapping[str, Any]) -> None:
  listing = ", ".join(sorted(valid)) or "(none)"
  for key in sorted(given):
    if key in _RESERVED:
      raise ConfigError(
        f"Argument {key!r} of model {name!r} is set by jaxcls, not by the config; "
        f"remove it from config.model (valid: {listing})."
      )
    if key not in valid:
      raise ConfigError(f"Unknown argument {key!r} for model {name!r}.{did_you_mean(key, valid)} Valid: {listing}.")
  missing = [k for k, v in valid.items() if v is inspect.Parameter.empty and k not in given]
  if missing:
    raise ConfigError(f"Model {name!r} needs the argument(s) {', '.join(missing)} in config.model.")


def family(name: str) -> Any:
  """The Module class behind a registry name (resnet18 and resnet50 are both ResNet, vgg16_bn's subclasses
  vgg16's); None if not registered."""
  if name not in MODELS.names():
    return None
  factory = MODELS.get(name)
  return getattr(factory, "func", factory)


def switch_model(model_config: Any, file_model: Mapping[str, Any], given: set[str]) -> list[str]:
  """Drops the config file's model arguments that do not carry over to a model named on the command line.

  A config file's `model.*` arguments were chosen for its own model: `configs/default.py` gives simple_cnn
  `widths` and `dropout`, and `--config.model.name=resnet18` must not fail on `widths`. The rule, when the
  command line names another model than the file does:
  - another family (simple_cnn -> resnet18): every argument the file set is dropped; the new model starts from its
    own defaults (a `dropout` tuned for one architecture is not a choice made for another);
  - the same family (resnet18 -> resnet50, vgg11 -> vgg16_bn): the file's arguments stay where the new model takes
    them (a small-image `stem` is still wanted), and the others are dropped;
  - arguments given on the command line (`given`) always stay, so one the new model does not take is still the
    usual "Unknown argument" error when the model is built.
  The dropped arguments are named in one warning line. Edits `model_config` in place; returns the dropped keys.
  """
  old, new = file_model.get("name"), model_config.get("name")
  if not old or old == new or family(new) is None:  # an unknown name is refused as such when the model is built
    return []
  a, b = family(old), family(new)
  same_family = isinstance(a, type) and isinstance(b, type) and (issubclass(a, b) or issubclass(b, a))
  takes = model_arguments(new) if same_family else {}
  dropped = [
    key for key in file_model if key != "name" and key not in given and key in model_config and key not in takes
  ]
  if dropped:
    shown = ", ".join(f"{key}={_to_tuples(model_config[key])!r}" for key in dropped)
    why = "arguments it does not take" if same_family else f"set for {old}, another model family"
    logging.warning(
      "config.model.name=%s replaces the config file's %s: its model arguments %s are dropped (%s); "
      "give them on the command line to keep them.",
      new,
      old,
      shown,
      why,
    )
    for key in dropped:
      del model_config[key]
  return dropped


def _to_tuples(value: Any) -> Any:
  """Lists (from JSON or command-line overrides) become tuples: module fields must be hashable."""
  if isinstance(value, (list, tuple)):
    return tuple(_to_tuples(v) for v in value)
  return value


def build(model_config: Mapping[str, Any], num_classes: int, dtype: Any = "float32") -> nn.Module:
  """The module named by `model_config['name']`, configured by the other keys; bad keys raise ConfigError."""
  options = {k: _to_tuples(v) for k, v in model_config.items()}
  name = options.pop("name", None)
  if not name:
    raise ConfigError(f"config.model.name is missing; choose one of: {', '.join(model_names())}.")
  factory: Callable[..., nn.Module] = MODELS.get(name)
  _check_arguments(name, options, model_arguments(name))
  arguments.check_model_arguments(name, options, factory)  # types from the signature: widths='abc' -> one line
  return factory(num_classes=num_classes, dtype=layers.compute_dtype(dtype), **options)


# Importing a family registers it; they import MODELS from here, so these come last.
from jaxcls.models import (  # noqa: E402,F401  (arguments and layers are used above; the rest register)
  airbench,
  alexnet,
  arguments,
  convnext,
  layers,
  lenet,
  mobilenet,
  resnet,
  simple_cnn,
  vgg,
  vit,
)
