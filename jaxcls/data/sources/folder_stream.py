"""A `Dataset` that decodes a folder's images batch by batch in a thread or process pool: for folders too big for
memory.

Threads (the default) need no start-up and no copies; Pillow releases the GIL while it decodes and resizes, but
about a tenth of each image's time is Python that holds it, so threads stop scaling at several cores
(docs/input_pipeline.md). With `processes=N`, N spawned processes each decode a slice of every batch and hand it
back in shared memory (`shared_rows`): for hosts with many cores.

Determinism: epoch e's order is `np.random.default_rng([seed, e]).permutation(n)` (as in `ArrayDataset`), and the
random resized crop of the example at position i of global batch `step` draws from
`np.random.default_rng([seed, step, i, retry])`, so batch `step` is a pure function of (seed, step) and a resumed run
sees exactly the batches an uninterrupted one would, whatever the number of threads or processes.

A file that fails to decode here (a truncated JPEG the listing could not catch) is recorded in `skipped_files`; in
training the next file of the same epoch order takes its place, in evaluation its row is masked out.
"""

import collections
import concurrent.futures
import concurrent.futures.process
import math
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterator

import numpy as np
from absl import logging

from jaxcls.core.errors import DataError
from jaxcls.data import decode, shared_rows
from jaxcls.data.base import Batch, Dataset, DatasetInfo, check_stream_args

_PREFETCH_BATCHES = 2  # batches being decoded ahead of the one the trainer is using
_MAX_SUBSTITUTES = 16  # consecutive undecodable files tolerated before giving up on a batch row
# A thread job decodes a run of rows, not one: a future and its thread wake-ups per image cost 5-9% of the
# decode's CPU (docs/input_pipeline.md); a run of 8 amortises them and still leaves every thread work to do.
ROWS_PER_JOB = 8


