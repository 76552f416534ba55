"""Multi-class task: loss and exact eval metrics cross-checked against scikit-learn."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxcls import tasks
from jaxcls.core.errors import ConfigError


def _task(k=5, smoothing=0.0):
  return tasks.build({"type": "multiclass", "label_smoothing": smoothing}, k)


def test_eval_metrics_match_sklearn_with_padding_masked():
  rng = np.random.default_rng(0)
  k, n, pad = 5, 203, 13
  logits = rng.normal(size=(n + pad, k)).astype(np.float32)
  labels = rng.integers(0, k, size=n + pad).astype(np.int32)
  mask = np.arange(n + pad) < n
  task = _task(k)
  # Two uneven batches, as the loop would feed them.
  sums = [
    task.eval_sums(jnp.asarray(logits[s]), jnp.asarray(labels[s]), jnp.asarray(mask[s]))
    for s in (slice(0, 100), slice(100, None))
  ]
  total = {name: np.sum([np.asarray(s[name], np.float64) for s in sums], axis=0) for name in sums[0]}
  result = task.finalize(total)
  y, p = labels[:n], logits[:n]
  probs = np.exp(p - p.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  assert result["num_examples"] == n
  assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)), abs=1e-12)
  assert result["top5_accuracy"] == 1.0
  assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p.argmax(1)), abs=1e-12)
  assert result["loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(k)), abs=1e-6)
  np.testing.assert_array_equal(result["confusion_matrix"], skm.confusion_matrix(y, p.argmax(1), labels=range(k)))


def test_top_k_matches_sklearn():
  rng = np.random.default_rng(1)
  k, n = 12, 300
  logits = rng.normal(size=(n, k)).astype(np.float32)
  labels = rng.integers(0, k, size=n).astype(np.int32)
  task = _task(k)
  sums = task.eval_sums(jnp.asarray(logits), jnp.asarray(labels), jnp.ones(n, bool))
  result = task.finalize({name: np.asarray(v) for name, v in sums.items()})
  expected = skm.top_k_accuracy_score(labels, logits, k=5, labels=range(k))
  assert result["top5_accuracy"] == pytest.approx(expected, abs=1e-12)


def test_label_smoothing_loss():
  task = _task(4, smoothing=0.1)
  logits = jnp.array([[2.0, 0.5, -1.0, 0.0]])
  log_p = np.log(np.exp(np.array(logits[0])) / np.exp(np.array(logits[0])).sum())
  target = np.full(4, 0.1 / 4)
  target[1] += 0.9
  assert float(task.loss(logits, jnp.array([1]))[0]) == pytest.approx(-(target * log_p).sum(), rel=1e-6)


def test_absent_class_has_no_recall():
  task = _task(3)
  logits = jnp.array([[5.0, 0, 0], [0, 5.0, 0]])
  sums = task.eval_sums(logits, jnp.array([0, 1]), jnp.array([True, True]))
  result = task.finalize({name: np.asarray(v) for name, v in sums.items()})
  assert result["per_class_recall"] == [1.0, 1.0, None]
  assert result["balanced_accuracy"] == 1.0


def test_unknown_task_and_bad_smoothing():
  with pytest.raises(ConfigError, match="multiclass"):
    tasks.build({"type": "multiclas"}, 3)
  with pytest.raises(ConfigError, match="label_smoothing"):
    _task(3, smoothing=1.5)
