"""The default source: scikit-learn's bundled 8x8 digits, so the default config trains offline in seconds."""

import numpy as np

from jaxcls.data import split
from jaxcls.data.base import SOURCES
from jaxcls.data.in_memory import ArrayDataset, from_arrays
from jaxcls.errors import DataError


@SOURCES.register("digits")
def load(config, *, process_index: int, process_count: int) -> ArrayDataset:
  """1,797 grayscale 8x8 digits (values 0..16 scaled to 0..255), with a fixed stratified held-out split."""
  try:
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError("dataset.name='digits' needs scikit-learn; install it with `pip install scikit-learn`.") from e
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return from_arrays(*split.select(config.dataset, images, digits.target),
                     class_names=[str(k) for k in range(10)], image_size=config.dataset.image_size,
                     process_index=process_index, process_count=process_count, source="digits")
