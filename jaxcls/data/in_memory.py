"""A `Dataset` over arrays that fit in memory (or are memory-mapped): digits, arrays, synthetic, user arrays.

Batch `step` is a pure function of (seed, step): epoch e = step // steps_per_epoch is a permutation drawn from
`np.random.default_rng([seed, e])`, so a resumed run sees exactly the batches an uninterrupted run would. With
class-balanced sampling, epoch e is instead a draw with replacement from the same generator in which every class
present is equally likely, so resume stays exact.
"""

import copy
import math
from collections.abc import Iterator, Sequence

import numpy as np

from jaxcls.core.errors import ConfigError, DataError
from jaxcls.data import prepare, resize
from jaxcls.data.base import Batch, Dataset, DatasetInfo, check_stream_args

SAMPLINGS = ("uniform", "balanced")


class ArrayDataset(Dataset):
  """Batches from uint8 [N, H, W, C] images and int32 [N] labels; process p takes slice p of each global batch."""

  def __init__(
    self,
    info: DatasetInfo,
    train_arrays: tuple[np.ndarray, np.ndarray],
    eval_arrays: tuple[np.ndarray, np.ndarray],
    *,
    process_index: int = 0,
    process_count: int = 1,
  ):
    self.info = info
    self.process_index = process_index
    self.process_count = process_count
    self._train_images, self._train_labels = train_arrays
    self._eval_images, self._eval_labels = eval_arrays
    self.sampling = "uniform"

  def with_sampling(self, sampling: str) -> "ArrayDataset":
    """This dataset with 'uniform' (each example once per epoch) or 'balanced' (classes equally often) sampling.

    An epoch keeps its length (steps_per_epoch); balanced epochs repeat examples of rare classes and skip some
    of common ones.
    """
    if sampling not in SAMPLINGS:
      raise ConfigError(f"dataset.sampling={sampling!r} is not valid; use one of {', '.join(SAMPLINGS)}.")
    other = copy.copy(self)
    other.sampling = sampling
    return other

  def train_batches(self, global_batch_size: int, *, start_step: int = 0, seed: int = 0) -> Iterator[Batch]:
    """Checks the arguments at the call (the stream is lazy); epoch orders come from (seed, epoch) and `sampling`."""
    check_stream_args(start_step, seed)
    local = self.local_batch_size(global_batch_size)
    steps = self.steps_per_epoch(global_batch_size)
    return self._train_stream(global_batch_size, local, steps, start_step, seed)

  def _train_stream(self, global_batch_size, local, steps, start_step, seed):
    offset = self.process_index * local
    mask = np.ones(local, bool)
    epoch, order = -1, None
    step = start_step
    while True:
      if step // steps != epoch:
        epoch = step // steps
        order = self._epoch_order(np.random.default_rng([seed, epoch]), steps * global_batch_size)
      start = (step % steps) * global_batch_size + offset
      idx = order[start : start + local]
      yield {"image": _take(self._train_images, idx), "label": self._train_labels[idx], "mask": mask.copy()}
      step += 1

  def train_chunks(
    self, global_batch_size: int, steps_per_chunk: int, *, start_step: int = 0, seed: int = 0
  ) -> Iterator[Batch]:
    """`train_batches` stacked `steps_per_chunk` at a time (see `Dataset.train_chunks`), each chunk gathered
    from the arrays in one indexing: k batches of small images cost one gather, not k gathers and a stack.

    None for a subclass that makes its batches its own way (it overrides `train_batches`): those are stacked.
    """
    if type(self).train_batches is not ArrayDataset.train_batches:
      return None
    check_stream_args(start_step, seed)
    if steps_per_chunk < 1:
      raise ValueError(f"steps_per_chunk={steps_per_chunk} must be at least 1.")
    local = self.local_batch_size(global_batch_size)
    steps = self.steps_per_epoch(global_batch_size)
    return self._train_chunk_stream(global_batch_size, local, steps, steps_per_chunk, start_step, seed)

  def _train_chunk_stream(self, global_batch_size, local, steps, k, start_step, seed):
    offset = self.process_index * local
    orders: dict[int, np.ndarray] = {}  # the epoch orders a chunk spans (two at an epoch boundary)
    chunk = start_step // k
    while True:
      rows = []
      for step in range(chunk * k, chunk * k + k):
        step = max(step, start_step)  # a resumed run's first chunk: its first batch stands in for earlier steps
        epoch = step // steps
        if epoch not in orders:
          orders = {e: o for e, o in orders.items() if e == epoch - 1}
          orders[epoch] = self._epoch_order(np.random.default_rng([seed, epoch]), steps * global_batch_size)
        start = (step % steps) * global_batch_size + offset
        rows.append(orders[epoch][start : start + local])
      idx = np.concatenate(rows)
      labels = self._train_labels[idx]
      yield {
        "image": _take(self._train_images, idx).reshape((k, local) + self._train_images.shape[1:]),
        "label": labels.reshape((k, local) + labels.shape[1:]),
        "mask": np.ones((k, local), bool),
      }
      chunk += 1

  def _epoch_order(self, rng: np.random.Generator, size: int) -> np.ndarray:
    """Example indices of one epoch (at least `size` of them), the same on every process."""
    labels = self._train_labels
    if self.sampling == "uniform":
      return rng.permutation(len(labels))
    if labels.ndim != 1:
      raise ConfigError(
        "dataset.sampling='balanced' needs one label per image; these are multi-label sets "
        "(use task.class_weights or task.loss_type='asymmetric' for imbalanced labels)."
      )
    counts = np.bincount(labels)
    p = 1.0 / (np.count_nonzero(counts) * counts[labels])
    return rng.choice(len(labels), size=size, replace=True, p=p / p.sum())

  def eval_batches(self, global_batch_size: int) -> Iterator[Batch]:
    """The eval split in order, this process's slice of each global batch, padded to the local batch size."""
    local = self.local_batch_size(global_batch_size)
    return self._eval_stream(global_batch_size, local, self.num_eval_batches(global_batch_size))

  def _eval_stream(self, global_batch_size, local, total):
    n = len(self._eval_labels)
    for i in range(total):
      start = min(i * global_batch_size + self.process_index * local, n)
      stop = min(start + local, n)
      yield pad_batch(
        {
          "image": np.asarray(self._eval_images[start:stop]),
          "label": self._eval_labels[start:stop],
          "mask": np.ones(stop - start, bool),
        },
        local,
      )

  def num_eval_batches(self, global_batch_size: int) -> int:
    """ceil(eval examples / global batch) on every process; the last batches are padded."""
    self.local_batch_size(global_batch_size)
    return math.ceil(len(self._eval_labels) / global_batch_size)


