"""The `folder` source: a user's own images, one subfolder per class (the ImageNet / Keras layout).

  path/cats/a.jpg, path/dogs/b.png, ...            a seeded stratified split (test_fraction, val_fraction)
  path/train/cats/..., path/val/..., path/test/... the given splits (classes come from train/)

Class names are the subfolder names, sorted. Two ways to serve the images (`dataset.cache`):
- 'memory' / 'file': every image is decoded once, in parallel, resized to `dataset.image_size` and kept as one
  array (in memory, or as .npy files under `dataset.cache_dir`, reused by later runs while the folder is unchanged);
  unreadable files are known at load time. 'auto' picks 'memory' when the decoded arrays fit `cache_limit_mb`.
- 'none': images are decoded per batch (`folder_stream`), which also allows the Inception-style
  `train_crop='random_resized'` on the full-resolution image (docs/input_pipeline.md).
Either way the decoding runs in `dataset.workers` threads, or in `dataset.decode_processes` spawned worker processes
when that is > 0 (for many cores: the GIL caps threads); the pixels, and so the batches, are the same.
Unreadable, truncated and oversized files are skipped and listed in `dataset.skipped_files` as (path, reason).

What the config leaves unset is read off the images (`infer`), so a folder of 28x28 grey digits needs no
overrides: `dataset.image_size=None` is the images' own size when a sample of their headers agrees on one (at most
MAX_NATIVE_SIDE pixels a side), `dataset.channels=0` is 1 when every sampled image is grayscale and 3 otherwise,
and `dataset.mean` / `std` unset are the training images' own per-channel statistics.
"""

import concurrent.futures
import concurrent.futures.process
import contextlib
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator

import numpy as np
from absl import logging

from jaxcls.core import paths as path_layer  # `paths` names file lists here
from jaxcls.core.errors import ConfigError, DataError
from jaxcls.data import decode, prepare, resize, shared_rows
from jaxcls.data.base import SOURCES, DatasetInfo
from jaxcls.data.in_memory import class_counts, from_arrays
from jaxcls.data.sources import folder_scan, folder_stream, label_file
from jaxcls.data.sources.folder_stream import FolderStreamDataset

CACHES = ("auto", "memory", "file", "none")
_STATS_SAMPLE = 512  # images decoded to estimate mean / std when streaming
MAX_NATIVE_SIDE = 256  # an unset image_size takes the images' own size up to this many pixels a side


def workers(dataset_config) -> int:
  """Decode threads: `dataset.workers`, or one per CPU core when it is 0."""
  return int(dataset_config.workers) or os.cpu_count() or 1


def decode_processes(dataset_config) -> int:
  """Decode worker processes, `dataset.decode_processes` (0: threads); 0 for a config saved before the key existed."""
  value = dataset_config.get("decode_processes", 0)
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ConfigError(
      f"dataset.decode_processes={value!r} is not valid; use 0 (decode in threads) or a number of worker processes."
    )
  return value


def crops(dataset_config, size: tuple[int, int]) -> tuple[decode.Crop, decode.Crop]:
  """(train crop, eval crop) from the config, validated."""
  ds = dataset_config
  if ds.train_crop not in ("resize", "random_resized"):
    raise ConfigError(f"dataset.train_crop={ds.train_crop!r} is not valid; use 'resize' or 'random_resized'.")
  if ds.eval_crop not in ("resize", "center"):
    raise ConfigError(f"dataset.eval_crop={ds.eval_crop!r} is not valid; use 'resize' or 'center'.")
  if not 0 < ds.center_crop_fraction <= 1:
    raise ConfigError(f"dataset.center_crop_fraction={ds.center_crop_fraction} must be in (0, 1].")
  area, aspect = tuple(float(a) for a in ds.crop_area), tuple(float(a) for a in ds.crop_aspect)
  if len(area) != 2 or not 0 < area[0] <= area[1] <= 1 or len(aspect) != 2 or not 0 < aspect[0] <= aspect[1]:
    raise ConfigError(
      f"dataset.crop_area={ds.crop_area} and crop_aspect={ds.crop_aspect} must be (low, high) "
      "with 0 < low <= high (and area <= 1)."
    )
  train = decode.Crop(size, ds.train_crop, ds.center_crop_fraction, area, aspect)
  evaluation = decode.Crop(size, ds.eval_crop, ds.center_crop_fraction)
  return train, evaluation