class FolderStreamDataset(Dataset):
  """Batches decoded on the fly from (paths, labels); process p decodes only slice p of each global batch."""

  def __init__(
    self,
    info: DatasetInfo,
    train: tuple[list[str], np.ndarray],
    evaluation: tuple[list[str], np.ndarray],
    *,
    train_crop: decode.Crop,
    eval_crop: decode.Crop,
    max_pixels: int,
    workers: int,
    skipped_files: list,
    eval_group_names: np.ndarray | None = None,
    process_index: int = 0,
    process_count: int = 1,
    processes: int = 0,
  ):
    self.info = info
    self._eval_group_names = eval_group_names
    self.process_index, self.process_count = process_index, process_count
    self._train_paths, self._train_labels = list(train[0]), np.asarray(train[1], np.int32)
    self._eval_paths, self._eval_labels = list(evaluation[0]), np.asarray(evaluation[1], np.int32)
    self._train_crop, self._eval_crop = train_crop, eval_crop
    self._max_pixels, self._workers, self._processes = max_pixels, workers, processes
    self.skipped_files = skipped_files
    self._skipped_seen = {path for path, _ in skipped_files}
    self._lock = threading.Lock()
    self._pool = None

  def _executor(self) -> concurrent.futures.Executor:
    # Threads need no start-up and no pickling; processes (dataset.decode_processes) escape the GIL on many cores.
    if self._pool is None and self._processes:
      setup = (self._train_paths, self._eval_paths, self.info.image_shape[2], self._max_pixels)
      self._pool = concurrent.futures.ProcessPoolExecutor(
        self._processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker, initargs=setup
      )  # spawn, not fork: the parent runs JAX's threads
    elif self._pool is None:
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
        logging.warning("Skipped unreadable image %s (%s); %d skipped so far.", path, reason, len(self.skipped_files))

  def _decode(self, path, crop, rng):
    try:
      return decode.decode(path, crop, self.info.image_shape[2], self._max_pixels, rng)
    except decode.DecodeError as e:
      self._skip(path, str(e))
      return None

  def _train_example(self, order: np.ndarray, position: int, seed: int, step: int, slot: int):
    """(image, label) for row `slot` of global batch `step`, starting at `position` of the epoch order."""
    candidates = order[(position + np.arange(_MAX_SUBSTITUTES)) % len(order)]
    index, image, skipped = _first_decodable(
      self._train_paths, candidates, self._train_crop, self.info.image_shape[2], self._max_pixels, (seed, step, slot)
    )
    for path, reason in skipped:
      self._skip(path, reason)
    if index is None:
      raise _too_many_bad()
    return image, self._train_labels[index]

  def train_batches(self, global_batch_size: int, *, start_step: int = 0, seed: int = 0) -> Iterator[Batch]:
    """Checks the arguments at the call; decodes ahead in the pool, each epoch's order from (seed, epoch), an unreadable
    file replaced by the next one in that order."""
    check_stream_args(start_step, seed)
    local = self.local_batch_size(global_batch_size)
    steps = self.steps_per_epoch(global_batch_size)
    return self._prefetched(self._train_jobs(global_batch_size, local, steps, start_step, seed))

  def _train_jobs(self, global_batch_size, local, steps, start_step, seed):
    """Per step: a list of callables, each returning the (image, label) rows of part of this process's share."""
    epoch, order = -1, None
    step = start_step
    while True:
      if step // steps != epoch:
        epoch = step // steps
        order = np.random.default_rng([seed, epoch]).permutation(len(self._train_labels))
      first = (step % steps) * global_batch_size + self.process_index * local
      if self._processes:
        yield self._train_slices(order, first, seed, step, local)
      else:
        yield [  # bound as defaults: a job runs after this generator has moved on to later steps
          lambda o=order, p=first, s=step, rows=rows, slot=self.process_index * local: [
            self._train_example(o, p + r, seed, s, slot + r) for r in rows.tolist()
          ]
          for rows in job_rows(local, self._workers)
        ]
      step += 1

  def _train_slices(self, order, first, seed, step, local):
    """Process-pool jobs: one slice of the rows per worker; the labels are looked up here, not sent."""
    rows = (first + np.arange(local)[:, None] + np.arange(_MAX_SUBSTITUTES)) % len(order)
    candidates = order[rows]  # [local, _MAX_SUBSTITUTES] file indices, the epoch order's next files
    slots = self.process_index * local + np.arange(local)
    jobs = []
    for part in np.array_split(np.arange(local), min(self._processes, local)):

      def job(part=part):
        return self._pool.submit(_train_rows, candidates[part], self._train_crop, seed, step, slots[part])

      jobs.append(_Remote(job, self._train_labels, self._skip))
    return jobs

  def _prefetched(self, jobs) -> Iterator[Batch]:
    """Runs each step's jobs in the pool, keeping `_PREFETCH_BATCHES` steps in flight ahead of the consumer."""
    pool = self._executor()
    queue = collections.deque()
    try:
      for parts in jobs:
        queue.append([job.submit() if isinstance(job, _Remote) else pool.submit(job) for job in parts])
        if len(queue) <= _PREFETCH_BATCHES:
          continue
        yield self._collect(queue.popleft())
      while queue:
        yield self._collect(queue.popleft())
    finally:  # a stream closed early: the rows decoded ahead are dropped (worker processes' segments removed)
      for futures in queue:
        for future in futures:
          if isinstance(future, _Pending):
            future.discard()

  def _collect(self, futures) -> Batch:
    """The batch of one step's jobs, in order. A worker's rows go from its shared-memory segment straight into
    place (one copy); if any job fails, the segments of the step's other jobs are removed before the error rises."""
    parts = []
    try:
      for future in futures:
        parts.append(future.finish() if isinstance(future, _Pending) else future.result())
      sizes = [len(part) for part in parts]
      shape = self.info.image_shape
      images = np.zeros((sum(sizes),) + shape, np.uint8)
      labels = np.zeros((sum(sizes),) + self._eval_labels.shape[1:], np.int32)  # [b] or multi-hot [b, K]
      mask = np.zeros(sum(sizes), bool)
      for part, end in zip(parts, np.cumsum(sizes), strict=True):
        rows = slice(end - len(part), end)
        if isinstance(part, _Shipped):
          part.place(images[rows], labels[rows], mask[rows])
          continue
        for i, result in enumerate(part, start=rows.start):
          if result is not None:
            images[i], labels[i], mask[i] = result[0], result[1], True
    except BaseException:
      for part in parts:
        if isinstance(part, _Shipped):
          shared_rows.discard(part.rows)  # nothing to do for one already placed
      for future in futures[len(parts) :]:
        if isinstance(future, _Pending):
          future.discard()
      raise
    return {"image": images, "label": labels, "mask": mask}

  @property
  def eval_groups(self) -> np.ndarray | None:
    """The eval examples' groups, less the files found unreadable so far (their rows are masked out)."""
    if self._eval_group_names is None:
      return None
    keep = [path not in self._skipped_seen for path in self._eval_paths]
    return np.asarray(self._eval_group_names)[keep]

  def eval_batches(self, global_batch_size: int) -> Iterator[Batch]:
    """The eval files in order, decoded ahead in the pool; padding rows and unreadable files are masked out."""
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
      indices = np.arange(start, start + local)
      if self._processes:
        jobs = []
        for part in np.array_split(indices, min(self._processes, local)):

          def job(part=part):
            return self._pool.submit(_eval_rows, part[part < n], self._eval_crop, len(part))

          jobs.append(_Remote(job, self._eval_labels, self._skip))
        yield jobs
      else:
        yield [
          lambda part=indices[rows]: [self._eval_example(j) if j < n else None for j in part]
          for rows in job_rows(local, self._workers)
        ]

  def num_eval_batches(self, global_batch_size: int) -> int:
    """ceil(eval files / global batch) on every process; the last batches are padded."""
    self.local_batch_size(global_batch_size)
    return math.ceil(len(self._eval_labels) / global_batch_size)


