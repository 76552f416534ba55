"""Datasets: named sources of process-local uint8 batches, plus `from_arrays` / `from_iterators` for own data.

`build(config)` picks the source `config.dataset.name` from `SOURCES`. Importing this package is cheap: no jax,
TensorFlow or source module is imported (each built-in source is imported when `SOURCES` first looks it up, the
`tfds` source imports TensorFlow only when it is used, and `from_iterators`, which needs jax, on first access),
so a command such as predict can decode images while jax is still importing.
"""

import importlib

from jaxcls.data.base import SOURCES, Batch, Dataset, DatasetInfo
from jaxcls.data.build import build, override_info
from jaxcls.data.in_memory import ArrayDataset, from_arrays

_LAZY = {"from_iterators": "jaxcls.data.iterators"}  # public name -> the module that defines it (imports jax)


def __getattr__(name: str):
  """`jaxcls.data.from_iterators` imported on first access (its module imports jax)."""
  if name in _LAZY:
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'jaxcls.data' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_LAZY))


__all__ = [
  "SOURCES",
  "ArrayDataset",
  "Batch",
  "Dataset",
  "DatasetInfo",
  "build",
  "from_arrays",
  "from_iterators",
  "override_info",
]
