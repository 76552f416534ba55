"""The `idx` source: the idx(.gz) files MNIST, Fashion-MNIST, KMNIST and EMNIST ship in.

`dataset.path` is a folder holding `{split}-images-idx3-ubyte[.gz]` and `{split}-labels-idx1-ubyte[.gz]` (the
test split is called `t10k` in the original releases; `test` is accepted too), or a folder plus a file-name prefix
such as `/data/emnist/emnist-balanced` when one folder holds several sets. The files are small (a few tens of MB),
so they are read whole and served by an `ArrayDataset`.
"""

import gzip
import os
import re

import numpy as np

from jaxcls.core import paths
from jaxcls.core.errors import ConfigError, DataError
from jaxcls.data.base import SOURCES
from jaxcls.data.in_memory import ArrayDataset, from_arrays

# idx type byte -> big-endian numpy dtype (the format is defined in LeCun's MNIST page).
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Names a split goes by in the releases: MNIST-style 't10k', EMNIST/KMNIST-style 'test'.
_ALIASES = {"test": ("t10k", "test"), "t10k": ("t10k", "test")}
_FILE = re.compile(
  r"^(?P<prefix>.*?)(?P<split>[A-Za-z0-9]+)-(?P<kind>images|labels)-idx(?P<ndim>\d)-ubyte"
  r"(?:\.gz)?$"
)


FASHION_MNIST_CLASSES = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist


def use_fashion_mnist(dataset_config, path: str = DEBIAN_FASHION_MNIST) -> None:
  """Points a config at the Fashion-MNIST idx files: train / t10k splits, class names, pixel mean and std."""
  dataset_config.name = "idx"
  dataset_config.path = path
  dataset_config.train_split = "train"
  dataset_config.eval_split = "test"  # the files call it t10k
  dataset_config.class_names = FASHION_MNIST_CLASSES
  dataset_config.mean = (0.2860,)
  dataset_config.std = (0.3530,)


@SOURCES.register("idx")
def load(config, *, process_index: int, process_count: int) -> ArrayDataset:
  """Reads the `train_split` and `eval_split` image/label pairs under `dataset.path`."""
  ds = config.dataset
  if not ds.path:
    raise ConfigError(
      "dataset.path is empty; set it to the folder holding the idx files (e.g. train-images-idx3-ubyte.gz)."
    )
  paths.path(ds.path, "dataset.path")  # a malformed URL or a missing backend: one line
  path = ds.path if paths.is_remote(ds.path) else os.path.expanduser(ds.path)
  folder, prefix = (path, "") if paths.path(path).is_dir() else os.path.split(path)
  if not paths.path(folder or ".").is_dir():
    raise DataError(f"dataset.path={ds.path!r} does not exist; point it at the folder holding the idx files.")
  arrays = []
  for key in ("train_split", "eval_split"):
    images_file = find(folder, prefix, ds[key], "images")
    labels_file = find(folder, prefix, ds[key], "labels")
    images, labels = read(images_file), read(labels_file)
    if images.ndim != 3:
      raise DataError(f"{images_file} holds an array of shape {images.shape}; expected [N, height, width] images.")
    if ds.idx_transpose:  # EMNIST stores each image column-major
      images = images.transpose(0, 2, 1)
    if len(images) != len(labels):
      raise DataError(
        f"{images_file} has {len(images)} images but {labels_file} has {len(labels)} labels; use "
        "files from the same release."
      )
    arrays += [images, labels]
  return from_arrays(
    *arrays,
    class_names=ds.class_names,
    image_size=ds.image_size,
    process_index=process_index,
    process_count=process_count,
    source=f"idx ({ds.path})",
  )


def find(folder: str, prefix: str, split: str, kind: str) -> str:
  """The one file of `split` and `kind` ('images' or 'labels') in `folder` whose name starts with `prefix`."""
  names = _ALIASES.get(split, (split,))
  matches = []
  for entry in sorted(child.name for child in paths.path(folder).iterdir()):
    match = _FILE.match(entry)
    if match and entry.startswith(prefix) and match["split"] in names and match["kind"] == kind:
      matches.append(entry)
  # One release may sit there both compressed and not: they hold the same data, prefer the uncompressed one.
  stems = {m[:-3] if m.endswith(".gz") else m for m in matches}
  if len(stems) > 1:
    raise DataError(
      f"{folder} holds several {split} {kind} files ({', '.join(matches)}); add the file-name "
      f"prefix to dataset.path, e.g. {os.path.join(folder, _common_prefix(matches[0]))!r}."
    )
  if not matches:
    raise DataError(
      f"No {split} {kind} idx file in {folder} (expected e.g. {names[0]}-{kind}-idx"
      f"{3 if kind == 'images' else 1}-ubyte.gz); check dataset.path and dataset.train_split/"
      "eval_split."
    )
  return os.path.join(folder, min(matches, key=len))


def _common_prefix(name: str) -> str:
  return _FILE.match(name)["prefix"]


def read(path: str) -> np.ndarray:
  """The array in one idx file (gzip-compressed or not), in native byte order."""
  try:
    with paths.path(path).open("rb") as f:  # local or gs://
      raw = f.read()
    if path.endswith(".gz"):
      raw = gzip.decompress(raw)
  except (OSError, EOFError) as e:
    raise DataError(f"{path} cannot be read ({e}); download the file again.") from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
    raise DataError(
      f"{path} is not an idx file (bad magic number {raw[:4].hex()}); point dataset.path at the "
      "original MNIST-format files."
    )
  ndim = raw[3]
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4")) if len(raw) >= header else ()
  dtype = np.dtype(_DTYPES[raw[2]])
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(shape) != ndim or len(raw) - header != expected:
    raise DataError(
      f"{path} is truncated or corrupt: its header says shape {shape} ({expected} bytes) but it holds "
      f"{max(len(raw) - header, 0)} bytes; download the file again."
    )
  return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
