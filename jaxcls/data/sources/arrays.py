"""The `arrays` source: the user's own numpy arrays on disk.

`dataset.path` is either one .npz file (split into train / held-out test like digits), or a folder holding
`{split}.npz` or `{split}_images.npy` + `{split}_labels.npy` for `train_split` and `eval_split`. An optional
array named by `dataset.group_key` (default 'groups'; `{split}_groups.npy`), one name or number per image, marks
each example's group (site, scanner, ...) for the report's per-group metrics. Arrays are
memory-mapped where the format allows (.npy, and .npz written by `np.savez` without compression), so a process
reads only the rows of its own batches.
"""

import io
import os
import struct
import zipfile

import numpy as np

from jaxcls.core import paths
from jaxcls.core.errors import ConfigError, DataError
from jaxcls.data import split
from jaxcls.data.base import SOURCES
from jaxcls.data.in_memory import ArrayDataset, from_arrays

_CLASS_NAMES_KEY = "class_names"


@SOURCES.register("arrays")
def load(config, *, process_index: int, process_count: int) -> ArrayDataset:
  """Loads `dataset.path` as described in the module docstring."""
  ds = config.dataset
  if not ds.path:
    raise ConfigError("dataset.path is empty; set it to an .npz file or to a folder of {split}.npz files.")
  path = os.fspath(paths.path(ds.path, "dataset.path"))  # a local file or folder, or a gs:// URL
  if paths.path(path).is_file():
    images, labels, class_names, groups = _read_npz(path, ds)
    labels = split.check_labels(images, labels)
    train_idx, eval_idx = split.select_indices(ds, labels)
    arrays = (images[train_idx], labels[train_idx], images[eval_idx], labels[eval_idx])
    eval_groups = None if groups is None else _check_groups(groups, len(labels), path)[eval_idx]
  elif paths.path(path).is_dir():
    train_images, train_labels, class_names, train_groups = _read_split(path, ds.train_split, ds)
    if ds.eval_split == ds.train_split:
      eval_images, eval_labels, groups = train_images, train_labels, train_groups
    else:
      eval_images, eval_labels, _, groups = _read_split(path, ds.eval_split, ds)
    eval_groups = None if groups is None else _check_groups(groups, len(eval_labels), f"{path} ({ds.eval_split})")
    arrays = (train_images, train_labels, eval_images, eval_labels)
  else:
    raise DataError(
      f"dataset.path={ds.path!r} does not exist; point it at an .npz file or a folder of {{split}}.npz files."
    )
  dataset = from_arrays(
    *arrays,
    class_names=class_names,
    image_size=ds.image_size,
    process_index=process_index,
    process_count=process_count,
    source=f"arrays ({ds.path})",
  )
  dataset.eval_groups = eval_groups
  return dataset


def _check_groups(groups: np.ndarray, count: int, where: str) -> np.ndarray:
  """One group name per example, as strings."""
  groups = np.asarray(groups)
  if groups.ndim != 1 or len(groups) != count:
    raise DataError(
      f"{where}: the group array has shape {groups.shape} but there are {count} examples; give one "
      "group name or number per example (or remove the array / change dataset.group_key)."
    )
  return np.asarray([str(g) for g in groups], object)


def _read_split(folder: str, name: str, ds):
  """(images, labels, class_names or None, groups or None) of split `name` from `{name}.npz` or `.npy` files."""
  npz = os.path.join(folder, f"{name}.npz")
  if paths.path(npz).is_file():
    return _read_npz(npz, ds)
  image_file = os.path.join(folder, f"{name}_images.npy")
  label_file = os.path.join(folder, f"{name}_labels.npy")
  group_file = os.path.join(folder, f"{name}_{ds.group_key}.npy")
  if paths.path(image_file).is_file() and paths.path(label_file).is_file():
    groups = _load_npy(group_file) if paths.path(group_file).is_file() else None
    return _load_npy(image_file), _load_npy(label_file), None, groups
  present = ", ".join(sorted(child.name for child in paths.path(folder).iterdir())[:10]) or "nothing"
  raise DataError(
    f"Split {name!r} is missing from {folder}: expected {name}.npz or {name}_images.npy with "
    f"{name}_labels.npy (the folder holds {present}); add the file or set dataset.train_split/"
    "eval_split."
  )


def _load_npy(path: str) -> np.ndarray:
  try:
    if paths.is_remote(path):  # an object is read whole: object stores have no memory map
      return np.load(io.BytesIO(paths.path(path).read_bytes()), allow_pickle=False)
    return np.load(path, mmap_mode="r", allow_pickle=False)
  except ValueError as e:
    raise DataError(
      f"{path} cannot be read as a numeric array ({e}); save it with np.save from a numeric array."
    ) from e


def _read_npz(path: str, ds):
  """(images, labels, class_names or None, groups or None) from an .npz file."""
  image_key, label_key = ds.image_key, ds.label_key
  try:
    archive = zipfile.ZipFile(io.BytesIO(paths.path(path).read_bytes()) if paths.is_remote(path) else path)
  except (zipfile.BadZipFile, OSError) as e:
    raise DataError(f"{path} is not a readable .npz file ({e}); write it with np.savez.") from e
  with archive:
    members = {os.path.splitext(m)[0]: m for m in archive.namelist()}
    for key, what in ((image_key, "image_key"), (label_key, "label_key")):
      if key not in members:
        raise DataError(
          f"{path} has no array {key!r} (it has {', '.join(sorted(members))}); set dataset.{what} to the right name."
        )
    images = _npz_member(path, archive, members[image_key])
    labels = np.asarray(_npz_member(path, archive, members[label_key]))
    class_names = None
    if _CLASS_NAMES_KEY in members:
      class_names = [str(c) for c in np.asarray(_npz_member(path, archive, members[_CLASS_NAMES_KEY])).ravel()]
    groups = None
    if ds.group_key and ds.group_key in members:
      groups = np.asarray(_npz_member(path, archive, members[ds.group_key]))
  return images, labels, class_names, groups


def _npz_member(path: str, archive: zipfile.ZipFile, member: str) -> np.ndarray:
  """One array of the archive: memory-mapped when stored uncompressed, else read into memory."""
  mapped = _map_stored_member(path, archive.getinfo(member))
  if mapped is not None:
    return mapped
  with archive.open(member) as f:
    try:
      return np.lib.format.read_array(f, allow_pickle=False)
    except ValueError as e:
      raise DataError(f"{path}: array {member!r} cannot be read ({e}); store numeric or string arrays.") from e


def _map_stored_member(path: str, info: zipfile.ZipInfo) -> np.ndarray | None:
  """A read-only memory map of an uncompressed .npy inside a zip, or None when that is not possible."""
  if info.compress_type != zipfile.ZIP_STORED or paths.is_remote(path):
    return None
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    header = f.read(30)  # the zip local file header; names and extra fields follow it
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
      return None
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    f.seek(info.header_offset + 30 + name_length + extra_length)
    try:
      version = np.lib.format.read_magic(f)
      read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
      if version not in read_header:
        return None
      shape, fortran_order, dtype = read_header[version](f)
    except ValueError:
      return None
    offset = f.tell()
  if dtype.hasobject or not shape or 0 in shape:
    return None
  return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")
