"""Host-to-device prefetch: order kept, exceptions in place, read-ahead bounded, thread stopped on close."""

import itertools
import threading
import time

import numpy as np
import pytest

from jaxcls.core import parallel
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


def _numbered(start, stop=None):
  """Host batches whose image value is their step number."""
  step = start
  while stop is None or step < stop:
    yield {"image": np.full((2, 1), step, np.uint8), "label": np.array([step, step])}
    step += 1


def test_chunks_align_steps_to_rows_and_pad_a_resumed_start():
  out = list(itertools.islice(prefetch.chunks(_numbered(5), 4, start_step=5), 3))
  assert [c["image"].shape for c in out] == [(4, 2, 1)] * 3
  # Step s sits at row s % 4: the first chunk covers steps 4..7, its row 0 (step 4, before the start) is padding.
  assert out[0]["image"][1:, 0, 0].tolist() == [5, 6, 7]
  assert out[1]["image"][:, 0, 0].tolist() == [8, 9, 10, 11]
  assert out[2]["label"][:, 1].tolist() == [12, 13, 14, 15]


def test_chunks_pad_the_end_of_a_finite_stream_and_close_it():
  source = _numbered(0, 6)
  out = list(prefetch.chunks(source, 4, start_step=0))
  assert [c["image"][:, 0, 0].tolist() for c in out] == [[0, 1, 2, 3], [4, 5, 5, 5]]
  with pytest.raises(StopIteration):
    next(source)


def test_first_batch_taken_to_size_the_chunks_is_kept():
  source = _numbered(0)
  first = next(source)
  out = next(prefetch.chunks(source, 3, start_step=0, first=first))
  assert out["image"][:, 0, 0].tolist() == [0, 1, 2]


def test_steps_per_chunk_sends_small_batches_together_and_large_ones_alone():
  small = {"image": np.zeros((16, 8, 8, 1), np.uint8), "label": np.zeros(16, np.int32)}
  large = {"image": np.zeros((256, 224, 224, 3), np.uint8)}
  assert prefetch.steps_per_chunk(small) == prefetch.MAX_STEPS_PER_CHUNK
  assert prefetch.steps_per_chunk(large) == 1


def test_stacked_chunk_is_split_along_the_batch_axis():
  mesh8 = parallel.make_mesh()
  chunk = {"image": np.arange(3 * 8, dtype=np.uint8).reshape(3, 8)}
  placed = parallel.to_global(chunk, mesh8, stacked=True)["image"]
  assert placed.shape == (3, 8) and placed.sharding.spec == parallel.chunk_sharded(mesh8).spec
  np.testing.assert_array_equal(np.asarray(placed), chunk["image"])
