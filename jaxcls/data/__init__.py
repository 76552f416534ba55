"""Datasets: named sources of process-local uint8 batches, plus `from_iterators` / `from_arrays` for own data.

`build(config)` picks the source `config.dataset.name` from `SOURCES`. Importing this package never imports
TensorFlow; only the `tfds` source does, when it is used.
"""

from jaxcls.data.base import SOURCES, Batch, Dataset, DatasetInfo
from jaxcls.data.build import build, override_info
from jaxcls.data.in_memory import ArrayDataset, from_arrays
from jaxcls.data.iterators import from_iterators

# Sources register themselves in SOURCES on import.
from jaxcls.data.sources import arrays as _arrays  # noqa: F401
from jaxcls.data.sources import digits as _digits  # noqa: F401
from jaxcls.data.sources import folder as _folder  # noqa: F401
from jaxcls.data.sources import idx as _idx  # noqa: F401
from jaxcls.data.sources import synthetic as _synthetic  # noqa: F401
from jaxcls.data.sources import tfds_source as _tfds_source  # noqa: F401

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
