"""A name -> object registry, one per kind (models, datasets, tasks, augmentations, evaluators, writers).

A new entry is one decorator; an unknown name fails with the known names and the closest match. The public
decorators (`jaxcls.register_model` and the others) are `Registry.decorator`s of these registries, so a
researcher's module registers exactly as jaxcls's own modules do.
"""

import ast
import difflib
import functools
from collections.abc import Callable, Iterable
from typing import Any

from jaxcls.core.errors import ConfigError


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
  """The candidates most similar to `name`, best first (for 'did you mean' hints)."""
  return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
  """' Did you mean x?' when a close candidate exists, else ''."""
  matches = closest(name, candidates)
  if not matches:
    return ""
  return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"


def name_list(value) -> tuple[str, ...]:
  """Names picked in a config: a tuple, or 'a,b' / "('a', 'b')" / 'a' as a command line gives them."""
  names = value or ()
  if isinstance(names, str):
    try:
      names = ast.literal_eval(names)
    except (ValueError, SyntaxError):
      pass
  if isinstance(names, str):
    names = tuple(n.strip() for n in names.split(",") if n.strip())
  return tuple(str(n) for n in names)


class Registry:
  """Maps names to objects of one kind; filled by the `register` decorator."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, Any] = {}

  def register(self, name: str) -> Callable[[Any], Any]:
    """A decorator that files the object under `name`; a name taken by another object raises ConfigError.

    The same definition registered again (its module re-imported or reloaded, as in a notebook) replaces the old
    entry, so editing and reloading one's own module works; a different object under a taken name is refused,
    since silently shadowing a built-in would change what every config naming it trains.
    """
    if not isinstance(name, str) or not name:
      raise ConfigError(f"A {self.kind} needs a non-empty string name to register under, got {name!r}.")

    def decorate(obj):
      old = self._entries.get(name)
      if old is not None and old is not obj and _origin(old) != _origin(obj):
        raise ConfigError(
          f"{self.kind} {name!r} is already registered (by {_origin(old)[0]}); register "
          f"{_origin(obj)[1]} of {_origin(obj)[0]} under another name."
        )
      self._entries[name] = obj
      return obj

    return decorate

  def decorator(self, public_name: str, doc: str) -> Callable[[str], Callable[[Any], Any]]:
    """`register` under a public name with its own docstring (the contract of this kind), for `jaxcls.<name>`."""

    def register(name: str) -> Callable[[Any], Any]:
      return self.register(name)

    register.__name__ = register.__qualname__ = public_name
    register.__module__ = "jaxcls"
    register.__doc__ = doc
    return register

  def get(self, name: str) -> Any:
    """The object registered as `name`, or a ConfigError with a did-you-mean, the known names, how to add one's own."""
    if name not in self._entries:
      raise ConfigError(
        f"Unknown {self.kind} {name!r}.{did_you_mean(name, self.names())} "
        f"Known: {', '.join(self.names())}. (One of your own? Name the module that registers it in "
        "config.imports, e.g. --config.imports=my_module.)"
      )
    return self._entries[name]

  def names(self) -> list[str]:
    """The registered names, sorted, for listings and membership checks."""
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries


def _origin(obj: Any) -> tuple[str, str]:
  """(module, qualified name) of a registered object; a functools.partial is its function and fixed arguments."""
  if isinstance(obj, functools.partial):
    module, name = _origin(obj.func)
    return module, f"{name}(*{obj.args!r}, **{dict(sorted(obj.keywords.items()))!r})"
  return str(getattr(obj, "__module__", "?")), str(getattr(obj, "__qualname__", repr(obj)))