@SOURCES.register("folder")
def load(config, *, process_index: int, process_count: int):
  """The folder at `dataset.path`, cached or streamed as `dataset.cache` says."""
  ds = config.dataset
  size = resize.parse_image_size(ds.image_size)
  if ds.channels not in (0, 1, 3):
    raise ConfigError(
      f"dataset.channels={ds.channels} is not valid for a folder; use 3 (RGB), 1 (grayscale) or 0 "
      "(1 when the images are grayscale, else 3)."
    )
  if ds.cache not in CACHES:
    raise ConfigError(f"dataset.cache={ds.cache!r} is not valid; use one of {', '.join(CACHES)}.")
  if ds.labels_file:
    listing = label_file.scan(ds, multi_label=config.task.type == "multilabel")
  else:
    listing = folder_scan.scan(ds)
  train, evaluation = folder_scan.chosen(listing, ds)
  ds = infer(ds, list(dict.fromkeys(train[0] + evaluation[0])))
  size = resize.parse_image_size(ds.image_size)
  train_crop, eval_crop = crops(ds, size)
  eval_groups = listing.groups.get(folder_scan.split_name(ds.eval_split))
  cache = _resolve_cache(ds, size, len(train[0]) + len(evaluation[0]))
  logging.info(
    "Folder %s: %d classes, %d train / %d eval image files (%d non-image files ignored); cache=%s.",
    ds.path,
    len(listing.class_names),
    len(train[0]),
    len(evaluation[0]),
    listing.ignored,
    cache,
  )
  if cache == "none":
    skipped = list(listing.skipped)  # FIFOs, link loops, duplicates the walk left out (folder_scan.Walker)
    stats = _sample_stats(train[0], eval_crop, ds, skipped)
    _log_skipped(skipped)
    info = DatasetInfo(
      num_classes=len(listing.class_names),
      class_names=listing.class_names,
      image_shape=size + (ds.channels,),
      num_train=len(train[0]),
      num_eval=len(evaluation[0]),
      mean=stats[0],
      std=stats[1],
      train_class_counts=tuple(class_counts(train[1], len(listing.class_names))),
    )
    return FolderStreamDataset(
      info,
      train,
      evaluation,
      train_crop=train_crop,
      eval_crop=eval_crop,
      max_pixels=int(ds.max_image_pixels),
      workers=workers(ds),
      skipped_files=skipped,
      eval_group_names=eval_groups,
      process_index=process_index,
      process_count=process_count,
      processes=decode_processes(ds),
    )
  if train_crop.mode != "resize":
    raise ConfigError(
      f"dataset.train_crop={ds.train_crop!r} needs the full-size images, so it works only with "
      "dataset.cache='none' (or 'auto'); set one of those, or train_crop='resize'."
    )
  arrays, skipped = _cached_arrays(ds, cache, train, evaluation, train_crop, eval_crop)
  skipped = list(listing.skipped) + skipped  # what the walk left out, then what failed to decode
  _log_skipped(skipped)
  dataset = from_arrays(
    *arrays,
    class_names=listing.class_names,
    process_index=process_index,
    process_count=process_count,
    source=f"folder ({ds.path})",
  )
  dataset.skipped_files = skipped
  if eval_groups is not None:  # rows of unreadable files are gone from the arrays: drop their groups too
    bad = {path for path, _ in skipped}
    dataset.eval_groups = eval_groups[[path not in bad for path in evaluation[0]]]
  return dataset


def infer(ds, paths: list[str]):
  """The dataset config with `image_size` (unset) and `channels` (0) read off a sample of the images' headers."""
  if ds.image_size is not None and ds.channels:
    return ds
  seen = folder_scan.peek(paths)
  if not seen.sizes:
    raise DataError(
      f"None of the sampled images in {ds.path} could be opened (e.g. {paths[0]}); check that the files are images."
    )
  import ml_collections  # pylint: disable=g-import-not-at-top  (jaxcls.data imports without it: the benchmark)

  resolved = ml_collections.ConfigDict(ds.to_dict())
  notes = []
  if ds.image_size is None:
    sizes = sorted(set(seen.sizes))
    if len(sizes) > 1 or max(sizes[0]) > MAX_NATIVE_SIDE:
      shown = ", ".join(f"{h}x{w}" for h, w in sizes[:4]) + (" ..." if len(sizes) > 4 else "")
      why = "differ" if len(sizes) > 1 else f"are larger than {MAX_NATIVE_SIDE} pixels a side"
      raise ConfigError(
        f"dataset.image_size is not set and the images in {ds.path} {why} ({shown}); set the "
        "(height, width) the model should see, e.g. --config.dataset.image_size='(224, 224)'."
      )
    resolved.image_size = sizes[0]
    notes.append(f"image_size={sizes[0]}")
  if not ds.channels:
    resolved.channels = 1 if seen.grayscale else 3
    notes.append(f"channels={resolved.channels} ({'grayscale' if seen.grayscale else 'colour'} images)")
  logging.info("Folder %s: %s, read from %d image headers.", ds.path, ", ".join(notes), len(seen.sizes))
  return resolved


