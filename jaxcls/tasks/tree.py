"""A class tree for hierarchical classification: parsed from the config, a JSON file or nested folder names.

Every class (a leaf, in class-id order) has the same number of ancestors, so that the model can have one head per
level. Level 0 is the coarsest; the last level is the leaves themselves. `config.task.tree` takes one of:

- a sequence with one entry per class id, each the class's ancestor names from coarsest to finest, e.g.
  `(('animal', 'mammal'), ('animal', 'bird'), ('vehicle', 'car'))`; a bare string is one ancestor, so a two-level
  tree is just `('animal', 'animal', 'vehicle')`. A name may have only one parent.
- a mapping {child: parent} over names (a root maps to None or is simply not a key). Its leaves (names that are
  nobody's parent) are the class names, or the class ids written as strings ('0', '1', ...).
- a mapping {parent: [children]}, flat (`{'animal': ['mammal', 'bird'], 'mammal': ['cat', 'dog'], ...}`) or
  nested (`{'animal': {'mammal': ['cat', 'dog'], 'bird': ['owl']}}`): the form most tree files are written in,
  told from {child: parent} by its list (or mapping) values.
- the path of a JSON file holding any of the above (a list or an object).
- 'folders': the class names are 'coarse/fine' paths (nested folders), split on '/'.
"""

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxcls.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ClassTree:
  """Node names per level (coarsest first, last = leaves in class order) and each leaf's node index per level."""

  level_names: tuple[tuple[str, ...], ...]
  paths: tuple[tuple[int, ...], ...]

  @property
  def depth(self) -> int:
    """The number of levels, the leaves' included."""
    return len(self.level_names)

  @property
  def level_sizes(self) -> tuple[int, ...]:
    """The number of nodes at each level, coarsest first."""
    return tuple(len(names) for names in self.level_names)

  @property
  def num_leaves(self) -> int:
    """The number of leaves, which are the classes."""
    return len(self.paths)

  def path_array(self) -> np.ndarray:
    """[num_leaves, depth] int32: the node index of each leaf's ancestor at each level."""
    return np.asarray(self.paths, np.int32).reshape(self.num_leaves, self.depth)

  def distance(self, leaf_a: int, leaf_b: int) -> int:
    """Edges on the tree path between two leaves: twice the height of their lowest common ancestor."""
    a, b = self.paths[leaf_a], self.paths[leaf_b]
    common = next((level for level in range(self.depth) if a[level] != b[level]), self.depth)
    return 2 * (self.depth - common)


def from_ancestors(ancestors: Sequence[Sequence[str]], leaf_names: Sequence[str]) -> ClassTree:
  """The tree whose leaf i has ancestors `ancestors[i]` (names, coarsest first)."""
  chains = [(a,) if isinstance(a, str) else tuple(str(n) for n in a) for a in ancestors]
  if len(chains) != len(leaf_names):
    raise ConfigError(
      f"config.task.tree has {len(chains)} entries but the dataset has {len(leaf_names)} classes; "
      "give one ancestor path per class."
    )
  depths = sorted({len(c) for c in chains})
  if len(depths) > 1 or depths[0] == 0:
    raise ConfigError(
      f"config.task.tree gives classes {' and '.join(map(str, depths))} ancestors; every class "
      "needs the same number (at least one)."
    )
  parent_of: dict[tuple[int, str], str | None] = {}
  for chain in chains:
    for level, name in enumerate(chain):
      parent = chain[level - 1] if level else None
      if parent_of.setdefault((level, name), parent) != parent:
        raise ConfigError(
          f"config.task.tree gives {name!r} two parents ({parent_of[(level, name)]!r} and "
          f"{parent!r}); use distinct names for distinct nodes."
        )
  level_names = []
  for level in range(depths[0]):
    level_names.append(tuple(dict.fromkeys(c[level] for c in chains)))  # first-seen order
  index = [{name: i for i, name in enumerate(names)} for names in level_names]
  paths = tuple(tuple(index[level][c[level]] for level in range(depths[0])) + (leaf,) for leaf, c in enumerate(chains))
  return ClassTree(tuple(level_names) + (tuple(map(str, leaf_names)),), paths)


FORMS = (
  "{child: parent} (e.g. {'cat': 'mammal', 'mammal': 'animal'}) or {parent: [children]} (e.g. "
  "{'animal': ['mammal'], 'mammal': ['cat', 'dog']})"
)


def _is_children_form(mapping: Mapping) -> bool:
  return any(isinstance(v, Mapping) or (isinstance(v, Sequence) and not isinstance(v, str)) for v in mapping.values())


