"""Host-to-device prefetch: a background thread keeps the next batches already on the devices.

While the device runs step t, the thread pulls host batch t+1 (and up to `size` ahead) and starts its copy with
`parallel.to_global`, so the step does not wait for data when the host keeps up (double buffering at size 2).
Batches come out in order; an exception raised by the host iterator comes out at the position it happened, so
the loop sees exactly what it would see without prefetching. One thread calls `to_global`, in stream order, on
every process: multi-host array assembly stays in step across processes.
"""

import queue
import threading
from typing import Any, Iterator

from jaxcls import parallel

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

  def __init__(self, batches: Iterator[dict], mesh, size: int = 2):
    if size < 1:
      raise ValueError(f"Prefetch size {size} must be >= 1.")
    self._batches = batches
    self._mesh = mesh
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
        if not self._put(parallel.to_global(batch, self._mesh)):
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


def to_device(batches: Iterator[dict], mesh, size: int) -> Iterator[dict]:
  """`batches` as global arrays: prefetched `size` ahead by a thread, or copied in line when `size` is 0."""
  if size <= 0:
    return _in_line(batches, mesh)
  return Prefetcher(batches, mesh, size)


def _in_line(batches, mesh):
  for batch in batches:
    yield parallel.to_global(batch, mesh)
