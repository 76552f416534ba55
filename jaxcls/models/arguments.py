"""Model arguments typed by the model's signature: `--config.model.widths=abc` is one line naming the argument,
the value and the expected type, not a shape error deep in flax.

Only the standard library: `models.build` uses it, and the benchmark runs without ml_collections.
"""

import typing
from collections.abc import Mapping
from typing import Any

from jaxcls.core.errors import ConfigError


def check_model_arguments(model: str, options: Mapping[str, Any], factory: Any) -> None:
  """A ConfigError naming the argument, its value and the expected type when an option does not fit the model.

  Annotations read: int, float, bool, str, Sequence[...] / tuple[...] (a tuple or list, element by element),
  Optional / Union; anything else (Any, callables, dtypes) is not checked.
  """
  hints = _annotations(factory)
  for key, value in options.items():
    expected = hints.get(key)
    if expected is not None and not _fits(value, expected):
      raise ConfigError(
        f"config.model.{key}={value!r} is not valid for model {model!r}; it must be {_describe(expected)}."
      )


def _annotations(factory: Any) -> dict[str, Any]:
  target = getattr(factory, "func", factory)  # a functools.partial of a Module class
  try:
    return typing.get_type_hints(target)
  except Exception:  # pylint: disable=broad-except  (an annotation that cannot be resolved: not checked)
    return {}


def _fits(value: Any, expected: Any) -> bool:
  origin, args = typing.get_origin(expected), typing.get_args(expected)
  if expected is Any or expected is type(None):
    return expected is Any or value is None
  if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
    return any(_fits(value, a) for a in args)
  if expected is bool:
    return isinstance(value, bool)
  if expected is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if expected is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if expected is str:
    return isinstance(value, str)
  import collections.abc  # pylint: disable=g-import-not-at-top

  if origin in (tuple, list, collections.abc.Sequence):
    if not isinstance(value, (tuple, list)):
      return False
    if origin is tuple and args and args[-1] is not Ellipsis:
      return len(args) == len(value) and all(_fits(v, a) for v, a in zip(value, args))
    return not args or all(_fits(v, args[0]) for v in value)
  return True


def _describe(expected: Any, plural: bool = False) -> str:
  origin, args = typing.get_origin(expected), typing.get_args(expected)
  names = {
    bool: ("True or False", "booleans"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    type(None): ("None", "None"),
  }
  if expected in names:
    return names[expected][plural]
  if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
    return " or ".join(_describe(a, plural) for a in args)
  if origin is tuple and args and args[-1] is not Ellipsis:
    return f"a tuple of {len(args)} values ({', '.join(_describe(a) for a in args)})"
  if origin is not None and args:
    text = f"{'tuples' if plural else 'a tuple'} of {_describe(args[0], True)}"
    return text + (", e.g. (32, 64)" if args[0] is int and not plural else "")
  return getattr(expected, "__name__", str(expected))
