"""Finding a folder dataset's files: classes from subfolder names, splits from folders or a stratified split.

Only the directory tree is read here, never the images, so listing a large folder is quick. Hidden entries (names
starting with '.') and files without an image extension are ignored.

Hostile trees are listed safely (`Walker`): a symbolic link is followed, but every folder and every file is listed
at most once per scan, identified by its real identity (device and inode, named by its real path), so a link loop
(`cats/up -> ..`) is cut where it closes instead of listing the tree again and again, and a link from train/ into
test/ cannot put a test image into training. FIFOs, sockets and devices are never opened (reading a FIFO blocks
forever); like broken links, loops, duplicates and unreadable folders they are skipped with a reason, which the
source lists in DIR/skipped_files.txt. Names that are not valid UTF-8 (Linux allows any bytes) are kept as
Python's surrogate-escaped strings, so the file still opens; `display` turns them into printable text.
A `gs://` folder is walked through the path layer (epath); object stores have no links, FIFOs or devices.
"""

import dataclasses
import os
import stat

import numpy as np
from absl import logging

from jaxcls.core import paths as paths_lib
from jaxcls.core.errors import ConfigError, DataError
from jaxcls.data import decode, split

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


@dataclasses.dataclass
class Listing:
  """Class names (sorted) and, per split name, (paths, labels)."""

  class_names: tuple[str, ...]
  splits: dict[str, tuple[list[str], np.ndarray]]
  ignored: int  # non-image files seen, for the log
  groups: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # per split, from a label file
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, reason) the walk left out


def display(name: str) -> str:
  """`name` as valid UTF-8 text: a byte that is not UTF-8 (a surrogate escape) becomes `\\xNN`.

  Every text jaxcls writes (skipped_files.txt, predict's CSV/JSON and printed lines, class names) uses it, so
  these files stay valid UTF-8 that any reader opens; the escape shows the exact byte (Python's
  'backslashreplace'). A name that is valid UTF-8 is returned unchanged.
  """
  try:
    name.encode("utf-8")
    return name
  except UnicodeEncodeError:
    return os.fsencode(name).decode("utf-8", "backslashreplace")


_KINDS = (
  (stat.S_ISFIFO, "a FIFO (named pipe)"),
  (stat.S_ISSOCK, "a socket"),
  (stat.S_ISCHR, "a character device"),
  (stat.S_ISBLK, "a block device"),
)


class Walker:
  """One scan's walk: every folder and file listed once (by device and inode), and what was left out, why."""

  def __init__(self):
    self.skipped: list[tuple[str, str]] = []
    self._dirs: dict[tuple[int, int], str] = {}  # identity -> the path it was first listed under
    self._files: dict[tuple[int, int], str] = {}

  def skip(self, path: str, reason: str) -> None:
    """Records a path the scan leaves out and why, and logs a warning so the user sees it."""
    self.skipped.append((path, reason))
    logging.warning("Skipped %s: %s.", display(path), reason)

  def enter(self, folder: str, mark: bool = True) -> bool:
    """Marks a folder as listed; False (and a skip) when it is a loop or was listed already under another name.

    Entering the same path again is allowed (True); `mark=False` only checks.
    """
    if paths_lib.is_remote(folder):
      return True
    try:
      info = os.stat(folder)
    except OSError as e:
      self.skip(folder, f"the folder cannot be read ({e.strerror})")
      return False
    key = (info.st_dev, info.st_ino)
    if key in self._dirs and self._dirs[key] != folder:
      real = os.path.realpath(folder)
      where = os.path.realpath(os.path.dirname(folder))
      if where == real or where.startswith(real.rstrip(os.sep) + os.sep):
        self.skip(folder, f"a symbolic link loop: it leads back to {display(real)}, a folder that contains it")
      else:
        self.skip(
          folder, f"the same folder as {display(self._dirs[key])} (real path {display(real)}), which is listed already"
        )
      return False
    if mark:
      self._dirs[key] = folder
    return True

  def files(self, folder: str) -> tuple[list[str], int]:
    """Image files anywhere below `folder` (which `enter` admitted), sorted, and how many other files there were."""
    if paths_lib.is_remote(folder):
      return self._remote_files(paths_lib.path(folder, "dataset folder"))
    found, ignored = [], 0
    try:
      with os.scandir(folder) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
      self.skip(folder, f"the folder cannot be read ({e.strerror})")
      return [], 0
    for entry in entries:
      try:
        info = os.stat(entry.path)  # follows a symbolic link
      except OSError as e:
        self.skip(entry.path, "a broken symbolic link" if entry.is_symlink() else f"cannot be read ({e.strerror})")
        continue
      if stat.S_ISDIR(info.st_mode):
        if self.enter(entry.path):
          more, n = self.files(entry.path)
          found += more
          ignored += n
      elif stat.S_ISREG(info.st_mode):
        if os.path.splitext(entry.name)[1].lower() not in decode.EXTENSIONS:
          ignored += 1
          continue
        key = (info.st_dev, info.st_ino)
        if key in self._files:
          self.skip(entry.path, f"the same file as {display(self._files[key])}, which is listed already")
          continue
        self._files[key] = entry.path
        found.append(entry.path)
      else:
        kind = next((words for test, words in _KINDS if test(info.st_mode)), "not a regular file")
        self.skip(entry.path, f"{kind}, not a regular file; it is never opened")
    return found, ignored

  def _remote_files(self, folder) -> tuple[list[str], int]:
    found, ignored = [], 0
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
      if entry.name.startswith("."):
        continue
      if entry.is_dir():
        more, n = self._remote_files(entry)
        found += more
        ignored += n
      elif entry.suffix.lower() in decode.EXTENSIONS:
        found.append(os.fspath(entry))
      else:
        ignored += 1
    return found, ignored

  def visible_dirs(self, folder: str, mark: bool = True) -> list[tuple[str, str]]:
    """(name, path) of the visible subfolders of `folder` that `enter` admits, sorted by name."""
    if paths_lib.is_remote(folder):
      base = paths_lib.path(folder, "dataset folder")
      return [
        (p.name, os.fspath(p))
        for p in sorted(base.iterdir(), key=lambda p: p.name)
        if not p.name.startswith(".") and p.is_dir()
      ]
    out = []
    for entry in _visible(folder):
      try:
        is_dir = stat.S_ISDIR(os.stat(entry.path).st_mode)
      except OSError:
        is_dir = False
        if entry.is_symlink():
          self.skip(entry.path, "a broken symbolic link")
      if is_dir and self.enter(entry.path, mark):
        out.append((entry.name, entry.path))
    return out