def job_rows(rows: int, workers: int, per_job: int = ROWS_PER_JOB) -> list[np.ndarray]:
  """[0, rows) in consecutive runs, one pool job each: runs of about `per_job` rows, but at least one run per
  worker (while there are rows) so that no thread idles."""
  jobs = min(rows, max(workers, math.ceil(rows / per_job)))
  return np.array_split(np.arange(rows), jobs) if jobs > 0 else []


def _first_decodable(paths, candidates, crop, channels, max_pixels, key):
  """(index, image, [(path, reason)] skipped) of the first decodable file of `candidates` (index None if none is),
  drawing the crop of try t from `np.random.default_rng(key + (t,))`: the same pixels in a thread or a process."""
  skipped = []
  for tries, index in enumerate(candidates):
    rng = np.random.default_rng(list(key) + [tries])
    try:
      return index, decode.decode(paths[index], crop, channels, max_pixels, rng), skipped
    except decode.DecodeError as e:
      skipped.append((paths[index], str(e)))
  return None, None, skipped


def _too_many_bad() -> DataError:
  return DataError(
    f"{_MAX_SUBSTITUTES} images in a row failed to decode (see skipped_files.txt); check the folder for damaged files."
  )


# --- worker processes (processes=N): module-level so that spawn can pickle them ------------------------------

_WORKER = {}


def _start_worker(train_paths, eval_paths, channels, max_pixels):
  """Runs once in each worker: the file lists arrive once, each job then names files by index."""
  _WORKER.update(train=train_paths, eval=eval_paths, channels=channels, max_pixels=max_pixels)


def _train_rows(candidates, crop, seed, step, slots):
  """uint8 images [rows, h, w, c], the file index each row used, and the files skipped on the way."""
  w = _WORKER
  images, used, skipped = [], [], []
  for row, slot in enumerate(slots):
    index, image, bad = _first_decodable(
      w["train"], candidates[row], crop, w["channels"], w["max_pixels"], (seed, step, int(slot))
    )
    if index is None:
      return None, None, skipped + bad  # the parent records the skips, then raises
    images.append(image)
    used.append(index)
    skipped += bad
  return shared_rows.ship(images), np.asarray(used), skipped


