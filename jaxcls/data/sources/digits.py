"""The default source: scikit-learn's bundled 8x8 digits, so the default config trains offline in seconds."""

import gzip
import importlib.util
import os

import numpy as np

from jaxcls.core.errors import DataError
from jaxcls.data import split
from jaxcls.data.base import SOURCES
from jaxcls.data.in_memory import ArrayDataset, from_arrays


@SOURCES.register("digits")
def load(config, *, process_index: int, process_count: int) -> ArrayDataset:
  """1,797 grayscale 8x8 digits (values 0..16 scaled to 0..255), with a fixed stratified held-out split."""
  pixels, target = read_digits()
  images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
  return from_arrays(
    *split.select(config.dataset, images, target),
    class_names=[str(k) for k in range(10)],
    image_size=config.dataset.image_size,
    process_index=process_index,
    process_count=process_count,
    source="digits",
  )


def read_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images [1797, 8, 8] float64 in 0..16, labels [1797]): `sklearn.datasets.load_digits()`'s arrays.

  Read straight from the CSV scikit-learn ships, without importing scikit-learn (about 1 s of the default run's
  start); `load_digits` is the fallback when the file is not where scikit-learn keeps it.
  """
  spec = importlib.util.find_spec("sklearn")
  if spec is None:
    raise DataError("dataset.name='digits' needs scikit-learn; install it with `pip install scikit-learn`.")
  csv = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
  if not os.path.isfile(csv):
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    return digits.images, digits.target
  with gzip.open(csv, "rt") as f:
    table = np.loadtxt(f, delimiter=",")
  return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
