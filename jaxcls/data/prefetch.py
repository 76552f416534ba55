"""Host-to-device prefetch: a background thread keeps the next batches already on the devices.

While the device runs step t, the thread pulls host batch t+1 (and up to `size` ahead) and starts its copy with
`parallel.to_global`, so the step does not wait for data when the host keeps up (double buffering at size 2).
Batches come out in order; an exception raised by the host iterator comes out at the position it happened, so
the loop sees exactly what it would see without prefetching. One thread calls `to_global`, in stream order, on
every process: multi-host array assembly stays in step across processes.
"""

import itertools
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxcls.core import parallel

_END = object()


class _Raised:
  """Carries an exception from the thread to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


class Prefetcher:
  """An iterator over global (sharded) batches, `size` ahead of its consumer; close() stops the thread.

  Use as a context manager, or call close(): the thread may hold up to `size` batches (plus the one it is
  preparing) that were read from the host iterator but never consumed. Training loops resume from a checkpoint
  step by restarting their stream, so these read-ahead batches never matter for exact resume.
  """

  def __init__(self, batches: Iterator[dict], mesh, size: int = 2, *, stacked: bool = False):
    if size < 1:
      raise ValueError(f"Prefetch size {size} must be >= 1.")
    self._batches = batches
    self._mesh = mesh
    self._stacked = stacked
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._done = False
    self._thread = threading.Thread(target=self._fill, name="jaxcls-prefetch", daemon=True)
    self._thread.start()

  def _put(self, item: Any) -> bool:
    """Blocks until there is room or close() is called; False when closed."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self) -> None:
    try:
      for batch in self._batches:
        if not self._put(parallel.to_global(batch, self._mesh, stacked=self._stacked)):
          return
      self._put(_END)
    except BaseException as e:  # pylint: disable=broad-except  (handed to the consumer, raised there)
      self._put(_Raised(e))
    finally:
      close = getattr(self._batches, "close", None)
      if close is not None:
        close()  # runs the generator's cleanup in the thread that ran it

  def __iter__(self) -> "Prefetcher":
    return self

  def __next__(self) -> dict:
    if self._done:
      raise StopIteration
    item = self._queue.get()
    if item is _END:
      self._done = True
      raise StopIteration
    if isinstance(item, _Raised):
      self._done = True
      raise item.error
    return item

  def close(self) -> None:
    """Stops the thread and drops the batches read ahead."""
    self._stop.set()
    self._done = True
    self._thread.join()

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def to_device(batches: Iterator[dict], mesh, size: int, *, stacked: bool = False) -> Iterator[dict]:
  """`batches` as global arrays: prefetched `size` ahead by a thread, or copied in line when `size` is 0."""
  if size <= 0:
    return _InLine(batches, mesh, stacked)
  return Prefetcher(batches, mesh, size, stacked=stacked)


class _InLine:
  """Copies each batch when it is asked for; close() closes the host iterator (as Prefetcher does)."""

  def __init__(self, batches, mesh, stacked: bool):
    self._batches, self._mesh, self._stacked = batches, mesh, stacked

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return parallel.to_global(next(self._batches), self._mesh, stacked=self._stacked)

  def close(self) -> None:
    close = getattr(self._batches, "close", None)
    if close is not None:
      close()


# A chunk of steps' batches is sent in one transfer when it fits in this many bytes (per process), up to
# MAX_STEPS_PER_CHUNK steps: small batches (digits, CIFAR at small batch sizes) then pay a transfer's fixed cost
# (~0.1 ms on a CPU, more with several arrays) once per chunk instead of once per step.
CHUNK_BYTES = 16 << 20
MAX_STEPS_PER_CHUNK = 64


def steps_per_chunk(batch: dict) -> int:
  """How many steps' batches of this size go in one transfer (1 for large batches)."""
  size = sum(np.asarray(v).nbytes for v in batch.values())
  return int(max(1, min(MAX_STEPS_PER_CHUNK, CHUNK_BYTES // max(size, 1))))


def chunks(batches: Iterator[dict], k: int, start_step: int, first: dict | None = None) -> Iterator[dict]:
  """Host batches stacked k at a time, [k, batch, ...], aligned to steps that are multiples of k.

  Step s is row s % k of chunk s // k, so the train step finds its batch from the state's step alone (no index is
  sent per step). The first chunk of a resumed run and the last one of a finite stream are padded with copies of
  a real batch; padded rows are never trained on. `first`: a batch already taken from `batches` (to size k).
  """
  pad = start_step % k
  rows: list[dict] = []
  try:
    for batch in itertools.chain([] if first is None else [first], batches):
      if pad:
        rows, pad = [batch] * pad, 0  # the steps before start_step in the first chunk: padding
      rows.append(batch)
      if len(rows) == k:
        yield _stack(rows)
        rows = []
    if rows:
      yield _stack(rows + [rows[-1]] * (k - len(rows)))
  finally:
    close = getattr(batches, "close", None)
    if close is not None:
      close()  # a streaming source's decode threads stop with the chunks


def _stack(rows: list[dict]) -> dict:
  return {name: np.stack([r[name] for r in rows]) for name in rows[0]}