def _eval_rows(indices, crop, rows):
  """Eval images of `indices` (padding rows after them), the index per row (-1: padding or unreadable), skips."""
  w = _WORKER
  images, used, skipped = [], [], []
  for index in indices:
    try:
      images.append(decode.decode(w["eval"][index], crop, w["channels"], w["max_pixels"], None))
      used.append(index)
    except decode.DecodeError as e:
      skipped.append((w["eval"][index], str(e)))
      used.append(-1)
  used += [-1] * (rows - len(indices))
  return (shared_rows.ship(images) if images else None), np.asarray(used), skipped


class _Remote:
  """A process-pool job not yet submitted: `submit()` starts it, `_Pending.finish()` hands its result over."""

  def __init__(self, submit, labels, skip):
    self._submit, self._labels, self._skip = submit, labels, skip

  def submit(self) -> "_Pending":
    return _Pending(self._submit(), self._labels, self._skip)


TRAINING_FIXES = "set dataset.decode_processes=0 to decode in threads, or use fewer processes if memory ran out"


def worker_died(error: BaseException, fixes: str = TRAINING_FIXES, during: str = "", spawned: bool = True) -> DataError:
  """The error for a decode worker process that died (killed for memory, a crash), naming the ways out (`fixes`)
  and, if given, what it was decoding (`during`). A `spawned` worker re-imports the main script, so when that is a
  script file (not `python -m`), the missing `if __name__ == "__main__":` guard is named too: without it, every
  worker dies at start-up."""
  where = f" while decoding {during}" if during else ""
  return DataError(f"A decode worker process died ({error}){where}; {fixes}{_script_hint() if spawned else ''}.")


def _script_hint() -> str:
  main = sys.modules.get("__main__")
  if getattr(main, "__spec__", None) is not None or not getattr(main, "__file__", None):
    return ""  # `python -m ...`, or an interactive session: nothing is re-imported
  return (
    f"; if {os.path.basename(main.__file__)} starts the run at import, put that under "
    '`if __name__ == "__main__":` (each worker process imports it again)'
  )


class _Shipped:
  """A worker job's result: `rows` (a shared-memory Ticket, an array, or None when no row decoded) holds the images
  of the entries of `used` that are >= 0, in order; `used` names the file of each batch row, -1 for an empty row."""

  def __init__(self, rows, used: np.ndarray, labels: np.ndarray):
    self.rows, self.used, self._labels = rows, used, labels

  def __len__(self) -> int:
    return len(self.used)

  def place(self, images: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> None:
    """Writes the rows into these views of the batch (as many rows as `used`), leaving empty rows masked out."""
    good = self.used >= 0
    if good.all():
      shared_rows.receive_into(self.rows, images)  # one copy, segment to batch
    elif good.any():
      images[good] = shared_rows.receive(self.rows)
    labels[good] = self._labels[self.used[good]]
    mask[good] = True


class _Pending:
  """A submitted worker job; `finish()` records its skips and gives its rows as a `_Shipped`, not yet copied."""

  def __init__(self, future, labels, skip):
    self._future, self._labels, self._skip = future, labels, skip

  def finish(self) -> _Shipped:
    try:
      images, used, skipped = self._future.result()
    except concurrent.futures.process.BrokenProcessPool as e:
      raise worker_died(e) from e
    for path, reason in skipped:
      self._skip(path, reason)
    if used is None:
      shared_rows.discard(images)  # None today: a job that gives up ships nothing
      raise _too_many_bad()
    return _Shipped(images, used, self._labels)

  def discard(self) -> None:
    """Drops the job: cancelled if it has not started, else waited for and its shared-memory rows removed."""
    if self._future.cancel():
      return
    try:
      images = self._future.result()[0]
    except Exception:  # pylint: disable=broad-except  (a job that failed has nothing to remove)
      return
    shared_rows.discard(images)
