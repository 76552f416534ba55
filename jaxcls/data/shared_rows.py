"""Decoded rows handed from a decode worker process to its parent through shared memory instead of a pipe.

A worker process (`dataset.decode_processes`) used to stack its rows and return them through the process pool's
pipe: pickling, two kernel copies and unpickling, about a fifth of the CPU the decoding itself takes
(docs/input_pipeline.md). `ship` copies the rows once into a new POSIX shared-memory segment and returns its
`Ticket` (a name and a shape: a few bytes to pickle); the parent's `receive` copies them out once and removes the
segment, `discard` removes one whose rows are no longer wanted.

Where the segment might not fit (Linux's /dev/shm, a tmpfs of its own size: Docker gives containers 64 MB by
default, and a process that writes past it dies of SIGBUS), or there is no /dev/shm, the rows go through the pipe
as before: the same pixels either way.
"""

import dataclasses
import math
import os
from multiprocessing import shared_memory

import numpy as np

SHM_FOLDER = "/dev/shm"
# A segment is made only when /dev/shm keeps this many times its size free: the other workers' segments and the
# rows still held by the parent must fit too.
HEADROOM = 4
MIN_FREE_AFTER = 16 << 20


@dataclasses.dataclass(frozen=True)
class Ticket:
  """Rows waiting in the shared-memory segment `name`: uint8 images of `shape` [rows, h, w, c]."""

  name: str
  shape: tuple


def has_room(nbytes: int, folder: str = SHM_FOLDER) -> bool:
  """Whether a segment of `nbytes` fits with room to spare in `folder` (False when there is no such folder)."""
  try:
    stats = os.statvfs(folder)
  except OSError:
    return False
  return stats.f_bavail * stats.f_frsize >= HEADROOM * nbytes + MIN_FREE_AFTER


def ship(images: list[np.ndarray], room=has_room) -> "Ticket | np.ndarray":
  """The rows (equal-shaped uint8 images) as a Ticket to a new segment, or stacked when `room` says no."""
  shape = (len(images), *images[0].shape)
  nbytes = math.prod(shape)
  if not nbytes or not room(nbytes):
    return np.stack(images)
  segment = shared_memory.SharedMemory(create=True, size=nbytes)
  try:
    rows = np.ndarray(shape, np.uint8, buffer=segment.buf)
    for i, image in enumerate(images):
      rows[i] = image
    del rows  # no view may outlive the mapping
  except BaseException:
    segment.close()
    segment.unlink()
    raise
  segment.close()  # the segment stays until the parent unlinks it
  return Ticket(segment.name, shape)


def receive(rows: "Ticket | np.ndarray") -> np.ndarray:
  """The rows as an array of this process's own: a Ticket's segment is copied out and removed."""
  if not isinstance(rows, Ticket):
    return rows
  segment = shared_memory.SharedMemory(name=rows.name)
  try:
    view = np.ndarray(rows.shape, np.uint8, buffer=segment.buf)
    out = view.copy()
    del view
  finally:
    segment.close()
    segment.unlink()
  return out


def receive_into(rows: "Ticket | np.ndarray | list[np.ndarray]", out: np.ndarray) -> None:
  """Copies the rows into `out` (a view of as many rows): a Ticket's segment straight from shared memory, in one
  copy, and then removed."""
  if not isinstance(rows, Ticket):
    for i, row in enumerate(rows):
      out[i] = row
    return
  segment = shared_memory.SharedMemory(name=rows.name)
  try:
    view = np.ndarray(rows.shape, np.uint8, buffer=segment.buf)
    out[...] = view
    del view
  finally:
    segment.close()
    segment.unlink()


def discard(rows) -> None:
  """Removes a Ticket's segment unread (a stream closed with rows in flight); anything else is left alone."""
  if isinstance(rows, Ticket):
    try:
      segment = shared_memory.SharedMemory(name=rows.name)
    except FileNotFoundError:
      return
    segment.close()
    segment.unlink()
