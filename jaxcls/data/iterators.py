"""Wraps a user's own batch iterators as a `Dataset`, checking every batch so mistakes fail with a clear message.

This is the escape hatch for data no source covers (a database, a custom decoder, a streaming service).
"""

from collections.abc import Callable, Iterable, Iterator, Mapping

import jax
import numpy as np

from jaxcls.core.errors import DataError
from jaxcls.data.base import Batch, Dataset, DatasetInfo, check_stream_args
from jaxcls.data.in_memory import pad_batch


def from_iterators(
  info: DatasetInfo,
  train_fn: Callable[[int], Iterator[Mapping]],
  eval_fn: Callable[[], Iterable[Mapping]],
  *,
  num_eval_batches: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Dataset:
  """A `Dataset` from two functions that yield this process's numpy batches.

  `train_fn(start_step)` yields training batches from global step `start_step` on, forever (or for as long as
  training runs); each is a dict with `image` uint8 [b, h, w, c] and integer `label` [b], where b is
  batch_size / process_count; `mask` is added when missing. Resuming calls it with the restored step, so yield
  the batches an uninterrupted run would see from there. `eval_fn()` yields the evaluation batches once; a
  short last batch (or a `mask` marking padding rows) is padded up to b. With several processes every process
  must yield the same number of eval batches: pass `num_eval_batches`, else it is counted by one pass.

  Example (one process; `x`, `y` uint8 [N, 32, 32, 3] images and int labels, `x_val`, `y_val` likewise):

    info = jaxcls.data.DatasetInfo(num_classes=2, class_names=("cat", "dog"), image_shape=(32, 32, 3),
                                   num_train=len(y), num_eval=len(y_val), mean=(0.5,), std=(0.25,))

    def train_fn(start_step):
      for step in itertools.count(start_step):  # batch `step` depends only on `step`: resume is exact
        idx = np.random.default_rng(step).choice(len(y), 128, replace=False)
        yield {"image": x[idx], "label": y[idx]}

    def eval_fn():
      for start in range(0, len(y_val), 128):
        yield {"image": x_val[start:start + 128], "label": y_val[start:start + 128]}

    dataset = jaxcls.data.from_iterators(info, train_fn, eval_fn)
    jaxcls.training.loop.train_and_evaluate(config, workdir, dataset=dataset)  # with config.batch_size = 128
  """
  if not isinstance(info, DatasetInfo):
    raise DataError(f"from_iterators needs a jaxcls.data.DatasetInfo, not {type(info).__name__}.")
  return IteratorDataset(
    info,
    train_fn,
    eval_fn,
    num_eval_batches=num_eval_batches,
    process_index=jax.process_index() if process_index is None else process_index,
    process_count=jax.process_count() if process_count is None else process_count,
  )


class IteratorDataset(Dataset):
  """A `Dataset` over user functions; see `from_iterators`."""

  def __init__(
    self, info: DatasetInfo, train_fn, eval_fn, *, num_eval_batches: int | None, process_index: int, process_count: int
  ):
    self.info = info
    self.process_index, self.process_count = process_index, process_count
    self._train_fn, self._eval_fn = train_fn, eval_fn
    self._num_eval_batches = num_eval_batches
    self._counted: dict[int, int] = {}

  def train_batches(self, global_batch_size: int, *, start_step: int = 0, seed: int = 0) -> Iterator[Batch]:
    """The user's `train_fn(start_step)` batches, checked; `seed` is unused, as the function owns its randomness."""
    del seed  # the user's function owns its randomness
    check_stream_args(start_step, 0)
    local = self.local_batch_size(global_batch_size)
    return self._train_stream(local, start_step)

  def _train_stream(self, local, start_step):
    for i, batch in enumerate(self._train_fn(start_step)):
      yield self._check(batch, local, f"train_fn batch {i}", exact=True)

  def eval_batches(self, global_batch_size: int) -> Iterator[Batch]:
    """The user's `eval_fn()` batches, checked and padded, then all-masked batches up to `num_eval_batches`."""
    local = self.local_batch_size(global_batch_size)
    return self._eval_stream(local, self.num_eval_batches(global_batch_size))

  def _eval_stream(self, local, total):
    count = 0
    for count, batch in enumerate(self._eval_fn(), start=1):
      if count > total:
        raise DataError(f"eval_fn yielded more than num_eval_batches={total} batches; pass the right count.")
      yield pad_batch(self._check(batch, local, f"eval_fn batch {count - 1}", exact=False), local)
    for _ in range(total - count):
      yield {
        "image": np.zeros((local,) + self.info.image_shape, np.uint8),
        "label": np.zeros(local, np.int32),
        "mask": np.zeros(local, bool),
      }

  def num_eval_batches(self, global_batch_size: int) -> int:
    """The count given to `from_iterators`, else the batches of one pass of `eval_fn()`, counted once per batch size."""
    self.local_batch_size(global_batch_size)
    if self._num_eval_batches is not None:
      return self._num_eval_batches
    if global_batch_size not in self._counted:
      self._counted[global_batch_size] = sum(1 for _ in self._eval_fn())
    return self._counted[global_batch_size]

  def _check(self, batch, local: int, where: str, *, exact: bool) -> Batch:
    """The batch as numpy arrays with a mask, or a DataError naming what is wrong."""
    if not isinstance(batch, Mapping) or "image" not in batch or "label" not in batch:
      raise DataError(f"{where} must be a dict with 'image' and 'label' arrays, got {type(batch).__name__}.")
    image, label = np.asarray(batch["image"]), np.asarray(batch["label"])
    rows = len(label) if label.ndim else 0
    if image.dtype != np.uint8:
      raise DataError(
        f"{where}: 'image' has dtype {image.dtype}; yield uint8 images (0..255), the device normalises them."
      )
    if image.shape != (rows,) + self.info.image_shape:
      raise DataError(
        f"{where}: 'image' has shape {image.shape} for {rows} labels; expected "
        f"[{rows}, {', '.join(map(str, self.info.image_shape))}] (info.image_shape)."
      )
    if label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
      raise DataError(
        f"{where}: 'label' has dtype {label.dtype} and shape {label.shape}; yield integer class ids of shape [batch]."
      )
    mask = np.ones(rows, bool) if batch.get("mask") is None else np.asarray(batch["mask"])
    if mask.shape != (rows,) or mask.dtype != np.bool_:
      raise DataError(f"{where}: 'mask' has dtype {mask.dtype} and shape {mask.shape}; yield bool [batch].")
    real = label[mask]  # padding rows may carry any label
    if len(real) and (real.min() < 0 or real.max() >= self.info.num_classes):
      raise DataError(
        f"{where}: labels span {real.min()}..{real.max()}; they must be 0.."
        f"{self.info.num_classes - 1} (info.num_classes)."
      )
    if (rows != local) if exact else not 0 < rows <= local:
      raise DataError(
        f"{where} has {rows} rows; expected {'' if exact else 'at most '}{local} (the global batch "
        f"size divided by {self.process_count} processes)."
      )
    return {"image": image, "label": label.astype(np.int32), "mask": mask}
