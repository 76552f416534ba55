"""Finding a folder dataset's files: classes from subfolder names, splits from folders or a stratified split.

Only the directory tree is read here, never the images, so listing a large folder is quick. Hidden entries (names
starting with '.') and files without an image extension are ignored.
"""

import dataclasses
import os

import numpy as np

from jaxcls.data import decode, split
from jaxcls.errors import ConfigError, DataError

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


@dataclasses.dataclass
class Listing:
  """Class names (sorted) and, per split name, (paths, labels)."""
  class_names: tuple[str, ...]
  splits: dict[str, tuple[list[str], np.ndarray]]
  ignored: int  # non-image files seen, for the log
  groups: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # per split, from a label file


def _visible(folder: str) -> list[os.DirEntry]:
  with os.scandir(folder) as entries:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def image_files(class_dir: str) -> tuple[list[str], int]:
  """Image files anywhere below `class_dir` (sorted, so the order is stable), and how many others were seen."""
  files, ignored = [], 0
  for root, dirs, names in os.walk(class_dir, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(names):
      if name.startswith("."):
        continue
      if os.path.splitext(name)[1].lower() in decode.EXTENSIONS:
        files.append(os.path.join(root, name))
      else:
        ignored += 1
  return files, ignored


def read_classes(folder: str, depth: int = 1) -> tuple[dict[str, list[str]], int]:
  """Class name -> image files. With depth 2, classes are `coarse/fine` folder pairs (for hierarchical tasks)."""
  if depth not in (1, 2):
    raise ConfigError(f"dataset.class_depth={depth} is not valid; use 1 (class folders) or 2 (coarse/fine).")
  classes, ignored = {}, 0
  for entry in _visible(folder):
    if not entry.is_dir(follow_symlinks=True):
      continue
    if depth == 1:
      classes[entry.name], n = image_files(entry.path)
      ignored += n
      continue
    fine = [e for e in _visible(entry.path) if e.is_dir(follow_symlinks=True)]
    if not fine:
      raise DataError(f"{entry.path} holds no fine-class folders, but dataset.class_depth=2 expects "
                      "coarse/fine/ folders; add them or set dataset.class_depth=1.")
    for sub in fine:
      classes[f"{entry.name}/{sub.name}"], n = image_files(sub.path)
      ignored += n
  return classes, ignored


def scan(dataset_config) -> Listing:
  """The listing of `dataset.path` with the splits that `train_split` and `eval_split` name."""
  path = os.path.expanduser(dataset_config.path)
  if not path:
    raise ConfigError("dataset.path is empty; set it to a folder with one subfolder of images per class.")
  if not os.path.isdir(path):
    raise DataError(f"dataset.path={dataset_config.path!r} is not a folder; point it at a folder with one "
                    "subfolder of images per class.")
  top = [e.name for e in _visible(path) if e.is_dir(follow_symlinks=True)]
  split_dirs = {name: SPLIT_FOLDERS[name.lower()] for name in top if name.lower() in SPLIT_FOLDERS}
  if split_dirs and "train" in split_dirs.values() and len(split_dirs) == len(top):
    return _scan_split_folders(path, split_dirs, dataset_config)
  return _scan_and_split(path, dataset_config)


def _check_classes(classes: dict[str, list[str]], where: str) -> None:
  if not classes:
    raise DataError(f"{where} has no class subfolders; put each class's images in its own subfolder "
                    "(e.g. cats/1.jpg, dogs/2.jpg).")
  empty = [name for name, files in classes.items() if not files]
  if empty:
    raise DataError(f"Class folder(s) {', '.join(repr(e) for e in empty)} in {where} hold no images (.jpg, .png, "
                    ".bmp, .gif, .webp, .tif); add images or remove the folder.")


def _as_split(classes: dict[str, list[str]], names: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
  paths, labels = [], []
  for k, name in enumerate(names):
    files = classes.get(name, [])
    paths += files
    labels += [k] * len(files)
  return paths, np.asarray(labels, np.int32)


def _scan_split_folders(path: str, split_dirs: dict[str, str], dataset_config) -> Listing:
  """train/, val/, test/ each holding the class folders; classes come from train/."""
  splits, by_split, ignored = {}, {}, 0
  for folder, name in split_dirs.items():
    by_split[name], n = read_classes(os.path.join(path, folder), dataset_config.class_depth)
    ignored += n
  train_dir = os.path.join(path, next(f for f, n in split_dirs.items() if n == "train"))
  _check_classes(by_split["train"], train_dir)
  names = tuple(sorted(by_split["train"]))
  for name, classes in by_split.items():
    unknown = sorted(set(classes) - set(names))
    if unknown:
      raise DataError(f"The {name} split of {path} has class folders {unknown} that train/ lacks; every class "
                      "needs training images (add them to train/ or remove the folders).")
    splits[name] = _as_split(classes, names)
  for key in ("train_split", "eval_split"):
    if split_name(dataset_config[key]) not in splits:
      raise ConfigError(f"dataset.{key}={dataset_config[key]!r} is not a split folder of {path} (it has "
                        f"{', '.join(sorted(split_dirs))}); set dataset.{key} to one of them.")
  return Listing(names, splits, ignored)


def split_name(name: str) -> str:
  """The canonical name of a split ('validation' -> 'val')."""
  return SPLIT_FOLDERS.get(str(name).lower(), str(name))


def _scan_and_split(path: str, dataset_config) -> Listing:
  """Class folders directly under `path`: a seeded stratified train / (val) / test split."""
  classes, ignored = read_classes(path, dataset_config.class_depth)
  _check_classes(classes, path)
  names = tuple(sorted(classes))
  paths, labels = _as_split(classes, names)
  paths = np.asarray(paths, object)
  parts = split.held_out_parts(labels, dataset_config)
  for name, idx in parts.items():
    counts = np.bincount(labels[idx], minlength=len(names))
    if counts.min() == 0:
      empty = names[int(counts.argmin())]
      raise DataError(f"The {name} split leaves class {empty!r} without images ({len(classes[empty])} in all); "
                      "add images to that class or change dataset.test_fraction / val_fraction.")
  for key in ("train_split", "eval_split"):
    if split_name(dataset_config[key]) not in parts:
      raise ConfigError(f"dataset.{key}={dataset_config[key]!r} is not a split of {path} (it has "
                        f"{', '.join(sorted(parts))}; 'val' needs dataset.val_fraction > 0).")
  splits = {name: (list(paths[idx]), labels[idx]) for name, idx in parts.items()}
  return Listing(names, splits, ignored)


def chosen(listing: Listing, dataset_config) -> tuple[tuple[list[str], np.ndarray], tuple[list[str], np.ndarray]]:
  """(train, eval) as (paths, labels) for the configured split names."""
  return (listing.splits[split_name(dataset_config.train_split)],
          listing.splits[split_name(dataset_config.eval_split)])