def _visible(folder: str) -> list[os.DirEntry]:
  with os.scandir(folder) as entries:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def image_files(class_dir: str, walker: Walker | None = None) -> tuple[list[str], int]:
  """Image files anywhere below `class_dir` (sorted, so the order is stable), and how many others were seen.

  Links are followed once, FIFOs and devices skipped (see `Walker`); a `gs://` folder is walked through epath.
  """
  walker = walker or Walker()
  if not walker.enter(class_dir):
    return [], 0
  return walker.files(class_dir)


def read_classes(folder: str, depth: int = 1, walker: Walker | None = None) -> tuple[dict[str, list[str]], int]:
  """Class name -> image files. With depth 2, classes are `coarse/fine` folder pairs (for hierarchical tasks).

  A class folder whose name is not valid UTF-8 gets its `display` name as the class name.
  """
  if depth not in (1, 2):
    raise ConfigError(f"dataset.class_depth={depth} is not valid; use 1 (class folders) or 2 (coarse/fine).")
  walker = walker or Walker()
  walker.enter(folder)
  classes, ignored = {}, 0
  for name, path in walker.visible_dirs(folder):
    if depth == 1:
      classes[display(name)], n = walker.files(path)
      ignored += n
      continue
    fine = walker.visible_dirs(path)
    if not fine:
      raise DataError(
        f"{display(path)} holds no fine-class folders, but dataset.class_depth=2 expects "
        "coarse/fine/ folders; add them or set dataset.class_depth=1."
      )
    for sub_name, sub_path in fine:
      classes[f"{display(name)}/{display(sub_name)}"], n = walker.files(sub_path)
      ignored += n
  return classes, ignored


def scan(dataset_config) -> Listing:
  """The listing of `dataset.path` with the splits that `train_split` and `eval_split` name."""
  path = dataset_config.path if paths_lib.is_remote(dataset_config.path) else os.path.expanduser(dataset_config.path)
  if not path:
    raise ConfigError("dataset.path is empty; set it to a folder with one subfolder of images per class.")
  if not (paths_lib.path(path, "dataset.path").is_dir() if paths_lib.is_remote(path) else os.path.isdir(path)):
    raise DataError(
      f"dataset.path={dataset_config.path!r} is not a folder; point it at a folder with one "
      "subfolder of images per class."
    )
  walker = Walker()
  walker.enter(path)  # the root first, so a link back to it is a loop
  top = [name for name, _ in walker.visible_dirs(path, mark=False)]
  split_dirs = {name: SPLIT_FOLDERS[name.lower()] for name in top if name.lower() in SPLIT_FOLDERS}
  if split_dirs and "train" in split_dirs.values() and len(split_dirs) == len(top):
    listing = _scan_split_folders(path, split_dirs, dataset_config, walker)
  else:
    listing = _scan_and_split(path, dataset_config, walker)
  listing.skipped = walker.skipped
  return listing


