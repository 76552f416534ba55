"""A name -> object registry, one per kind (models, datasets, tasks, augmentations).

A new entry is one decorator; an unknown name fails with the known names and the closest match.
"""

import ast
import difflib
from typing import Any, Callable, Iterable

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
    def decorate(obj):
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice.")
      self._entries[name] = obj
      return obj
    return decorate

  def get(self, name: str) -> Any:
    if name not in self._entries:
      raise ConfigError(
          f"Unknown {self.kind} {name!r}.{did_you_mean(name, self._entries)} "
          f"Known: {', '.join(sorted(self._entries))}.")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
