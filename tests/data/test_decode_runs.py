"""Decode pools take runs of files per job, not one file per future: every row lands in its place, unreadable
files are skipped wherever they fall in a run, and rows decoded in a worker process come back in shared memory
with no segment left behind."""

import concurrent.futures
import os
import threading

import numpy as np
import pytest
from PIL import Image

from jaxcls.data import decode, shared_rows
from jaxcls.data.sources import folder, folder_stream

needs_dev_shm = pytest.mark.skipif(not os.path.isdir(shared_rows.SHM_FOLDER), reason="no /dev/shm (not Linux)")
CROP = decode.Crop((12, 10), "center")


@pytest.mark.parametrize("rows, workers", [(64, 2), (64, 16), (7, 2), (3, 8), (1, 1), (100, 1)])
def test_runs_cover_every_row_once_in_order_and_keep_every_worker_busy(rows, workers):
  runs = folder_stream.job_rows(rows, workers)
  np.testing.assert_array_equal(np.concatenate(runs), np.arange(rows))  # every row once, in order: contiguous runs
  assert len(runs) == min(rows, max(workers, -(-rows // folder_stream.ROWS_PER_JOB)))
  assert all(len(run) >= 1 for run in runs)
  if rows >= workers * folder_stream.ROWS_PER_JOB:  # enough rows: runs of about ROWS_PER_JOB, not one per row
    assert max(len(run) for run in runs) <= folder_stream.ROWS_PER_JOB


def test_no_rows_make_no_runs():
  assert folder_stream.job_rows(0, 4) == []


@needs_dev_shm
def test_receive_into_copies_a_segment_straight_into_a_view_and_removes_it():
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8) for _ in range(3)]
  ticket = shared_rows.ship(images)
  batch = np.zeros((6, 4, 5, 3), np.uint8)
  shared_rows.receive_into(ticket, batch[2:5])
  np.testing.assert_array_equal(batch[2:5], np.stack(images))
  assert not batch[:2].any() and not batch[5:].any()
  assert not os.path.exists(os.path.join(shared_rows.SHM_FOLDER, ticket.name.lstrip("/")))
  shared_rows.receive_into(images[::-1], batch[:3])  # rows from a thread (a list) or the pipe (an array)
  np.testing.assert_array_equal(batch[:3], np.stack(images[::-1]))


def _files(root, count=40, bad=(0, 9, 10, 39)):
  """JPEGs and PNGs of varied sizes, some truncated (at the start, inside and at the ends of runs)."""
  rng = np.random.default_rng(1)
  os.makedirs(root, exist_ok=True)
  paths = []
  for i in range(count):
    h, w = rng.integers(8, 40, 2)
    path = str(root / f"{i:02d}.{'png' if i % 3 else 'jpg'}")
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    if i in bad:
      raw = open(path, "rb").read()
      open(path, "wb").write(raw[: len(raw) // 3])
    paths.append(path)
  return paths


def _one_by_one(paths):
  """What decode_all must return, decoding each file alone."""
  images, keep, skipped = [], [], []
  for i, path in enumerate(paths):
    try:
      images.append(decode.decode(path, CROP, 3, 1 << 30))
      keep.append(i)
    except decode.DecodeError as e:
      skipped.append((path, str(e)))
  return np.stack(images), np.asarray(keep), skipped


@pytest.mark.parametrize("workers", [1, 3])
def test_thread_runs_put_every_image_in_its_row_and_skip_the_bad_files_wherever_they_fall(tmp_path, workers):
  paths = _files(tmp_path)
  images, keep, skipped = folder.decode_all(paths, CROP, 3, 1 << 30, workers)
  want_images, want_keep, want_skipped = _one_by_one(paths)
  np.testing.assert_array_equal(keep, want_keep)
  np.testing.assert_array_equal(images, want_images)
  assert skipped == want_skipped and [p for p, _ in skipped] == [paths[i] for i in (0, 9, 10, 39)]
  everything, every_index, none = folder.decode_all(paths[1:9], CROP, 3, 1 << 30, workers)  # no bad file
  np.testing.assert_array_equal(everything, want_images[:8])
  assert every_index.tolist() == list(range(8)) and none == []


def test_nothing_to_decode_is_empty_arrays(tmp_path):
  images, keep, skipped = folder.decode_all([], CROP, 3, 1 << 30, 2)
  assert images.shape == (0, 12, 10, 3) and keep.shape == (0,) and skipped == []


@needs_dev_shm
@pytest.mark.slow  # spawns two worker processes
def test_process_runs_come_back_in_shared_memory_to_the_same_rows(tmp_path, monkeypatch):
  paths = _files(tmp_path)
  received = []
  original = shared_rows.receive_into

  def spy(rows, out):  # records what the parent got, then does the real work
    received.append(rows)
    return original(rows, out)

  monkeypatch.setattr(shared_rows, "receive_into", spy)
  images, keep, skipped = folder.decode_all(paths, CROP, 3, 1 << 30, 2, processes=2)
  want_images, want_keep, want_skipped = _one_by_one(paths)
  np.testing.assert_array_equal(keep, want_keep)
  np.testing.assert_array_equal(images, want_images)
  assert skipped == want_skipped
  tickets = [rows for rows in received if isinstance(rows, shared_rows.Ticket)]
  assert tickets and len(tickets) == len(received)  # every run of rows crossed in a segment, none in the pipe
  assert not [t for t in tickets if os.path.exists(os.path.join(shared_rows.SHM_FOLDER, t.name.lstrip("/")))]


@needs_dev_shm
def test_a_failed_run_cancels_the_rest_and_removes_the_segments_of_runs_that_finish_anyway():
  """decode_all's clean-up on an error: runs not started are cancelled, a running one is waited for and its
  segment removed, so /dev/shm keeps nothing of an aborted decode."""
  started, release = threading.Event(), threading.Event()
  made = []

  def running_run():
    started.set()
    release.wait(10)
    ticket = shared_rows.ship([np.ones((2, 2, 3), np.uint8)])
    made.append(ticket)
    return ticket, [None]

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    running = pool.submit(running_run)
    queued = pool.submit(lambda: pytest.fail("a queued run must be cancelled, not run"))
    started.wait(10)
    threading.Timer(0.2, release.set).start()
    folder._drop([running, queued])  # pylint: disable=protected-access
  assert queued.cancelled() and len(made) == 1
  assert not os.path.exists(os.path.join(shared_rows.SHM_FOLDER, made[0].name.lstrip("/")))
