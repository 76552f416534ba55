"""Class imbalance: weighted loss math, class-balanced sampling, exact resume with it, the class table."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Interrupted, InterruptedAt

from jaxcls import data, tasks
from jaxcls.core.errors import ConfigError
from jaxcls.tasks.multiclass import resolve_class_weights
from jaxcls.training import loop as train


def _imbalanced(n_major=500, n_minor=50, size=4):
  rng = np.random.default_rng(0)
  labels = np.array([0] * n_major + [1] * n_minor, np.int32)
  images = rng.integers(0, 256, (len(labels), size, size, 1), dtype=np.uint8)
  images[labels == 1] //= 2  # learnable: class 1 is darker
  return data.from_arrays(images, labels, images[:40], labels[:40], class_names=("common", "rare"))


def test_balanced_weights_are_inverse_frequency_with_mean_one_over_examples():
  weights = resolve_class_weights("balanced", (500, 50, 0), 3)
  np.testing.assert_allclose(weights, [550 / (2 * 500), 550 / (2 * 50), 0.0])
  assert np.dot(weights, (500, 50, 0)) / 550 == pytest.approx(1.0)
  assert resolve_class_weights("none", None, 3) == "none"
  assert resolve_class_weights("(1, 2, 3)", None, 3) == (1.0, 2.0, 3.0)
  with pytest.raises(ConfigError, match="class counts"):
    resolve_class_weights("balanced", None, 3)
  with pytest.raises(ConfigError, match="class_weights"):
    resolve_class_weights((1.0, 2.0), None, 3)
  with pytest.raises(ConfigError, match="class_weights"):
    resolve_class_weights("inverse", (1, 2, 3), 3)


def test_weighted_loss_math_with_hard_soft_and_smoothed_labels():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
  plain = tasks.build({"type": "multiclass"}, 3)
  weighted = tasks.build({"type": "multiclass", "class_weights": (1.0, 3.0, 0.5)}, 3)
  labels = jnp.array([0, 1])
  np.testing.assert_allclose(
    weighted.loss(logits, labels), plain.loss(logits, labels) * jnp.array([1.0, 3.0]), rtol=1e-6
  )
  soft = jnp.array([[0.25, 0.75, 0.0], [0.0, 0.5, 0.5]])  # after Mixup: the mixed weight
  np.testing.assert_allclose(weighted.loss(logits, soft), plain.loss(logits, soft) * jnp.array([2.5, 1.75]), rtol=1e-6)
  smooth = tasks.build({"type": "multiclass", "label_smoothing": 0.3}, 3)
  np.testing.assert_allclose(smooth.targets(soft), soft * 0.7 + 0.1, rtol=1e-6)  # Mixup + smoothing
  np.testing.assert_allclose(smooth.targets(labels), jax.nn.one_hot(labels, 3) * 0.7 + 0.1, rtol=1e-6)


def test_balanced_sampling_evens_out_a_10_to_1_dataset():
  ds = _imbalanced()
  uniform = np.concatenate([b["label"] for b, _ in zip(ds.train_batches(50, seed=1), range(40))])
  stream = ds.with_sampling("balanced").train_batches(50, seed=1)
  balanced = np.concatenate([b["label"] for b, _ in zip(stream, range(40))])
  assert np.mean(uniform == 1) == pytest.approx(50 / 550, abs=0.02)
  assert np.mean(balanced == 1) == pytest.approx(0.5, abs=0.05)
  assert ds.sampling == "uniform"  # with_sampling returns a copy
  with pytest.raises(ConfigError, match="sampling"):
    ds.with_sampling("oversample")


def test_balanced_stream_is_a_function_of_seed_and_step():
  """Resume restarts the stream at the checkpoint step: it must yield what the uninterrupted stream did."""
  ds = _imbalanced().with_sampling("balanced")
  full = [b["label"] for b, _ in zip(ds.train_batches(50, seed=3), range(25))]  # 11 steps per epoch
  resumed = [b["label"] for b, _ in zip(ds.train_batches(50, start_step=13, seed=3), range(12))]
  for a, b in zip(full[13:], resumed):
    np.testing.assert_array_equal(a, b)
  hosts = [_imbalanced().with_sampling("balanced") for _ in range(2)]
  for p, h in enumerate(hosts):
    h.process_index, h.process_count = p, 2
  first = [next(h.train_batches(50, start_step=5, seed=3))["label"] for h in hosts]
  np.testing.assert_array_equal(np.concatenate(first), full[5])


@pytest.mark.slow
def test_training_with_weights_and_balanced_sampling_resumes_exactly(make_config, tmp_path):
  overrides = {
    "dataset.sampling": "balanced",
    "task.class_weights": (1.0, 2.0, 0.5, 1.5),  # costs: explicit weights stay allowed with balanced batches
    "num_train_steps": 6,
    "checkpoint_every_steps": 3,
    "eval_every_steps": 6,
  }
  config = make_config(**overrides)
  train.train_and_evaluate(config, str(tmp_path / "full"))
  # Preempted right after the step-3 checkpoint, then the same command again.
  with pytest.raises(Interrupted):
    train.train_and_evaluate(config, str(tmp_path / "resumed"), dataset=InterruptedAt(data.build(config), 4))
  train.train_and_evaluate(config, str(tmp_path / "resumed"))

  def losses(name):
    with open(os.path.join(tmp_path, name, "metrics.jsonl")) as f:
      return {r["step"]: r["train/loss"] for r in map(json.loads, f) if "train/loss" in r}

  assert sorted(losses("full")) == list(range(1, 7))
  assert losses("resumed") == pytest.approx(losses("full"), rel=1e-6)


def test_class_table_and_sampling_errors(make_config, tmp_path):
  info = _imbalanced().info
  table = train.class_table(info, resolve_class_weights("balanced", info.train_class_counts, 2))
  assert "common" in table and "rare" in table and "90.9%" in table and "5.500" in table
  assert "unknown" in train.class_table(data.DatasetInfo(2, ("a", "b"), (4, 4, 1), 10, 10, (0.5,), (0.2,)), "none")
  with pytest.raises(ConfigError, match="dataset.sampling"):
    train.train_and_evaluate(make_config(**{"dataset.sampling": "weighted"}), str(tmp_path))
