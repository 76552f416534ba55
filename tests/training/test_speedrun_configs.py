"""The speedrun configs load, validate and train end to end on stand-in data: Fashion-MNIST through idx files
written here (the real source code path), CIFAR-10 through `tfds.testing.mock_data` (the real tfds path, no
download). Only the data, the batch, the step count and the width change (and Fashion-MNIST's dtype, see there);
model, task, optimizer and augmentation are the configs' own."""

import gzip
import importlib.util
import os
import struct

import jax
import numpy as np
import pytest
from conftest import REPO, set_keys

from jaxcls.config import check as config_check
from jaxcls.training import loop as train


def load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def shrink(config, **extra):
  """Two tiny steps of the config: a small batch, a narrow model, warmup that fits, and `extra` keys."""
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_epochs = 0
  config.num_train_steps = 2
  config.optimizer.warmup_steps = 1
  config.log_every_steps = 1
  config.prefetch_to_device = 0
  config.async_checkpointing = False
  return set_keys(config, extra)


@pytest.mark.parametrize("name", ["fashion_mnist_speedrun", "cifar10_speedrun"])
def test_config_validates_and_keeps_the_fast_choices(name):
  config = load(name)
  config_check.validate(config)
  assert config.dtype == "bfloat16"
  assert config.eval_every_steps > 10**6 and config.checkpoint_every_steps > 10**6  # one eval, at the end
  assert 0 < config.optimizer.warmup_steps < config.num_epochs * 60_000 / config.batch_size


def test_cifar10_speedrun_converts_airbench_hyperparameters():
  config = load("cifar10_speedrun")
  assert config.model.name == "airbench94"
  assert config.optimizer.learning_rate == pytest.approx(1.5)  # 11.5 / (1 + 1 / 0.15) per 1024-example mean loss
  assert config.optimizer.weight_decay == pytest.approx(0.0153 / (1 + 1 / 0.15) / 0.15 / 1.5)
  assert (config.optimizer.momentum, config.task.label_smoothing, config.batch_size) == (0.85, 0.2, 1024)


def _write_idx(folder, split, images, labels):
  for kind, array in (("images", images), ("labels", labels)):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(os.path.join(folder, f"{split}-{kind}-idx{array.ndim}-ubyte.gz"), "wb") as f:
      f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.slow
def test_fashion_mnist_speedrun_trains_on_idx_files(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / "fmnist"
  folder.mkdir()
  _write_idx(str(folder), "train", rng.integers(0, 256, (48, 28, 28)), np.arange(48) % 10)
  _write_idx(str(folder), "t10k", rng.integers(0, 256, (20, 28, 28)), np.arange(20) % 10)
  # float32: XLA's CPU backend compiles a bfloat16 ResNet-18 several times slower (the CIFAR test covers bf16).
  config = shrink(load("fashion_mnist_speedrun"), **{"dataset.path": str(folder), "model.width": 8, "dtype": "float32"})
  result = train.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert result["step"] == 2 and result["num_examples"] == 20
  assert np.isfinite(result["loss"])


CIFAR_SIZES = {"train": 48, "test": 20}


@pytest.fixture
def mock_cifar10(tmp_path):
  """mock_data serving PNG-encoded random 32x32 images under cifar10's name, with our split sizes."""
  tfds = pytest.importorskip("tensorflow_datasets")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  data_dir = tmp_path / "tfds"
  builder = tfds.builder("cifar10", data_dir=str(data_dir))
  template = lambda name: tfds.core.ShardedFileTemplate(
    data_dir=builder.data_path,
    template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
    dataset_name="cifar10",
    split=name,
    filetype_suffix="tfrecord",
  )
  builder.info.set_splits(
    tfds.core.SplitDict(
      [
        tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0, filename_template=template(name))
        for name, n in CIFAR_SIZES.items()
      ]
    )
  )
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
    del decoders, read_config, shuffle_files, kwargs  # jaxcls asks for the encoded image (SkipDecoding)
    count = sum(
      i.take if i.take >= 0 else i.examples_in_shard - i.skip for i in self.info.splits[split].file_instructions
    )

    def example(i):
      image = tf.random.stateless_uniform((32, 32, 3), seed=[i, 0], maxval=256, dtype=tf.int32)
      return {"image": tf.io.encode_png(tf.cast(image, tf.uint8)), "label": i % 10}

    return tf.data.Dataset.range(count).map(example)

  with tfds.testing.mock_data(
    policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(data_dir), as_dataset_fn=as_dataset
  ):
    yield str(data_dir)


@pytest.mark.slow
def test_cifar10_speedrun_trains_through_tfds_mock_data(mock_cifar10, tmp_path):
  config = shrink(
    load("cifar10_speedrun"),
    **{"dataset.data_dir": mock_cifar10, "model.widths": (8, 16, 16), "dataset.shuffle_buffer": 64},
  )
  result = train.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert result["step"] == 2 and result["num_examples"] == CIFAR_SIZES["test"]
  assert np.isfinite(result["loss"])
  assert result["model"] == "airbench94"


def test_cifar10_speedrun_muon_converts_airbench94_muon_hyperparameters():
  from jaxcls import models  # pylint: disable=g-import-not-at-top

  config = load("cifar10_speedrun_muon")
  config_check.validate(config)
  o = config.optimizer
  assert (o.name, o.learning_rate, o.muon_momentum, o.muon_ns_steps, o.nesterov) == ("muon", 0.24, 0.6, 3, True)
  assert o.muon_normalize_weights and (o.muon_fallback, o.momentum) == ("sgd", 0.85)
  # The head's 0.67 for a summed loss over 2000 examples, logits / 256 and std-1 weights; jaxcls's head scales by 1/9.
  assert models.model_arguments("airbench94")["scale"] == pytest.approx(1 / 9)
  assert o.muon_fallback_learning_rate == pytest.approx(0.67 * 2000 * (9 / 256) ** 2)
  assert o.weight_decay == pytest.approx(2e-6 * 2000 / 0.15 / o.muon_fallback_learning_rate)
  assert (o.schedule, o.warmup_steps, o.end_learning_rate_factor) == ("linear", 0, 0.0)
  assert (config.batch_size, config.task.label_smoothing, config.dtype) == (2000, 0.2, "bfloat16")
  assert (config.model.name, config.eval_tta) == ("airbench94", "flip_translate")
  assert config.eval_every_steps > 10**6 and config.checkpoint_every_steps > 10**6


@pytest.mark.slow
def test_cifar10_speedrun_muon_trains_its_network(tmp_path):
  # The tfds input path is the test above's; this one adds Muon (with airbench's weight normalisation) on the
  # airbench94 network, on synthetic 16x16 images so that it stays cheap.
  config = shrink(
    load("cifar10_speedrun_muon"),
    **{
      "dataset.name": "synthetic",
      "dataset.image_size": (16, 16),
      "dataset.num_train_examples": 64,
      "dataset.num_eval_examples": 32,
      "model.widths": (8, 16, 16),
      "dtype": "float32",
      "eval_tta": "none",
    },
  )
  result = train.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert result["step"] == 2 and result["num_examples"] == 32
  assert np.isfinite(result["loss"])
  with open(tmp_path / "run" / "config.json") as f:
    assert '"muon_normalize_weights": true' in f.read()