def parents_from_children(
  children: Mapping, parent: str | None = None, parents: dict[str, str | None] | None = None
) -> dict[str, str | None]:
  """{child: parent} from a flat or nested {parent: [children]} mapping (top-level keys are roots unless listed)."""
  parents = {} if parents is None else parents

  def link(child, to):
    child = str(child)
    if parents.setdefault(child, to) != to:
      raise ConfigError(
        f"config.task.tree gives {child!r} two parents ({parents[child]!r} and {to!r}); use "
        "distinct names for distinct nodes."
      )

  for name, kids in children.items():
    name = str(name)
    if parent is not None:
      link(name, parent)
    if kids is None:  # a node with no children: a leaf of a nested tree
      continue
    if isinstance(kids, Mapping):
      parents_from_children(kids, name, parents)
    elif isinstance(kids, Sequence) and not isinstance(kids, str):
      for kid in kids:
        if isinstance(kid, Mapping):
          parents_from_children({str(k): v for k, v in kid.items()}, name, parents)
        else:
          link(kid, name)
    else:
      raise ConfigError(
        f"config.task.tree maps {name!r} to {kids!r}, but other entries map to lists of children; "
        f"write the whole tree in one form: {FORMS}."
      )
  return parents


def from_parents(parents: Mapping[str, str | None], leaf_names: Sequence[str]) -> ClassTree:
  """The tree given as {child: parent}; its leaves are the class names or the class ids as strings."""
  parents = {str(k): (None if v in (None, "") else str(v)) for k, v in parents.items()}
  inner = {p for p in parents.values() if p is not None}
  leaves = set(parents) - inner
  names = [str(n) for n in leaf_names]
  ids = [str(i) for i in range(len(names))]
  order = names if leaves == set(names) else ids if leaves == set(ids) else None
  if order is None:
    missing = sorted(set(names) - leaves)[:5]
    extra = sorted(leaves - set(names))[:5]
    raise ConfigError(
      f"config.task.tree's leaves (names that are nobody's parent) must be the class names "
      f"{names[:5]}... (or ids '0'..'{len(names) - 1}'); missing {missing}, unknown {extra}. A "
      f"mapping is read as {FORMS}."
    )
  chains = []
  for leaf in order:
    chain, node = [], parents[leaf]
    while node is not None:
      if node in chain:
        raise ConfigError(
          f"config.task.tree has a cycle through {node!r}; each name needs one chain of parents ending at a root."
        )
      chain.append(node)
      node = parents.get(node)
    chains.append(tuple(reversed(chain)))
  return from_ancestors(chains, names)


def from_folders(relative_paths: Sequence[str]) -> ClassTree:
  """The tree implied by nested class folders 'coarse/fine' (leaf i is relative_paths[i], in class order)."""
  chains = []
  for path in relative_paths:
    parts = [p for p in str(path).replace(os.sep, "/").split("/") if p]
    if len(parts) < 2:
      raise ConfigError(
        f"Class {path!r} is not a nested folder 'coarse/fine'; a hierarchical folder dataset "
        "needs every class two or more folders deep: set dataset.class_depth=2 so that "
        "coarse/fine/ folders are the classes, or give config.task.tree."
      )
    chains.append(tuple("/".join(parts[: level + 1]) for level in range(len(parts) - 1)))
  return from_ancestors(chains, relative_paths)


def parse(value: Any, class_names: Sequence[str]) -> ClassTree:
  """A ClassTree from any form of `config.task.tree` described in the module docstring."""
  if isinstance(value, ClassTree):
    if value.num_leaves != len(class_names):
      raise ConfigError(
        f"config.task.tree has {value.num_leaves} leaves but the dataset has {len(class_names)} classes."
      )
    return value
  if isinstance(value, str):
    if value == "folders":
      return from_folders(class_names)
    if not os.path.isfile(value):
      raise ConfigError(f"config.task.tree={value!r} is neither 'folders' nor an existing JSON file.")
    try:
      with open(value, encoding="utf-8") as f:
        value = json.load(f)
    except (OSError, ValueError) as e:
      raise ConfigError(f"config.task.tree file {value!r} is not valid JSON ({e}).") from None
  if hasattr(value, "to_dict"):  # an ml_collections ConfigDict
    value = value.to_dict()
  if isinstance(value, Mapping):
    if _is_children_form(value):
      value = parents_from_children(value)
    return from_parents(value, class_names)
  if isinstance(value, Sequence) and not isinstance(value, str):
    return from_ancestors(value, class_names)
  raise ConfigError(
    f"config.task.tree={value!r} is not valid; use 'folders', a JSON file, a mapping {FORMS}, "
    "or one ancestor path per class."
  )
