"""Datasets: named sources of process-local uint8 batches, plus `from_iterators` / `from_arrays` for own data.

`build(config)` picks the source `config.dataset.name` from `SOURCES`. Importing this package never imports
TensorFlow; only the `tfds` source does, when it is used.
"""

from jaxcls.data.base import SOURCES, Batch, Dataset, DatasetInfo
from jaxcls.data.build import build, override_info
from jaxcls.data.in_memory import ArrayDataset, from_arrays
from jaxcls.data.iterators import from_iterators

# Sources register themselves in SOURCES on import.
from jaxcls.data.sources import arrays as _arrays  # pylint: disable=unused-import
from jaxcls.data.sources import digits as _digits  # pylint: disable=unused-import
from jaxcls.data.sources import folder as _folder  # pylint: disable=unused-import
from jaxcls.data.sources import idx as _idx  # pylint: disable=unused-import
from jaxcls.data.sources import synthetic as _synthetic  # pylint: disable=unused-import
from jaxcls.data.sources import tfds_source as _tfds_source  # pylint: disable=unused-import

__all__ = ["SOURCES", "ArrayDataset", "Batch", "Dataset", "DatasetInfo", "build", "from_arrays", "from_iterators",
           "override_info"]
