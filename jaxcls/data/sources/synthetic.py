"""Random images with a learnable label, for benchmarks and tests that must not touch the disk or network.

Each class has a fixed coarse pattern (a 4x4 grid of brightness values, upscaled); an image is its class pattern
plus uniform noise, so a small model learns it within a few steps and a loss curve shows whether training works.
"""

import numpy as np

from jaxcls.core.errors import ConfigError
from jaxcls.data import resize
from jaxcls.data.base import SOURCES
from jaxcls.data.in_memory import ArrayDataset, from_arrays

_DEFAULT_SIZE = (32, 32)
_CHUNK = 256  # images generated at once: bounds memory for large image sizes


def make_split(
  seed: int, stream: int, num_examples: int, num_classes: int, size: tuple[int, int], channels: int
) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images [N, h, w, c], int32 labels [N]), a pure function of its arguments; classes are balanced."""
  height, width = size
  coarse = np.random.default_rng([seed, 0]).integers(0, 128, (num_classes, 4, 4, channels), dtype=np.uint8)
  templates = coarse[:, (np.arange(height) * 4) // height][:, :, (np.arange(width) * 4) // width]
  rng = np.random.default_rng([seed, stream])
  labels = rng.permutation(np.arange(num_examples) % num_classes).astype(np.int32)
  images = np.empty((num_examples, height, width, channels), np.uint8)
  for start in range(0, num_examples, _CHUNK):
    part = labels[start : start + _CHUNK]
    noise = rng.integers(0, 128, (len(part), height, width, channels), dtype=np.uint8)
    images[start : start + _CHUNK] = templates[part] + noise  # both < 128: no overflow
  return images, labels


@SOURCES.register("synthetic")
def load(config, *, process_index: int, process_count: int) -> ArrayDataset:
  """`num_train_examples` / `num_eval_examples` images of `image_size` (default 32x32), from `config.seed`."""
  ds = config.dataset
  size = resize.parse_image_size(ds.image_size) or _DEFAULT_SIZE
  for key in ("num_classes", "channels", "num_train_examples", "num_eval_examples"):
    if int(ds[key]) < 1:
      raise ConfigError(f"dataset.{key}={ds[key]} must be a positive integer for the synthetic source.")
  if config.seed < 0:
    raise ConfigError(f"seed={config.seed} must be >= 0 (it seeds numpy's generator).")
  args = (ds.num_classes, size, ds.channels)
  train_images, train_labels = make_split(config.seed, 1, ds.num_train_examples, *args)
  eval_images, eval_labels = make_split(config.seed, 2, ds.num_eval_examples, *args)
  return from_arrays(
    train_images,
    train_labels,
    eval_images,
    eval_labels,
    class_names=[f"class_{k}" for k in range(ds.num_classes)],
    process_index=process_index,
    process_count=process_count,
    source="synthetic",
  )
