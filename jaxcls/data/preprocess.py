"""Image files -> the uint8 [H, W, C] arrays a trained model's evaluation feeds it, for predicting on new images.

A workdir's resolved config says how its eval images were made: the folder (and tfds) sources decode, centre-crop
or squash (`dataset.eval_crop`, `dataset.center_crop_fraction`) and resize to `dataset.image_size` with Pillow's
bilinear filter; the in-memory sources squash whole images to that size with the same filter. Decoding reuses the
folder source's own decoder (EXIF orientation, pixel modes, channels, decompression-bomb limit), so a file gives the
same pixels here as it did in evaluation. Normalisation happens later, on the device (`steps.normalize`).

`stream` decodes a list of files batch by batch in a pool of threads (or of forked processes, for a command that
has not imported jax yet), a bounded number of batches ahead of their use, so memory does not grow with the number
of files and decoding overlaps the model's start-up and forward passes.
"""

import collections
import concurrent.futures
import concurrent.futures.process
import contextlib
import ctypes
import dataclasses
import itertools
import math
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from jaxcls.core import paths as path_layer
from jaxcls.core.errors import ConfigError, DataError
from jaxcls.data import decode, resize
from jaxcls.data.sources import folder, folder_scan, folder_stream

# Sources whose eval path honours dataset.eval_crop; the others resize whole images (data/resize.py).
_CROPPING_SOURCES = ("folder", "tfds")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How one file becomes a model input: the eval crop, the channel count and the pixel limit."""

  crop: decode.Crop
  channels: int
  max_pixels: int

  def to_json(self) -> dict:
    """The settings a standalone loader needs to reproduce `load` (see examples/serve_exported.py)."""
    return {
      "image_size": list(self.crop.size),
      "channels": self.channels,
      "crop": self.crop.mode,
      "center_crop_fraction": self.crop.fraction,
      "max_image_pixels": self.max_pixels,
      "resample": "bilinear",
      "jpeg_draft": True,
    }


def from_config(config) -> Preprocessing:
  """The eval preprocessing of a resolved workdir config (`restore.load_config`)."""
  ds = config.dataset
  size = resize.parse_image_size(ds.image_size)
  if size is None or not ds.mean:
    raise ConfigError(
      "The workdir's config.json lacks the resolved image size or normalisation; it was not written "
      "by `python -m jaxcls.main` (train into a new workdir)."
    )
  channels = len(ds.mean)
  if channels not in (1, 3):
    raise ConfigError(
      f"The model takes {channels}-channel images; image files decode only to 1 (grayscale) or 3 "
      "(RGB) channels, so predict on arrays with this model instead."
    )
  if ds.name in _CROPPING_SOURCES:
    _, crop = folder.crops(ds, size)
  else:
    crop = decode.Crop(size, "resize")
  return Preprocessing(crop=crop, channels=channels, max_pixels=int(ds.max_image_pixels))


def find_images(paths: list[str]) -> list[str]:
  """The files named, in order, with folders replaced by their image files (recursively, sorted).

  A file named explicitly is kept whatever its extension (its decoding decides); inside folders only the image
  extensions the folder source reads (data/decode.py) count, and hidden entries are skipped. A path that does not
  exist is kept, so that it gets its own error line.
  """
  found = []
  for path in paths:
    if _kind(path) == "folder":
      files, _ = folder_scan.image_files(path)  # the folder source's walk
      found.extend(files)
    else:
      found.append(path)
  if not found:
    raise DataError(
      f"No image files in {', '.join(paths) or 'the paths given'} (looked for "
      f"{', '.join(decode.EXTENSIONS)}); pass image files or folders holding them."
    )
  return found


def batches(items: Sequence, size: int) -> Iterator[list]:
  """Consecutive runs of at most `size` items, in order: the unit that is decoded, predicted and printed at once,
  so that no more than a few batches of images are ever held, however many files there are."""
  if size < 1:
    raise ConfigError(f"--batch_size={size} must be at least 1.")
  for start in range(0, len(items), size):
    yield list(items[start : start + size])


Decoded = tuple[list[str], np.ndarray, list]  # (the batch's paths, uint8 images of the readable ones, per path: None
# or why it could not be read)


def batches_ahead(batch_size: int, preprocessing: Preprocessing, budget_bytes: int = 64 << 20) -> int:
  """How many batches `stream` decodes ahead: at least 2 (one being used, one decoding), more while they fit
  `budget_bytes` of decoded pixels, so that a fixed amount of memory, not the file count, bounds the prefetch."""
  height, width = preprocessing.crop.size
  return max(2, budget_bytes // max(1, batch_size * height * width * preprocessing.channels))


@contextlib.contextmanager
def stream(
  paths: Sequence[str],
  preprocessing: Preprocessing,
  batch_size: int,
  workers: int = 0,
  ahead: int = 2,
  *,
  processes: bool = False,
) -> Iterator[Iterator[Decoded]]:
  """An iterator of `Decoded` batches of `batch_size` paths (the last may be shorter), in order.

  Decoding starts on entering the context, in a pool of `workers` threads (0 = one per CPU), or with
  `processes=True` of as many forked processes (see `can_fork`), and stays at most `ahead` batches in front of the
  consumer; leaving the context cancels what was not decoded yet. Each image is decoded as `load` decodes it (the
  same pixels and the same reasons for unreadable files), whichever the pool.
  """
  if ahead < 1:
    raise ValueError(f"ahead={ahead} must be at least 1.")
  chunks = batches(paths, batch_size)
  count = workers or os.cpu_count() or 1
  pool = _decode_pool(count, processes)
  pending = collections.deque()

  def submit(chunk):
    # A process gets a slice of the batch per job (one transfer each way); a thread gets one file per job.
    size = math.ceil(len(chunk) / count) if processes else 1
    parts = [chunk[i : i + size] for i in range(0, len(chunk), size)]
    pending.append((chunk, [pool.submit(_load_some, part, preprocessing) for part in parts]))

  def decoded() -> Iterator[Decoded]:
    while pending:
      chunk, futures = pending.popleft()
      try:  # a dead worker breaks the pool: the next submit raises, or the result of the job it held
        for more in itertools.islice(chunks, 1):
          submit(more)
        results = [result for future in futures for result in future.result()]
      except concurrent.futures.process.BrokenProcessPool as e:
        raise folder_stream.worker_died(
          e,
          "memory ran out, or the decoder crashed on one of these files: free memory or pass fewer --workers",
          f"{chunk[0]} ... {chunk[-1]}",
          spawned=False,  # forked: nothing is re-imported
        ) from e
      shape = (sum(error is None for _, error in results),) + preprocessing.crop.size + (preprocessing.channels,)
      images = np.empty(shape, np.uint8)
      for row, image in enumerate(image for image, error in results if error is None):
        images[row] = image
      yield chunk, images, [error for _, error in results]

  try:
    for chunk in itertools.islice(chunks, ahead):
      submit(chunk)
    yield decoded()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def can_fork(paths: Sequence[str]) -> bool:
  """Whether `stream` may decode `paths` in forked processes: on Linux, in a process that runs one thread and has
  not imported jax (a command before its start-up, as `predict` is), for local files only.

  Threads decoding while the main thread imports jax and flax wait for the GIL most of the time; forked
  processes decode during those imports for real. Forking is safe only while no other thread holds a lock, and
  remote files go through gcsfs, whose event loop is not fork-safe, so everything else decodes in threads.
  """
  return (
    sys.platform.startswith("linux")
    and threading.active_count() == 1
    and "jax" not in sys.modules
    and not any(path_layer.is_remote(p) for p in paths)
  )


def _decode_pool(count: int, processes: bool) -> concurrent.futures.Executor:
  if not processes:
    return concurrent.futures.ThreadPoolExecutor(count, thread_name_prefix="jaxcls-decode")
  sys.stdout.flush()  # a forked child must not hold, and later write, a copy of unwritten output
  sys.stderr.flush()
  return concurrent.futures.ProcessPoolExecutor(
    count, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker
  )


def _start_worker() -> None:
  """In a decode worker: Ctrl-C is the parent's to handle (it shuts the pool down), not a traceback per worker, and
  the worker dies with the parent (Linux's PR_SET_PDEATHSIG), however the parent ends (killed, os._exit)."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass  # not Linux's libc: the worker then ends when its job queue closes


def _load_some(paths: Sequence[str], preprocessing: Preprocessing) -> list[tuple[np.ndarray | None, str | None]]:
  """`_load_one` of each path, in order: one job of the decode pool."""
  return [_load_one(path, preprocessing) for path in paths]


def _load_one(path: str, preprocessing: Preprocessing) -> tuple[np.ndarray | None, str | None]:
  """(image, None) or (None, the reason `path` cannot be read), as `load` decides for each file."""
  kind = _kind(path)
  if kind != "file":
    return None, _UNREADABLE[kind]
  try:
    return decode.decode(path, preprocessing.crop, preprocessing.channels, preprocessing.max_pixels), None
  except decode.DecodeError as e:
    return None, str(e)


def load(paths: list[str], preprocessing: Preprocessing, workers: int = 0) -> tuple[np.ndarray, list[str | None]]:
  """(uint8 [n, H, W, C] images of the readable files, per path: None or the reason it could not be read).

  All of `paths` as one batch of `stream` (the folder source's decoder, in `workers` threads): for a few files; a
  long list goes through `stream`, which holds only a few batches at a time.
  """
  with stream(paths, preprocessing, max(1, len(paths)), workers, ahead=1) as decoded:
    for _, images, errors in decoded:
      return images, errors
  return np.zeros((0,) + preprocessing.crop.size + (preprocessing.channels,), np.uint8), []


_UNREADABLE = {
  "missing": "no such file",
  "folder": "a folder, not an image file",
  "special": "not a regular file (a FIFO, socket or device is never opened)",
}


def _kind(path: str) -> str:
  """'file', 'folder', 'missing' or 'special', for a local path or a gs:// object, without opening it."""
  if path_layer.is_remote(path):
    target = path_layer.path(path, "image path")
    return "folder" if target.is_dir() else "file" if target.exists() else "missing"
  if os.path.isdir(path):
    return "folder"
  if os.path.isfile(path):
    return "file"
  return "special" if os.path.lexists(path) and os.path.exists(path) else "missing"
