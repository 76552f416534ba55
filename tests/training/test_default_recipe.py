"""configs/default.py and its yardstick, benchmarks/plain_flax_digits.py: the two must describe the same training.

benchmarks/digits_vs_plain.py times one against the other; these tests keep the plain script's defaults, data
split, normalisation and model equal to jaxcls's, so the ratio it prints compares like with like.
"""

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, subprocess_env

DEFAULT = os.path.join(REPO, "configs", "default.py")


def _module(name: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def plain():
  return _module("plain_flax_digits")


@pytest.fixture(scope="module")
def driver():
  return _module("digits_vs_plain")


def test_plain_defaults_are_the_default_config(plain, driver):
  """Run without flags, the plain script trains what configs/default.py says (as digits_vs_plain passes it)."""
  from_config = plain.parse_args(driver.plain_args(driver.load_config(DEFAULT)))
  assert vars(plain.parse_args([])) == vars(from_config)


def test_plain_args_refuse_what_the_plain_script_lacks(driver):
  config = driver.load_config(DEFAULT)
  config.optimizer.name = "sgd"
  config.augment = "random_crop(padding=1, mode='constant')|flip_lr"
  with pytest.raises(ValueError, match=r"optimizer\.name='sgd'.*flip_lr"):
    driver.plain_args(config)
  config = driver.load_config(DEFAULT)
  config.model.activation = "gelu"
  with pytest.raises(ValueError, match=r"model\.activation='gelu'"):
    driver.plain_args(config)


@pytest.mark.parametrize("size", [None, (16, 16)])
def test_plain_data_is_jaxcls_digits(plain, driver, size):
  """The same split, (resized) pixels and normalisation constants as the digits source."""
  from sklearn.datasets import load_digits

  from jaxcls import data
  from jaxcls.data import split as split_lib

  labels = load_digits().target
  assert all(np.array_equal(a, b) for a, b in zip(plain.split(labels), split_lib.held_out_split(labels, 0.2, 0)))
  config = driver.load_config(DEFAULT)
  config.dataset.image_size = size
  dataset = data.build(config)
  _, _, x_test, y_test, mean, std = plain.load(size[0] if size else 8)
  batch = next(dataset.eval_batches(len(y_test)))
  np.testing.assert_array_equal(batch["image"], x_test)
  np.testing.assert_array_equal(batch["label"], y_test)
  assert dataset.info.mean == (mean,) and dataset.info.std == (std,)


def test_plain_cnn_is_simple_cnn(plain, driver):
  """Same parameter tree, shapes and initial values from the same key, and the same outputs."""
  from jaxcls import models

  config = driver.load_config(DEFAULT)
  ours = plain.CNN(tuple(config.model.widths), config.model.dropout)
  theirs = models.build(config.model, 10, "float32")
  keys = dict(zip(("params", "dropout"), jax.random.split(jax.random.key(0, impl="rbg"))))
  x = jnp.zeros((2, 8, 8, 1))
  ours_v, theirs_v = ours.init(keys, x, train=False), theirs.init(keys, x, train=False)
  assert jax.tree.structure(ours_v) == jax.tree.structure(theirs_v)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ours_v), jax.tree.leaves(theirs_v)))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  np.testing.assert_allclose(
    ours.apply(ours_v, x, train=False), theirs.apply(theirs_v, x, train=False), rtol=1e-6, atol=1e-6
  )


@pytest.mark.slow
def test_plain_script_trains_and_prints_accuracy_last():
  script = os.path.join(REPO, "benchmarks", "plain_flax_digits.py")
  proc = subprocess.run(
    [
      sys.executable,
      script,
      "--widths=4,4",
      "--num_train_steps=3",
      "--warmup_steps=1",
      "--ema_decay=0.5",
      "--label_smoothing=0.1",
    ],
    capture_output=True,
    text=True,
    env=subprocess_env(1),
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  last = proc.stdout.strip().splitlines()[-1].split()
  assert last[0] == "accuracy" and 0.0 <= float(last[1]) <= 1.0
