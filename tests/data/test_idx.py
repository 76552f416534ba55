"""Tests of the `idx` source on idx files written here (plain and gzip, MNIST and EMNIST naming)."""

import gzip
import struct

import numpy as np
import pytest

from jaxcls import data
from jaxcls.config.base import get_base_config
from jaxcls.core.errors import ConfigError, DataError
from jaxcls.data.sources import idx


def write_idx(path, array, compress):
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  payload = header + array.astype(">u1").tobytes()
  with gzip.open(path, "wb") if compress else open(path, "wb") as f:
    f.write(payload)


def write_set(folder, prefix="", test_name="t10k", compress=True, n=(30, 10), size=(6, 5)):
  """Images whose first pixel is their index and whose label is index % 3."""
  rng = np.random.default_rng(0)
  suffix = ".gz" if compress else ""
  for split, count in zip(("train", test_name), n):
    images = rng.integers(0, 256, (count,) + size).astype(np.uint8)
    images[:, 0, 0] = np.arange(count)
    write_idx(folder / f"{prefix}{split}-images-idx3-ubyte{suffix}", images, compress)
    write_idx(folder / f"{prefix}{split}-labels-idx1-ubyte{suffix}", np.arange(count) % 3, compress)


def build(path, **dataset):
  config = get_base_config()
  config.dataset.name = "idx"
  config.dataset.path = str(path)
  for key, value in dataset.items():
    config.dataset[key] = value
  return data.build(config, process_index=0, process_count=1)


@pytest.mark.parametrize("compress", [True, False])
def test_reads_mnist_layout(tmp_path, compress):
  write_set(tmp_path, compress=compress)
  ds = build(tmp_path)
  assert (ds.info.num_train, ds.info.num_eval, ds.info.num_classes) == (30, 10, 3)
  assert ds.info.image_shape == (6, 5, 1)
  batches = list(ds.eval_batches(4))
  images = np.concatenate([b["image"] for b in batches])[:10]
  np.testing.assert_array_equal(images[:, 0, 0, 0], np.arange(10))
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:10], np.arange(10) % 3)


def test_prefix_selects_one_of_several_sets_and_transpose(tmp_path):
  write_set(tmp_path, prefix="emnist-balanced-", test_name="test", size=(4, 4))
  write_set(tmp_path, prefix="emnist-digits-", test_name="test", size=(4, 4))
  with pytest.raises(DataError, match="several train images files"):
    build(tmp_path)
  plain = build(tmp_path / "emnist-digits-")
  flipped = build(tmp_path / "emnist-digits-", idx_transpose=True)
  a, b = next(plain.eval_batches(10))["image"], next(flipped.eval_batches(10))["image"]
  np.testing.assert_array_equal(a.transpose(0, 2, 1, 3), b)


def test_class_names_and_resize(tmp_path):
  write_set(tmp_path)
  ds = build(tmp_path, class_names=("a", "b", "c"), image_size=(8, 8))
  assert ds.info.class_names == ("a", "b", "c") and ds.info.image_shape == (8, 8, 1)


def test_errors(tmp_path):
  with pytest.raises(ConfigError, match="dataset.path is empty"):
    build("")
  with pytest.raises(DataError, match="does not exist"):
    build(tmp_path / "missing" / "x")
  with pytest.raises(DataError, match="No train images idx file"):
    build(tmp_path)
  write_set(tmp_path, compress=False)
  path = tmp_path / "t10k-images-idx3-ubyte"
  path.write_bytes(path.read_bytes()[:-7])
  with pytest.raises(DataError, match="truncated or corrupt"):
    build(tmp_path)
  path.write_bytes(b"\x01\x02\x03\x04")
  with pytest.raises(DataError, match="not an idx file"):
    idx.read(str(path))
  write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(9) % 3, False)
  write_idx(path, np.zeros((10, 6, 5), np.uint8), False)
  with pytest.raises(DataError, match="10 images but .* 9 labels"):
    build(tmp_path)
