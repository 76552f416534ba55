"""Decode workers hand their rows over in shared memory: the same pixels, no segment left behind, and the pipe
where /dev/shm has no room."""

import itertools
import os
import pickle

import numpy as np
import pytest
from conftest import folder_config
from PIL import Image

from jaxcls import data
from jaxcls.core.errors import DataError
from jaxcls.data import shared_rows
from jaxcls.data.sources import folder_stream

needs_dev_shm = pytest.mark.skipif(not os.path.isdir(shared_rows.SHM_FOLDER), reason="no /dev/shm (not Linux)")


def rows(count=3, shape=(5, 7, 3), seed=0) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]


def segment_exists(ticket: shared_rows.Ticket) -> bool:
  return os.path.exists(os.path.join(shared_rows.SHM_FOLDER, ticket.name.lstrip("/")))


@needs_dev_shm
def test_rows_cross_in_a_segment_that_receive_removes():
  images = rows()
  ticket = shared_rows.ship(images)
  assert isinstance(ticket, shared_rows.Ticket) and ticket.shape == (3, 5, 7, 3)
  assert len(pickle.dumps(ticket)) < 200  # what crosses the pipe: a name and a shape
  assert segment_exists(ticket)
  received = shared_rows.receive(ticket)
  np.testing.assert_array_equal(received, np.stack(images))
  assert received.flags.owndata and not segment_exists(ticket)


def test_without_room_the_rows_go_through_the_pipe_as_an_array():
  images = rows()
  shipped = shared_rows.ship(images, room=lambda nbytes: False)
  assert isinstance(shipped, np.ndarray)
  np.testing.assert_array_equal(shared_rows.receive(shipped), np.stack(images))


def test_room_needs_the_headroom_and_an_existing_folder(tmp_path):
  stats = os.statvfs(tmp_path)
  free = stats.f_bavail * stats.f_frsize
  assert shared_rows.has_room(1 << 20, str(tmp_path)) == (free >= shared_rows.HEADROOM * (1 << 20) + (16 << 20))
  assert not shared_rows.has_room(free, str(tmp_path))  # four times the free space is never there
  assert not shared_rows.has_room(1, str(tmp_path / "missing"))


@needs_dev_shm
def test_discard_removes_an_unread_segment_once():
  ticket = shared_rows.ship(rows())
  shared_rows.discard(ticket)
  assert not segment_exists(ticket)
  shared_rows.discard(ticket)  # already gone: nothing to do
  shared_rows.discard(np.zeros((1, 2, 2, 3), np.uint8))  # rows that came through the pipe: nothing to remove


@needs_dev_shm
@pytest.mark.slow  # spawns two worker processes
def test_a_stream_closed_with_rows_in_flight_leaves_no_segment(tmp_path, monkeypatch):
  """Two worker processes decode ahead; the stream is closed after two batches: every segment the workers made is
  received or discarded, and none is left in /dev/shm."""
  photo = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
  for i in range(24):
    os.makedirs(tmp_path / f"c{i % 3}", exist_ok=True)
    Image.fromarray(np.roll(photo, i, axis=1)).save(tmp_path / f"c{i % 3}" / f"{i}.jpg", quality=90)
  config = folder_config(tmp_path, image_size=(16, 16), cache="none", train_crop="random_resized", test_fraction=0.25)
  config.dataset.decode_processes = 2
  seen = []
  for name in ("receive", "receive_into", "discard"):
    original = getattr(shared_rows, name)

    def spy(tickets, *rest, original=original):  # records what the parent got, then does the real work
      seen.append(tickets)
      return original(tickets, *rest)

    monkeypatch.setattr(shared_rows, name, spy)
  dataset = data.build(config, process_index=0, process_count=1)
  assert isinstance(dataset, folder_stream.FolderStreamDataset)
  try:
    stream = dataset.train_batches(4, start_step=0, seed=0)
    batches = list(itertools.islice(stream, 2))
    stream.close()
  finally:
    dataset.close()
  assert all(batch["image"].shape == (4, 16, 16, 3) for batch in batches)
  tickets = [t for t in seen if isinstance(t, shared_rows.Ticket)]
  assert len(tickets) >= 2 * 2 + 2  # 2 batches received from 2 workers, and rows decoded ahead discarded
  assert not [t for t in tickets if segment_exists(t)]


def _stream_of_photos(root, count=28):
  """A folder stream (cache none, random crops) over `count` small JPEGs, all in training but four."""
  photo = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
  for i in range(count):
    os.makedirs(root / f"c{i % 2}", exist_ok=True)
    Image.fromarray(np.roll(photo, i, axis=1)).save(root / f"c{i % 2}" / f"{i}.jpg", quality=90)
  config = folder_config(root, image_size=(16, 16), cache="none", train_crop="random_resized", test_fraction=4 / count)
  return config


def _truncate(paths):
  for path in sorted(paths):
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 3])  # the listing has passed: only the decode finds out


def _break_rows(dataset, rows, seed):
  """Truncates every file that training rows `rows` of step 0 could use (each row's own and its substitutes)."""
  order = np.random.default_rng([seed, 0]).permutation(len(dataset._train_paths))  # pylint: disable=protected-access
  positions = {(r + k) % len(order) for r in rows for k in range(folder_stream._MAX_SUBSTITUTES)}  # pylint: disable=protected-access
  broken = {dataset._train_paths[order[p]] for p in positions}  # pylint: disable=protected-access
  _truncate(broken)
  return broken


def test_a_row_with_no_decodable_substitute_stops_the_stream_with_a_data_error(tmp_path):
  config = _stream_of_photos(tmp_path)
  dataset = data.build(config, process_index=0, process_count=1)
  broken = _break_rows(dataset, [1], seed=3)
  try:
    with pytest.raises(DataError, match="16 images in a row failed to decode.*check the folder for damaged files"):
      next(dataset.train_batches(4, start_step=0, seed=3))
  finally:
    dataset.close()
  skipped = {path for path, _ in dataset.skipped_files}
  assert len(skipped) >= folder_stream._MAX_SUBSTITUTES and skipped <= broken  # pylint: disable=protected-access


@needs_dev_shm
@pytest.mark.slow  # spawns two worker processes
@pytest.mark.parametrize("broken_rows", [[0, 1], [2, 3]], ids=["first_job_fails", "second_job_fails"])
def test_a_batch_whose_job_gives_up_leaves_no_segment(tmp_path, monkeypatch, broken_rows):
  """Step 0's two worker jobs decode rows 0-1 and 2-3; one of them finds no decodable file: the error rises, and
  the rows the other job (and the steps decoded ahead) shipped are removed from /dev/shm, not left behind."""
  config = _stream_of_photos(tmp_path)
  config.dataset.decode_processes = 2
  futures = []

  class Recorded(folder_stream._Pending):  # pylint: disable=protected-access
    def __init__(self, future, *args):
      futures.append(future)
      super().__init__(future, *args)

  monkeypatch.setattr(folder_stream, "_Pending", Recorded)
  dataset = data.build(config, process_index=0, process_count=1)
  _break_rows(dataset, broken_rows, seed=3)
  try:
    with pytest.raises(DataError, match="failed to decode"):
      next(dataset.train_batches(4, start_step=0, seed=3))
  finally:
    dataset.close()
  shipped = [f.result()[0] for f in futures if not f.cancelled() and f.exception() is None]
  tickets = [t for t in shipped if isinstance(t, shared_rows.Ticket)]
  assert tickets  # the good job of step 0 shipped its rows
  assert not [t for t in tickets if segment_exists(t)]
