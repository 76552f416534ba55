"""Host-to-device prefetch: order kept, exceptions in place, read-ahead bounded, thread stopped on close."""

import threading
import time

import numpy as np
import pytest

from jaxcls import parallel
from jaxcls.data import prefetch


def _batches(n, pulled=None, fail_at=None):
  for i in range(n):
    if i == fail_at:
      raise KeyError(f"batch {i}")
    if pulled is not None:
      pulled.append(i)
    yield {"image": np.full((8, 2, 2, 1), i, np.uint8), "label": np.full(8, i, np.int32)}


@pytest.mark.parametrize("size", [0, 1, 2, 3])
def test_batches_arrive_in_order_as_global_arrays(size):
  mesh = parallel.make_mesh()
  out = list(prefetch.to_device(_batches(6), mesh, size))
  assert [int(b["label"][0]) for b in out] == list(range(6))
  assert all(len(b["image"].sharding.device_set) == 8 for b in out)


def test_an_error_comes_out_where_it_happened():
  batches = prefetch.to_device(_batches(6, fail_at=3), parallel.make_mesh(), 2)
  assert [int(next(batches)["label"][0]) for _ in range(3)] == [0, 1, 2]
  with pytest.raises(KeyError, match="batch 3"):
    next(batches)
  with pytest.raises(StopIteration):
    next(batches)


def test_read_ahead_is_bounded_and_close_stops_the_thread():
  pulled = []
  batches = prefetch.Prefetcher(_batches(1000, pulled), parallel.make_mesh(), size=2)
  next(batches)
  time.sleep(0.5)
  assert len(pulled) <= 1 + 2 + 1  # consumed, queued, and the one waiting for room
  batches.close()
  assert not any(t.name == "jaxcls-prefetch" and t.is_alive() for t in threading.enumerate())
  with pytest.raises(StopIteration):
    next(batches)


def test_waiting_is_hidden_when_the_host_keeps_up():
  def slow():
    for batch in _batches(5):
      time.sleep(0.1)
      yield batch
  batches = prefetch.to_device(slow(), parallel.make_mesh(), 2)
  next(batches)
  time.sleep(0.4)  # the "step": the thread prepares the next batches meanwhile
  t0 = time.perf_counter()
  next(batches), next(batches)
  assert time.perf_counter() - t0 < 0.15  # 0.2 s without prefetching
  batches.close()
