"""Tests of jaxcls.data: every source's splits, the resumable train stream, padded eval, and per-process shares."""

import contextlib
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxcls import data
from jaxcls.config.base import get_base_config
from jaxcls.core.errors import ConfigError, DataError
from jaxcls.data import resize, split


def make_config(name="digits", **dataset):
  config = get_base_config()
  config.dataset.name = name
  for key, value in dataset.items():
    config.dataset[key] = value
  return config


def take(stream, n):
  return list(itertools.islice(stream, n))


def indexed_images(n, size=(4, 4)):
  """uint8 images whose first two pixels spell their index, so tests can tell examples apart."""
  images = np.zeros((n,) + size, np.uint8)
  images[:, 0, 0] = np.arange(n) % 256
  images[:, 0, 1] = np.arange(n) // 256
  return images


def ids(images):
  return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 1, 0].astype(int)


# --- digits --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
  return data.build(make_config(), process_index=0, process_count=1)


def test_digits_info_and_split_sizes(digits):
  info = digits.info
  assert (info.num_train, info.num_eval) == (1437, 360)
  assert info.num_classes == 10 and info.class_names == tuple("0123456789")
  assert info.image_shape == (8, 8, 1)
  assert len(info.mean) == len(info.std) == 1 and 0 < info.mean[0] < 1 and info.std[0] > 0
  assert sum(info.train_class_counts) == 1437


def test_digits_split_is_stratified_and_fixed():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  labels = load_digits().target
  train, test = split.held_out_split(labels, 0.2, seed=0)
  assert len(train) == 1437 and len(test) == 360 and not set(train) & set(test)
  expected = np.bincount(labels) * 360 / len(labels)
  assert np.all(np.abs(np.bincount(labels[test]) - expected) < 1)
  np.testing.assert_array_equal(test, split.held_out_split(labels, 0.2, seed=0)[1])
  assert not np.array_equal(test, split.held_out_split(labels, 0.2, seed=1)[1])


def test_digits_values_are_uint8_full_range(digits):
  batch = next(digits.train_batches(256, start_step=0, seed=0))
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (256, 8, 8, 1)
  assert batch["image"].min() == 0 and batch["image"].max() == 255
  assert batch["label"].dtype == np.int32 and batch["mask"].dtype == np.bool_ and batch["mask"].all()


def test_digits_eval_split_train_uses_training_part():
  ds = data.build(make_config(eval_split="train"), process_index=0, process_count=1)
  assert ds.info.num_eval == 1437
  with pytest.raises(ConfigError, match="eval_split"):
    data.build(make_config(eval_split="validation"), process_index=0, process_count=1)


# --- the train stream ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed_npz(tmp_path_factory):
  path = tmp_path_factory.mktemp("indexed") / "all.npz"
  np.savez(path, images=indexed_images(100), labels=np.arange(100) % 5)
  return str(path)


def indexed_dataset(path, process_index=0, process_count=1, **dataset):
  return data.build(
    make_config("arrays", path=path, **dataset), process_index=process_index, process_count=process_count
  )


def test_train_stream_is_deterministic_and_resumes_exactly(digits):
  fresh = take(digits.train_batches(128, start_step=0, seed=3), 25)  # 11 steps per epoch: crosses two epochs
  again = take(digits.train_batches(128, start_step=0, seed=3), 25)
  for a, b in zip(fresh, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  for k in (1, 10, 11, 23):
    resumed = take(digits.train_batches(128, start_step=k, seed=3), 2)
    for j, batch in enumerate(resumed):
      np.testing.assert_array_equal(batch["image"], fresh[k + j]["image"])
      np.testing.assert_array_equal(batch["label"], fresh[k + j]["label"])
  other = next(digits.train_batches(128, start_step=0, seed=4))
  assert not np.array_equal(other["label"], fresh[0]["label"])


def test_each_epoch_covers_distinct_examples_and_reshuffles(indexed_npz):
  ds = indexed_dataset(indexed_npz, test_fraction=0.2)  # 80 training examples
  assert ds.steps_per_epoch(16) == 5
  batches = take(ds.train_batches(16, start_step=0, seed=0), 10)
  epochs = [np.concatenate([ids(b["image"]) for b in batches[e * 5 : (e + 1) * 5]]) for e in range(2)]
  for order in epochs:
    assert len(set(order)) == 80
  assert set(epochs[0]) == set(epochs[1]) and not np.array_equal(epochs[0], epochs[1])


def test_batch_larger_than_dataset_is_a_data_error(indexed_npz):
  ds = indexed_dataset(indexed_npz)
  with pytest.raises(DataError, match="larger than the training split"):
    next(ds.train_batches(128, start_step=0, seed=0))


def test_two_processes_share_each_global_batch(digits):
  shares = [data.build(make_config(), process_index=p, process_count=2) for p in range(2)]
  streams = [s.train_batches(64, start_step=20, seed=1) for s in shares]
  for step, whole in enumerate(take(digits.train_batches(64, start_step=20, seed=1), 5)):
    parts = [next(s) for s in streams]
    assert all(p["image"].shape == (32, 8, 8, 1) for p in parts), step
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), whole["label"])


