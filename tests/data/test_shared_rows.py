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
  for name in ("receive", "discard"):
    original = getattr(shared_rows, name)

    def spy(tickets, original=original):  # records what the parent got, then does the real work
      seen.append(tickets)
      return original(tickets)

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
