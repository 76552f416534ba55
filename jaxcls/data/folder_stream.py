"""A `Dataset` that decodes a folder's images batch by batch in a thread pool: for folders too big for memory.

Determinism: epoch e's order is `np.random.default_rng([seed, e]).permutation(n)` (as in `ArrayDataset`), and the
random resized crop of the example at position i of global batch `step` draws from
`np.random.default_rng([seed, step, i, retry])`, so batch `step` is a pure function of (seed, step) and a resumed run
sees exactly the batches an uninterrupted one would, whatever the number of threads or processes.

A file that fails to decode here (a truncated JPEG the listing could not catch) is recorded in `skipped_files`; in
training the next file of the same epoch order takes its place, in evaluation its row is masked out.
"""

import collections
import concurrent.futures
import math
import threading
from typing import Iterator

import numpy as np
from absl import logging

from jaxcls.data import decode
from jaxcls.data.base import Batch, Dataset, DatasetInfo, check_stream_args
from jaxcls.errors import DataError

_PREFETCH_BATCHES = 2  # batches being decoded ahead of the one the trainer is using
_MAX_SUBSTITUTES = 16  # consecutive undecodable files tolerated before giving up on a batch row


class FolderStreamDataset(Dataset):
  """Batches decoded on the fly from (paths, labels); process p decodes only slice p of each global batch."""

  def __init__(self, info: DatasetInfo, train: tuple[list[str], np.ndarray], evaluation: tuple[list[str], np.ndarray],
               *, train_crop: decode.Crop, eval_crop: decode.Crop, max_pixels: int, workers: int,
               skipped_files: list, eval_group_names: np.ndarray | None = None, process_index: int = 0,
               process_count: int = 1):
    self.info = info
    self._eval_group_names = eval_group_names
    self.process_index, self.process_count = process_index, process_count
    self._train_paths, self._train_labels = list(train[0]), np.asarray(train[1], np.int32)
    self._eval_paths, self._eval_labels = list(evaluation[0]), np.asarray(evaluation[1], np.int32)
    self._train_crop, self._eval_crop = train_crop, eval_crop
    self._max_pixels, self._workers = max_pixels, workers
    self.skipped_files = skipped_files
    self._skipped_seen = {path for path, _ in skipped_files}
    self._lock = threading.Lock()
    self._pool = None

  def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
    # Pillow releases the GIL while decoding and resizing, so threads scale with cores and need no pickling.
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="jaxcls-decode")
    return self._pool

  def close(self) -> None:
    """Stops the decode threads (queued decodes are dropped); a later stream starts a new pool."""
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None

  def _skip(self, path: str, reason: str) -> None:
    with self._lock:
      if path not in self._skipped_seen:
        self._skipped_seen.add(path)
        self.skipped_files.append((path, reason))
        logging.warning("Skipped unreadable image %s (%s); %d skipped so far.", path, reason,
                        len(self.skipped_files))

  def _decode(self, path, crop, rng):
    try:
      return decode.decode(path, crop, self.info.image_shape[2], self._max_pixels, rng)
    except decode.DecodeError as e:
      self._skip(path, str(e))
      return None

  def _train_example(self, order: np.ndarray, position: int, seed: int, step: int, slot: int):
    """(image, label) for row `slot` of global batch `step`, starting at `position` of the epoch order."""
    for tries in range(_MAX_SUBSTITUTES):
      index = order[(position + tries) % len(order)]
      rng = np.random.default_rng([seed, step, slot, tries])
      image = self._decode(self._train_paths[index], self._train_crop, rng)
      if image is not None:
        return image, self._train_labels[index]
    raise DataError(f"{_MAX_SUBSTITUTES} images in a row failed to decode (see skipped_files.txt); check the "
                    "folder for damaged files.")

  def train_batches(self, global_batch_size: int, *, start_step: int = 0, seed: int = 0) -> Iterator[Batch]:
    check_stream_args(start_step, seed)
    local = self.local_batch_size(global_batch_size)
    steps = self.steps_per_epoch(global_batch_size)
    return self._prefetched(self._train_jobs(global_batch_size, local, steps, start_step, seed))

  def _train_jobs(self, global_batch_size, local, steps, start_step, seed):
    """Per step: a list of callables, one per row of this process's share, each returning (image, label)."""
    epoch, order = -1, None
    step = start_step
    while True:
      if step // steps != epoch:
        epoch = step // steps
        order = np.random.default_rng([seed, epoch]).permutation(len(self._train_labels))
      first = (step % steps) * global_batch_size + self.process_index * local
      yield [lambda o=order, p=first + r, s=step, slot=self.process_index * local + r:
             self._train_example(o, p, seed, s, slot) for r in range(local)]
      step += 1

  def _prefetched(self, jobs) -> Iterator[Batch]:
    """Runs each step's jobs in the pool, keeping `_PREFETCH_BATCHES` steps in flight ahead of the consumer."""
    pool = self._executor()
    queue = collections.deque()
    for rows in jobs:
      queue.append([pool.submit(job) for job in rows])
      if len(queue) <= _PREFETCH_BATCHES:
        continue
      yield self._collect(queue.popleft())
    while queue:
      yield self._collect(queue.popleft())

  def _collect(self, futures) -> Batch:
    results = [f.result() for f in futures]
    shape = self.info.image_shape
    images = np.zeros((len(results),) + shape, np.uint8)
    labels = np.zeros((len(results),) + self._eval_labels.shape[1:], np.int32)  # [b] or multi-hot [b, K]
    mask = np.zeros(len(results), bool)
    for i, result in enumerate(results):
      if result is not None:
        images[i], labels[i], mask[i] = result[0], result[1], True
    return {"image": images, "label": labels, "mask": mask}

  @property
  def eval_groups(self) -> np.ndarray | None:
    """The eval examples' groups, less the files found unreadable so far (their rows are masked out)."""
    if self._eval_group_names is None:
      return None
    keep = [path not in self._skipped_seen for path in self._eval_paths]
    return np.asarray(self._eval_group_names)[keep]

  def eval_batches(self, global_batch_size: int) -> Iterator[Batch]:
    local = self.local_batch_size(global_batch_size)
    total = self.num_eval_batches(global_batch_size)
    return self._prefetched(self._eval_jobs(global_batch_size, local, total))

  def _eval_example(self, index: int):
    image = self._decode(self._eval_paths[index], self._eval_crop, None)
    return None if image is None else (image, self._eval_labels[index])

  def _eval_jobs(self, global_batch_size, local, total):
    n = len(self._eval_labels)
    for i in range(total):
      start = i * global_batch_size + self.process_index * local
      yield [(lambda j=j: self._eval_example(j)) if j < n else (lambda: None) for j in range(start, start + local)]

  def num_eval_batches(self, global_batch_size: int) -> int:
    self.local_batch_size(global_batch_size)
    return math.ceil(len(self._eval_labels) / global_batch_size)