def _take(images: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """images[idx]; a memory-mapped array is read in file order, which is much faster on disk."""
  if not isinstance(images, np.memmap):
    return images[idx]
  order = np.argsort(idx)
  out = np.empty((len(idx),) + images.shape[1:], images.dtype)
  out[order] = images[idx[order]]
  return out


def pad_batch(batch: Batch, size: int) -> Batch:
  """Pads a batch to `size` rows with zero images, label 0 and mask False."""
  rows = len(batch["label"])
  if rows == size:
    return batch
  pad = lambda a: np.concatenate([a, np.zeros((size - rows,) + a.shape[1:], a.dtype)])
  return {key: pad(np.asarray(value)) for key, value in batch.items()}


def from_arrays(
  train_images: np.ndarray,
  train_labels: np.ndarray,
  eval_images: np.ndarray,
  eval_labels: np.ndarray,
  *,
  class_names: Sequence[str] | None = None,
  image_size: Sequence[int] | None = None,
  process_index: int = 0,
  process_count: int = 1,
  source: str = "arrays",
) -> ArrayDataset:
  """A dataset from in-memory (or memory-mapped) arrays; the in-memory sources all end here.

  Images are [N, H, W] or [N, H, W, C], uint8 (or float in [0, 1], or ints in 0..255); labels are ints
  0..K-1. They are checked and converted once, resized once (Pillow, bilinear) when `image_size` differs from
  their size, and the normalisation constants are measured on the training images.
  """
  train_images = prepare.as_uint8_images(train_images, what=f"{source} training images")
  eval_images = prepare.as_uint8_images(eval_images, what=f"{source} eval images")
  train_labels = prepare.as_labels(train_labels, len(train_images), what=f"{source} training labels")
  eval_labels = prepare.as_labels(eval_labels, len(eval_images), what=f"{source} eval labels")
  if len(train_labels) == 0 or len(eval_labels) == 0:
    raise DataError(
      f"The {source} dataset has {len(train_labels)} training and {len(eval_labels)} eval examples; "
      "both splits need at least one."
    )
  if train_images.shape[1:] != eval_images.shape[1:]:
    raise DataError(
      f"The {source} training images are {train_images.shape[1:]} but the eval images are "
      f"{eval_images.shape[1:]}; both splits need the same image shape."
    )
  num_classes = prepare.check_labels(train_labels, eval_labels, class_names, what=source)
  if class_names is None:
    class_names = [str(k) for k in range(num_classes)]
  size = resize.parse_image_size(image_size)
  if size is not None:
    train_images = resize.resize_images(train_images, size)
    eval_images = resize.resize_images(eval_images, size)
  mean, std = prepare.channel_stats(train_images)
  info = DatasetInfo(
    num_classes=num_classes,
    class_names=tuple(class_names),
    image_shape=train_images.shape[1:],
    num_train=len(train_labels),
    num_eval=len(eval_labels),
    mean=mean,
    std=std,
    train_class_counts=tuple(class_counts(train_labels, num_classes)),
  )
  return ArrayDataset(
    info,
    (train_images, train_labels),
    (eval_images, eval_labels),
    process_index=process_index,
    process_count=process_count,
  )


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Examples per class; for multi-hot label sets, the positives per class."""
  if labels.ndim == 2:
    return labels.sum(0)
  return np.bincount(labels, minlength=num_classes)