def _check_classes(classes: dict[str, list[str]], where: str) -> None:
  if not classes:
    raise DataError(
      f"{where} has no class subfolders; put each class's images in its own subfolder (e.g. cats/1.jpg, dogs/2.jpg)."
    )
  empty = [name for name, files in classes.items() if not files]
  if empty:
    raise DataError(
      f"Class folder(s) {', '.join(repr(e) for e in empty)} in {where} hold no images (.jpg, .png, "
      ".bmp, .gif, .webp, .tif); add images or remove the folder."
    )


def _as_split(classes: dict[str, list[str]], names: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
  paths, labels = [], []
  for k, name in enumerate(names):
    files = classes.get(name, [])
    paths += files
    labels += [k] * len(files)
  return paths, np.asarray(labels, np.int32)


def _scan_split_folders(path: str, split_dirs: dict[str, str], dataset_config, walker: Walker) -> Listing:
  """train/, val/, test/ each holding the class folders; classes come from train/."""
  splits, by_split, ignored = {}, {}, 0
  for folder, name in split_dirs.items():
    by_split[name], n = read_classes(os.path.join(path, folder), dataset_config.class_depth, walker)
    ignored += n
  train_dir = os.path.join(path, next(f for f, n in split_dirs.items() if n == "train"))
  _check_classes(by_split["train"], train_dir)
  names = tuple(sorted(by_split["train"]))
  for name, classes in by_split.items():
    unknown = sorted(set(classes) - set(names))
    if unknown:
      raise DataError(
        f"The {name} split of {path} has class folders {unknown} that train/ lacks; every class "
        "needs training images (add them to train/ or remove the folders)."
      )
    splits[name] = _as_split(classes, names)
  for key in ("train_split", "eval_split"):
    if split_name(dataset_config[key]) not in splits:
      raise ConfigError(
        f"dataset.{key}={dataset_config[key]!r} is not a split folder of {path} (it has "
        f"{', '.join(sorted(split_dirs))}); set dataset.{key} to one of them."
      )
  return Listing(names, splits, ignored)


def split_name(name: str) -> str:
  """The canonical name of a split ('validation' -> 'val')."""
  return SPLIT_FOLDERS.get(str(name).lower(), str(name))


def _scan_and_split(path: str, dataset_config, walker: Walker) -> Listing:
  """Class folders directly under `path`: a seeded stratified train / (val) / test split."""
  classes, ignored = read_classes(path, dataset_config.class_depth, walker)
  _check_classes(classes, path)
  names = tuple(sorted(classes))
  paths, labels = _as_split(classes, names)
  paths = np.asarray(paths, object)
  parts = split.held_out_parts(labels, dataset_config)
  for name, idx in parts.items():
    counts = np.bincount(labels[idx], minlength=len(names))
    if counts.min() == 0:
      empty = names[int(counts.argmin())]
      raise DataError(
        f"The {name} split leaves class {empty!r} without images ({len(classes[empty])} in all); "
        "add images to that class or change dataset.test_fraction / val_fraction."
      )
  for key in ("train_split", "eval_split"):
    if split_name(dataset_config[key]) not in parts:
      raise ConfigError(
        f"dataset.{key}={dataset_config[key]!r} is not a split of {path} (it has "
        f"{', '.join(sorted(parts))}; 'val' needs dataset.val_fraction > 0)."
      )
  splits = {name: (list(paths[idx]), labels[idx]) for name, idx in parts.items()}
  return Listing(names, splits, ignored)


def chosen(listing: Listing, dataset_config) -> tuple[tuple[list[str], np.ndarray], tuple[list[str], np.ndarray]]:
  """(train, eval) as (paths, labels) for the configured split names."""
  return (listing.splits[split_name(dataset_config.train_split)], listing.splits[split_name(dataset_config.eval_split)])


GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
PEEK_FILES = 64  # headers read to infer a folder's image size and channels


@dataclasses.dataclass(frozen=True)
class Peek:
  """What the headers of a sample of a folder's images say: their (height, width) sizes and whether all are grey."""

  sizes: tuple[tuple[int, int], ...]
  grayscale: bool


def peek(paths: list[str], limit: int = PEEK_FILES) -> Peek:
  """Sizes and modes of up to `limit` evenly spaced files, from their headers only (no pixel is decoded)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  picked = [paths[int(i)] for i in np.unique(np.linspace(0, len(paths) - 1, min(limit, len(paths))).astype(int))]
  sizes, grey = [], True
  for path in picked:
    try:
      with paths_lib.path(path).open("rb") as f, Image.open(f) as image:
        sizes.append((image.height, image.width))
        grey = grey and image.mode in GRAYSCALE_MODES and "transparency" not in image.info
    except Exception:  # pylint: disable=broad-except  (unreadable: decoding skips and lists it later)
      continue
  return Peek(tuple(sizes), grey and bool(sizes))