def _resolve_cache(ds, size: tuple[int, int], count: int) -> str:
  if ds.cache != "auto":
    return ds.cache
  decoded_mb = count * size[0] * size[1] * ds.channels / 2**20
  return "memory" if ds.train_crop == "resize" and decoded_mb <= ds.cache_limit_mb else "none"


@contextlib.contextmanager
def decode_pool(num_workers: int, processes: int = 0) -> Iterator[concurrent.futures.Executor]:
  """`num_workers` threads, or `processes` spawned worker processes when > 0 (spawn, not fork: the parent may run
  JAX's threads); one pool for every split decoded, so that workers start once. A worker that dies is a DataError."""
  if not processes:
    with concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix="jaxcls-decode") as pool:
      yield pool
    return
  context = multiprocessing.get_context("spawn")
  try:
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
      yield pool
  except concurrent.futures.process.BrokenProcessPool as e:
    raise folder_stream.worker_died(e) from e


def decode_all(
  paths: list[str],
  crop: decode.Crop,
  channels: int,
  max_pixels: int,
  num_workers: int,
  processes: int = 0,
  *,
  pool: concurrent.futures.Executor | None = None,
):
  """(uint8 images of the readable files, indices of those files, [(path, reason)] of the others), decoded in
  `pool`, else in a `decode_pool(num_workers, processes)` of its own (the same pixels in threads or processes)."""
  if pool is None:
    with decode_pool(num_workers, processes if len(paths) > 1 else 0) as own:
      return decode_all(paths, crop, channels, max_pixels, num_workers, pool=own)
  ship = isinstance(pool, concurrent.futures.ProcessPoolExecutor)
  # Runs of up to 16 files per job: a future per file costs 5-9% of the decode in threads, and a worker
  # process's run comes back in shared memory rather than through the pipe. Each run's rows are copied once, into
  # their place in `images`.
  spans = folder_stream.job_rows(len(paths), num_workers, per_job=16)
  futures = [
    pool.submit(_decode_run, [paths[i] for i in span], crop=crop, channels=channels, max_pixels=max_pixels, ship=ship)
    for span in spans
  ]
  images = np.zeros((len(paths),) + crop.size + (channels,), np.uint8)
  decoded = np.zeros(len(paths), bool)
  skipped = []
  for done, (span, future) in enumerate(zip(spans, futures)):
    try:
      rows, reasons = future.result()
    except BaseException:
      _drop(futures[done + 1 :])
      raise
    good = span[[reason is None for reason in reasons]]
    if len(good) == len(span):
      shared_rows.receive_into(rows, images[span[0] : span[-1] + 1])
    elif len(good):
      part = np.zeros((len(good),) + images.shape[1:], np.uint8)
      shared_rows.receive_into(rows, part)
      images[good] = part
    decoded[good] = True
    skipped += [(paths[i], reason) for i, reason in zip(span, reasons) if reason is not None]
  keep = np.flatnonzero(decoded)
  return (images if len(keep) == len(paths) else images[keep]), keep.astype(np.int64), skipped


def _drop(futures) -> None:
  """Cancels the runs not started and removes the shared-memory rows of those that finish anyway."""
  for future in futures:
    future.cancel()
  for future in futures:
    if not future.cancelled():
      try:
        shared_rows.discard(future.result()[0])
      except Exception:  # pylint: disable=broad-except  (a run that failed left nothing behind)
        pass


def _decode_run(paths: list[str], *, crop: decode.Crop, channels: int, max_pixels: int, ship: bool):
  """(the decoded rows, [None or why each file failed]): module-level, so that a spawned worker process can run
  it; there (`ship`) the rows go back in shared memory."""
  images, reasons = [], []
  for path in paths:
    try:
      images.append(decode.decode(path, crop, channels, max_pixels))
      reasons.append(None)
    except decode.DecodeError as e:
      reasons.append(str(e))
  if not images:
    return None, reasons
  return (shared_rows.ship(images) if ship else images), reasons


def _decode_split(ds, files, crop, what: str, pool):
  paths, labels = files
  images, keep, skipped = decode_all(paths, crop, ds.channels, int(ds.max_image_pixels), workers(ds), pool=pool)
  labels = np.asarray(labels)[keep]
  if len(labels) == 0:
    raise DataError(
      f"None of the {len(paths)} {what} images in {ds.path} could be decoded (e.g. {paths[0]}: "
      f"{skipped[0][1]}); check that the files are images."
    )
  return images, labels, skipped