def test_batch_size_must_divide_by_process_count():
  config = make_config()
  config.batch_size = 63
  with pytest.raises(ConfigError, match="multiple of the process count"):
    data.build(config, process_index=0, process_count=2)
  with pytest.raises(ConfigError, match="multiple of the process count"):
    data.build(make_config(), process_index=0, process_count=2).eval_batches(65)


# --- eval ----------------------------------------------------------------------------------------------------


def test_eval_covers_each_example_once_across_processes(digits):
  whole = list(digits.eval_batches(64))
  assert digits.num_eval_batches(64) == len(whole) == 6
  expected = np.concatenate([b["image"][b["mask"]] for b in whole])
  assert len(expected) == 360
  shares = [data.build(make_config(), process_index=p, process_count=2) for p in range(2)]
  outputs = [list(s.eval_batches(64)) for s in shares]
  assert [len(o) for o in outputs] == [6, 6] and [s.num_eval_batches(64) for s in shares] == [6, 6]
  rows, labels = [], []
  for i in range(6):
    for p in range(2):
      batch = outputs[p][i]
      assert batch["image"].shape == (32, 8, 8, 1) and batch["mask"].shape == (32,)
      rows.append(batch["image"][batch["mask"]])
      labels.append(batch["label"][batch["mask"]])
      assert not batch["image"][~batch["mask"]].any()  # padding is zeros
  assert sum(int(o[-1]["mask"].sum()) for o in outputs) == 360 - 5 * 64
  np.testing.assert_array_equal(np.concatenate(rows), expected)
  np.testing.assert_array_equal(np.concatenate(labels), np.concatenate([b["label"][b["mask"]] for b in whole]))


def test_eval_ids_are_each_seen_once(indexed_npz):
  shares = [indexed_dataset(indexed_npz, process_index=p, process_count=2, eval_split="train") for p in range(2)]
  seen = np.concatenate([ids(b["image"][b["mask"]]) for s in shares for b in s.eval_batches(12)])
  assert sorted(seen) == sorted(
    ids(indexed_images(100)[:, :, :, None])[split.held_out_split(np.arange(100) % 5, 0.2, 0)[0]]
  )


# --- arrays --------------------------------------------------------------------------------------------------


def test_arrays_single_npz_is_split_like_digits(indexed_npz):
  ds = indexed_dataset(indexed_npz)
  assert (ds.info.num_train, ds.info.num_eval, ds.info.num_classes) == (80, 20, 5)
  assert ds.info.image_shape == (4, 4, 1) and ds.info.train_class_counts == (16,) * 5


def test_arrays_folder_of_npz(tmp_path):
  np.savez(
    tmp_path / "train.npz",
    images=indexed_images(30, (6, 5)),
    labels=np.arange(30) % 3,
    class_names=np.array(["a", "b", "c"]),
  )
  np.savez_compressed(tmp_path / "test.npz", images=indexed_images(7, (6, 5)), labels=np.arange(7) % 3)
  ds = indexed_dataset(str(tmp_path))
  assert (ds.info.num_train, ds.info.num_eval) == (30, 7)
  assert ds.info.class_names == ("a", "b", "c") and ds.info.image_shape == (6, 5, 1)
  assert isinstance(ds._train_images, np.memmap)  # np.savez stores members uncompressed: memory-mapped
  assert not isinstance(ds._eval_images, np.memmap)  # compressed members are read into memory
  batch = next(ds.train_batches(10, start_step=1, seed=5))  # the documented order: epoch 0, second batch
  np.testing.assert_array_equal(ids(batch["image"]), np.random.default_rng([5, 0]).permutation(30)[10:20])
  batches = list(ds.eval_batches(4))
  assert len(batches) == 2 and batches[-1]["mask"].tolist() == [True, True, True, False]
  np.testing.assert_array_equal(ids(np.concatenate([b["image"] for b in batches])[:7]), np.arange(7))