def _cached_arrays(ds, cache, train, evaluation, train_crop, eval_crop):
  """(train_images, train_labels, eval_images, eval_labels) and the skipped files, decoded or from the cache."""
  folder = None
  if cache == "file":
    folder = os.path.join(_cache_root(ds), "folder-" + _fingerprint(ds, train, evaluation))
    loaded = _load_cache(folder)
    if loaded is not None:
      logging.info("Folder %s: decoded images read from the cache %s.", ds.path, folder)
      return loaded
  with decode_pool(workers(ds), decode_processes(ds)) as pool:
    train_images, train_labels, skipped = _decode_split(ds, train, train_crop, "training", pool)
    if train[0] == evaluation[0] and train_crop == eval_crop:
      eval_images, eval_labels, more = train_images, train_labels, []
    else:
      eval_images, eval_labels, more = _decode_split(ds, evaluation, eval_crop, "eval", pool)
  arrays = (train_images, train_labels, eval_images, eval_labels)
  skipped = skipped + more
  present = train_labels.any(0).nonzero()[0] if train_labels.ndim == 2 else train_labels
  wanted = train[1].any(0).nonzero()[0] if train_labels.ndim == 2 else np.arange(int(np.max(train[1])) + 1)
  missing = np.setdiff1d(wanted, present)
  if len(missing):
    raise DataError(
      f"Every training image of class {int(missing[0])} failed to decode (see skipped files); "
      "add readable images to that class."
    )
  if folder is not None:
    _save_cache(folder, arrays, skipped)
  return arrays, skipped


def _cache_root(ds) -> str:
  return os.path.expanduser(ds.cache_dir) if ds.cache_dir else os.path.join(os.path.expanduser("~"), ".cache", "jaxcls")


def _fingerprint(ds, train, evaluation) -> str:
  """A hash of everything the decoded arrays depend on: file names, sizes and times, and the decode settings."""
  digest = hashlib.sha256()
  settings = (tuple(ds.image_size), ds.channels, ds.eval_crop, ds.center_crop_fraction, int(ds.max_image_pixels))
  digest.update(repr(settings).encode())
  for paths, labels in (train, evaluation):
    digest.update(b"|split|")
    for path, label in zip(paths, labels):
      size, mtime = _size_and_mtime(path)
      digest.update(
        f"{path}\0{np.asarray(label).tolist()}\0{size}\0{mtime}\n".encode(  # a non-UTF-8 name:
          "utf-8", "surrogateescape"
        )
      )  # its own bytes
  return digest.hexdigest()[:16]


def _size_and_mtime(path: str) -> tuple[int, int]:
  """A file's size and modification time (ns on a local disk, s for a gs:// object)."""
  if path_layer.is_remote(path):
    stat = path_layer.path(path).stat()
    return stat.length, stat.mtime
  stat = os.stat(path)
  return stat.st_size, stat.st_mtime_ns


_ARRAYS = ("train_images", "train_labels", "eval_images", "eval_labels")


def _load_cache(folder: str) -> tuple | None:
  if not os.path.isfile(os.path.join(folder, "skipped.json")):
    return None
  arrays = tuple(np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r") for name in _ARRAYS)
  with open(os.path.join(folder, "skipped.json")) as f:
    skipped = [tuple(item) for item in json.load(f)]
  return arrays, skipped


def _save_cache(folder: str, arrays: tuple, skipped: list) -> None:
  """Writes the arrays, then skipped.json last: its presence marks a complete cache."""
  try:
    os.makedirs(folder, exist_ok=True)
    for name, array in zip(_ARRAYS, arrays):
      tmp = os.path.join(folder, f".{name}.{os.getpid()}.npy")
      np.save(tmp, array)
      os.replace(tmp, os.path.join(folder, f"{name}.npy"))
    tmp = os.path.join(folder, f".skipped.{os.getpid()}.json")
    with open(tmp, "w") as f:
      json.dump(skipped, f)
    os.replace(tmp, os.path.join(folder, "skipped.json"))
  except OSError as e:
    logging.warning("Could not write the decoded-image cache to %s (%s); continuing without it.", folder, e)


def _sample_stats(paths: list[str], crop: decode.Crop, ds, skipped: list):
  """Per-channel mean / std from a fixed random sample of training images (streaming has no full pass); in threads
  even with decode_processes: starting workers for 512 images would cost more than it saves, and the stream
  starts its own."""
  pick = np.random.default_rng(0).permutation(len(paths))[:_STATS_SAMPLE]
  images, _, bad = decode_all([paths[i] for i in pick], crop, ds.channels, int(ds.max_image_pixels), workers(ds))
  skipped.extend(bad)
  if not len(images):
    raise DataError(
      f"None of {len(pick)} sampled training images in {ds.path} could be decoded (e.g. "
      f"{bad[0][0]}: {bad[0][1]}); check that the files are images."
    )
  return prepare.channel_stats(images)


def _log_skipped(skipped: list) -> None:
  if skipped:
    shown = "; ".join(f"{path}: {reason}" for path, reason in skipped[:5])
    logging.warning(
      "Skipped %d unreadable image file(s) (listed in skipped_files.txt): %s%s",
      len(skipped),
      shown,
      " ..." if len(skipped) > 5 else "",
    )