def test_arrays_folder_of_npy_pairs_rgb_and_float(tmp_path):
  images = np.random.default_rng(0).random((12, 5, 5, 3)).astype(np.float32)
  np.save(tmp_path / "train_images.npy", images)
  np.save(tmp_path / "train_labels.npy", np.arange(12) % 2)
  np.save(tmp_path / "test_images.npy", images[:4])
  np.save(tmp_path / "test_labels.npy", np.arange(4) % 2)
  ds = indexed_dataset(str(tmp_path))
  assert ds.info.image_shape == (5, 5, 3) and len(ds.info.mean) == 3
  first = next(ds.eval_batches(4))
  np.testing.assert_array_equal(first["image"], np.round(images[:4] * 255).astype(np.uint8))


def test_arrays_errors(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    indexed_dataset(str(tmp_path / "nope.npz"))
  with pytest.raises(ConfigError, match="dataset.path is empty"):
    indexed_dataset("")
  with pytest.raises(DataError, match="Split 'test' is missing"):
    np.savez(tmp_path / "train.npz", images=indexed_images(10), labels=np.arange(10) % 2)
    indexed_dataset(str(tmp_path))
  cases = {
    "negative": (indexed_images(10), np.arange(10) - 1, "negative label -1"),
    "gap": (indexed_images(10), (np.arange(10) % 2) * 2, "skip 1 of 0..2"),
    "floats": (indexed_images(10) * 2.0, np.arange(10) % 2, r"must lie in \[0, 1\]"),
    "float_labels": (indexed_images(10), np.arange(10) % 2 * 1.0, "labels must be integers"),
    "count": (indexed_images(10), np.arange(9) % 2, "one integer label per image"),
    "wide_ints": (indexed_images(10).astype(np.int32) + 250, np.arange(10) % 2, "must lie in 0..255"),
  }
  for name, (images, labels, message) in cases.items():
    path = tmp_path / f"{name}.npz"
    np.savez(path, images=images, labels=labels)
    with pytest.raises(DataError, match=message):
      indexed_dataset(str(path))
  np.savez(tmp_path / "keys.npz", x=indexed_images(10), y=np.arange(10) % 2)
  with pytest.raises(DataError, match="set dataset.image_key"):
    indexed_dataset(str(tmp_path / "keys.npz"))
  assert indexed_dataset(str(tmp_path / "keys.npz"), image_key="x", label_key="y").info.num_train == 8


# --- synthetic, resize, overrides --------------------------------------------------------------------------------


def test_synthetic_shapes_determinism_and_learnable_signal():
  config = make_config(
    "synthetic", image_size=(12, 10), channels=3, num_classes=4, num_train_examples=200, num_eval_examples=50
  )
  ds = data.build(config, process_index=0, process_count=1)
  assert ds.info.image_shape == (12, 10, 3) and (ds.info.num_train, ds.info.num_eval) == (200, 50)
  batch = next(ds.train_batches(200, start_step=0, seed=0))
  again = next(data.build(config, process_index=0, process_count=1).train_batches(200, start_step=0, seed=0))
  np.testing.assert_array_equal(batch["image"], again["image"])
  config.seed = 1
  other = next(data.build(config, process_index=0, process_count=1).train_batches(200, start_step=0, seed=0))
  assert not np.array_equal(batch["image"], other["image"])
  # Nearest class mean classifies most eval images: the label is learnable.
  means = np.stack([batch["image"][batch["label"] == k].mean(0) for k in range(4)]).reshape(4, -1)
  ev = next(ds.eval_batches(50))
  dist = ((ev["image"].reshape(50, 1, -1) - means[None]) ** 2).sum(-1)
  assert (dist.argmin(1) == ev["label"]).mean() > 0.9


def test_synthetic_defaults_to_32x32():
  ds = data.build(make_config("synthetic"), process_index=0, process_count=1)
  assert ds.info.image_shape == (32, 32, 3) and ds.info.num_classes == 10


def test_resize_at_load_time():
  ds = data.build(make_config(image_size=(16, 12)), process_index=0, process_count=1)
  assert ds.info.image_shape == (16, 12, 1)
  assert next(ds.train_batches(32, start_step=0, seed=0))["image"].shape == (32, 16, 12, 1)
  assert next(ds.eval_batches(32))["image"].shape == (32, 16, 12, 1)
  flat = np.full((2, 40, 40, 2), 77, np.uint8)
  assert (resize.resize_images(flat, (10, 10)) == 77).all()  # bilinear keeps constants; also 2 channels
  stripes = np.zeros((1, 40, 40, 3), np.uint8)
  stripes[:, :, ::2] = 255
  small = resize.resize_images(stripes, (10, 10))
  assert abs(float(small.mean()) - 127.5) < 3 and small.std() < 10  # antialiased: no aliasing to 0 or 255
  with pytest.raises(ConfigError, match="image_size"):
    data.build(make_config(image_size=(16, 0)), process_index=0, process_count=1)


def test_config_overrides():
  config = make_config(mean=(0.5,), std=(0.25,), class_names=tuple("abcdefghij"))
  info = data.build(config, process_index=0, process_count=1).info
  assert info.mean == (0.5,) and info.std == (0.25,) and info.class_names[0] == "a"
  rgb = data.build(make_config("synthetic", mean=(0.5,), std=(0.1, 0.2, 0.3)), process_index=0, process_count=1).info
  assert rgb.mean == (0.5,) * 3 and rgb.std == (0.1, 0.2, 0.3)
  with pytest.raises(ConfigError, match="one name per class"):
    data.build(make_config(class_names=("a", "b")), process_index=0, process_count=1)
  with pytest.raises(
    ConfigError,
    match=r"has 2 values, but the images have 3 channels .*give 3 values \(one per "
    r"channel\) or one value for all of them",
  ):
    data.build(make_config("synthetic", mean=(0.5, 0.5)), process_index=0, process_count=1)
  # Defect 7: ImageNet's RGB mean on grayscale images said "has 3 values; give 1 or 1".
  with pytest.raises(
    ConfigError,
    match=r"dataset.mean=\(0.485, 0.456, 0.406\) has 3 values, but the images are "
    r"read with 1 channel \(dataset.channels=1, grayscale\); give one value, e.g. "
    r"dataset.mean=\(0.449,\) .* or set dataset.channels=3",
  ):
    data.build(make_config("synthetic", channels=1, mean=(0.485, 0.456, 0.406)), process_index=0, process_count=1)
  with pytest.raises(ConfigError, match="Unknown dataset 'digit'"):
    data.build(make_config("digit"), process_index=0, process_count=1)


# --- from_iterators ----------------------------------------------------------------------------------------------


def test_from_iterators():
  info = data.DatasetInfo(
    num_classes=3,
    class_names=["x", "y", "z"],
    image_shape=(4, 4, 1),
    num_train=60,
    num_eval=10,
    mean=(0.5,),
    std=(0.5,),
  )

  def train_fn(start_step):
    for step in itertools.count(start_step):
      yield {"image": np.full((8, 4, 4, 1), step % 256, np.uint8), "label": np.arange(8) % 3}

  def eval_fn():
    yield {"image": np.zeros((8, 4, 4, 1), np.uint8), "label": np.zeros(8, np.int64)}
    yield {"image": np.zeros((2, 4, 4, 1), np.uint8), "label": np.ones(2, np.int64)}

  ds = data.from_iterators(info, train_fn, eval_fn, process_index=0, process_count=1)
  assert ds.steps_per_epoch(8) == 7
  batch = next(ds.train_batches(8, start_step=5))
  assert batch["mask"].all() and batch["label"].dtype == np.int32 and batch["image"][0, 0, 0, 0] == 5
  assert ds.num_eval_batches(8) == 2
  batches = list(ds.eval_batches(8))
  assert [b["mask"].sum() for b in batches] == [8, 2] and batches[1]["image"].shape == (8, 4, 4, 1)
  with pytest.raises(DataError, match="expected 16"):
    next(ds.train_batches(16))

  bad = [
    ({"image": np.zeros((8, 4, 4, 1), np.float32), "label": np.zeros(8, int)}, "dtype float32"),
    ({"image": np.zeros((8, 4, 4), np.uint8), "label": np.zeros(8, int)}, "expected \\[8, 4, 4, 1\\]"),
    ({"image": np.zeros((8, 4, 4, 1), np.uint8), "label": np.full(8, 3)}, "must be 0..2"),
    ({"image": np.zeros((8, 4, 4, 1), np.uint8)}, "dict with 'image' and 'label'"),
  ]
  for batch, message in bad:
    ds = data.from_iterators(info, lambda _, b=batch: iter([b]), eval_fn, process_index=0, process_count=1)
    with pytest.raises(DataError, match=message):
      next(ds.train_batches(8))
  with pytest.raises(DataError, match="one name per class"):
    data.DatasetInfo(
      num_classes=2, class_names=("a",), image_shape=(4, 4, 1), num_train=1, num_eval=1, mean=(0.5,), std=(0.5,)
    )


def test_import_does_not_load_tensorflow():
  code = "import sys, jaxcls.data; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


# --- tfds (through tfds.testing.mock_data: no network, no real data) -------------------------------------------

TFDS_SIZES = {"train": 100, "test": 37}
TEST_ID_OFFSET = 1000  # example ids of the test split start here, so the two splits never collide


@pytest.fixture(scope="module")
def mnist_metadata(tmp_path_factory):
  """A data_dir holding only the metadata files of a prepared mnist, with our own split sizes.

  mock_data's USE_CODE policy (the default without metadata) leaves `info.splits` empty, so the split sizes
  that per-process shares and eval padding need come from these files, read under the USE_FILES policy.
  """
  tfds = pytest.importorskip("tensorflow_datasets")
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = tfds.builder("mnist", data_dir=str(data_dir))
  template = lambda name: tfds.core.ShardedFileTemplate(
    data_dir=builder.data_path,
    template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
    dataset_name="mnist",
    split=name,
    filetype_suffix="tfrecord",
  )
  builder.info.set_splits(
    tfds.core.SplitDict(
      [
        tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0, filename_template=template(name))
        for name, n in TFDS_SIZES.items()
      ]
    )
  )
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)
  return str(data_dir)


@pytest.fixture
def mock_mnist(mnist_metadata):
  """mock_data over mnist whose examples carry their id in their first pixels; sub-splits are honoured."""
  with _mock_mnist(mnist_metadata, "png"):
    yield


@pytest.fixture
def mock_mnist_jpeg(mnist_metadata):
  """The same examples stored as JPEG, so the decode_and_crop_jpeg path runs."""
  with _mock_mnist(mnist_metadata, "jpeg"):
    yield


@contextlib.contextmanager
def _mock_mnist(mnist_metadata, image_format):
  tfds = pytest.importorskip("tensorflow_datasets")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  encode = tf.io.encode_png if image_format == "png" else lambda image: tf.io.encode_jpeg(image, quality=100)

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
    del decoders, read_config, shuffle_files, kwargs  # the image always arrives encoded: we SkipDecoding
    indices = []
    for instruction in self.info.splits[split].file_instructions:
      offset = TEST_ID_OFFSET if "-test." in instruction.filename else 0
      take_n = instruction.take if instruction.take >= 0 else instruction.examples_in_shard - instruction.skip
      indices.extend(offset + instruction.skip + i for i in range(take_n))

    def example(i):
      image = tf.zeros((28, 28, 1), tf.uint8)
      image = tf.tensor_scatter_nd_update(image, [[0, 0, 0], [0, 1, 0]], tf.cast([i % 256, i // 256], tf.uint8))
      return {"image": encode(image), "label": i % 10}

    return tf.data.Dataset.from_tensor_slices(tf.constant(indices, tf.int64)).map(example)

  with tfds.testing.mock_data(
    policy=tfds.testing.MockPolicy.USE_FILES, data_dir=mnist_metadata, as_dataset_fn=as_dataset
  ):
    yield


def tfds_dataset(process_index=0, process_count=1, **dataset):
  return data.build(
    make_config("tfds", tfds_name="mnist", **dataset), process_index=process_index, process_count=process_count
  )


def test_tfds_info_train_and_resume(mock_mnist):
  ds = tfds_dataset()
  info = ds.info
  assert (info.num_train, info.num_eval, info.num_classes, info.image_shape) == (100, 37, 10, (28, 28, 1))
  assert info.mean == (0.1307,) and info.class_names[3] == "3"
  assert ds.steps_per_epoch(16) == 6
  fresh = take(ds.train_batches(16, start_step=0, seed=0), 8)
  assert all(b["image"].shape == (16, 28, 28, 1) and b["image"].dtype == np.uint8 and b["mask"].all() for b in fresh)
  epoch0 = np.concatenate([ids(b["image"]) for b in fresh[:6]])
  assert len(set(epoch0)) == 96 and max(epoch0) < 100
  np.testing.assert_array_equal(fresh[0]["label"], ids(fresh[0]["image"]) % 10)
  for k in (3, 7):
    np.testing.assert_array_equal(next(ds.train_batches(16, start_step=k, seed=0))["image"], fresh[k]["image"])


def test_tfds_per_process_shares_and_padded_eval(mock_mnist):
  shares = [tfds_dataset(p, 2) for p in range(2)]
  first = [next(s.train_batches(16, start_step=0, seed=0)) for s in shares]
  assert all(b["image"].shape == (8, 28, 28, 1) for b in first)
  assert max(ids(first[0]["image"])) < 50 <= min(ids(first[1]["image"]))  # disjoint halves of the split
  assert [s.num_eval_batches(16) for s in shares] == [3, 3]  # 19 and 18 examples, 8 per batch
  outputs = [list(s.eval_batches(16)) for s in shares]
  assert [len(o) for o in outputs] == [3, 3]
  assert all(b["image"].shape == (8, 28, 28, 1) and b["mask"].shape == (8,) for o in outputs for b in o)
  seen = np.concatenate([ids(b["image"][b["mask"]]) for o in outputs for b in o])
  assert sorted(seen) == list(range(TEST_ID_OFFSET, TEST_ID_OFFSET + 37))


def test_tfds_resize(mock_mnist):
  ds = tfds_dataset(image_size=(16, 16))
  assert ds.info.image_shape == (16, 16, 1)
  assert next(ds.eval_batches(8))["image"].shape == (8, 16, 16, 1)


def test_tfds_unknown_split(mock_mnist):
  with pytest.raises(ConfigError, match="Split 'validation' is not in"):
    tfds_dataset(eval_split="validation")


def test_tfds_missing_without_download_is_a_data_error(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DataError, match="not prepared.*dataset.download=True"):
    tfds_dataset(data_dir=str(tmp_path))
  with pytest.raises(ConfigError, match="tfds_name is empty"):
    data.build(make_config("tfds"), process_index=0, process_count=1)


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_tfds_random_resized_crop_is_deterministic_per_position(mnist_metadata, image_format):
  with _mock_mnist(mnist_metadata, image_format):
    options = dict(image_size=(12, 12), train_crop="random_resized", eval_crop="center", crop_area=(0.3, 1.0))
    ds = tfds_dataset(**options)
    assert ds.info.image_shape == (12, 12, 1)
    fresh = take(ds.train_batches(16, start_step=0, seed=0), 3)
    assert all(b["image"].shape == (16, 12, 12, 1) for b in fresh)
    np.testing.assert_array_equal(next(ds.train_batches(16, start_step=2, seed=0))["image"], fresh[2]["image"])
    assert next(ds.eval_batches(8))["image"].shape == (8, 12, 12, 1)
    with pytest.raises(ConfigError, match="train_crop"):
      tfds_dataset(image_size=(12, 12), train_crop="inception")


def test_tfds_crop_needs_an_image_size_and_fast_mode_runs(mock_mnist):
  with pytest.raises(ConfigError, match="image_size"):
    tfds_dataset(eval_crop="center")
  batch = next(tfds_dataset(deterministic=False, workers=2).train_batches(16, start_step=0, seed=0))
  assert batch["image"].shape == (16, 28, 28, 1) and batch["mask"].all()


def test_digits_are_read_without_importing_sklearn_and_equal_load_digits():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  from jaxcls.data.sources import digits  # pylint: disable=g-import-not-at-top

  images, labels = digits.read_digits()
  reference = load_digits()
  np.testing.assert_array_equal(images, reference.images)
  np.testing.assert_array_equal(labels, reference.target)
