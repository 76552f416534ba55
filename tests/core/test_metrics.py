"""Host-side exact metrics cross-checked against scikit-learn, including awkward inputs."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxcls.core import metrics


def _random(n=400, k=6, seed=0, ties=False):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, k))
  if ties:
    logits = np.round(logits, 1)  # many exact ties in the scores
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  if ties:
    probs = np.round(probs, 2)
  return probs, rng.integers(0, k, n)


@pytest.mark.parametrize("ties", [False, True])
def test_auc_and_ap_match_sklearn(ties):
  probs, labels = _random(ties=ties)
  k = probs.shape[1]
  result = metrics.one_vs_rest_curves(probs, labels)
  onehot = np.eye(k)[labels]
  for c in range(k):
    assert result["roc_auc"][c] == pytest.approx(skm.roc_auc_score(onehot[:, c], probs[:, c]), abs=1e-12)
    assert result["average_precision"][c] == pytest.approx(
      skm.average_precision_score(onehot[:, c], probs[:, c]), abs=1e-12
    )
  assert result["macro_roc_auc"] == pytest.approx(skm.roc_auc_score(onehot, probs, average="macro"), abs=1e-12)
  assert result["micro_roc_auc"] == pytest.approx(skm.roc_auc_score(onehot, probs, average="micro"), abs=1e-12)
  assert result["macro_average_precision"] == pytest.approx(
    skm.average_precision_score(onehot, probs, average="macro"), abs=1e-12
  )
  assert result["micro_average_precision"] == pytest.approx(
    skm.average_precision_score(onehot, probs, average="micro"), abs=1e-12
  )


def test_absent_class_is_excluded_from_macro():
  probs, labels = _random(k=4)
  labels[labels == 3] = 0
  result = metrics.one_vs_rest_curves(probs, labels)
  assert result["roc_auc"][3] is None and result["average_precision"][3] is None
  onehot = np.eye(4)[labels][:, :3]
  expected = np.mean([skm.roc_auc_score(onehot[:, c], probs[:, c]) for c in range(3)])
  assert result["macro_roc_auc"] == pytest.approx(expected, abs=1e-12)


def test_perfect_and_worst_scores():
  positive = np.array([0, 0, 1, 1, 1], bool)
  assert metrics.roc_auc(np.array([0.1, 0.2, 0.7, 0.8, 0.9]), positive) == 1.0
  assert metrics.roc_auc(np.array([0.9, 0.8, 0.3, 0.2, 0.1]), positive) == 0.0
  assert metrics.roc_auc(np.full(5, 0.5), positive) == 0.5
  assert metrics.average_precision(np.array([0.1, 0.2, 0.7, 0.8, 0.9]), positive) == 1.0
  assert np.isnan(metrics.roc_auc(np.ones(3), np.ones(3, bool)))


@pytest.mark.parametrize("case", ["random", "absent", "single", "perfect"])
def test_precision_recall_f1_match_sklearn(case):
  rng = np.random.default_rng(1)
  k = 5
  y, p = rng.integers(0, k, 300), rng.integers(0, k, 300)
  if case == "absent":
    y[y == 2] = 0
  elif case == "single":
    y[:] = 1
  elif case == "perfect":
    p = y.copy()
  confusion = skm.confusion_matrix(y, p, labels=range(k))
  result = metrics.precision_recall_f1(confusion)
  for avg in ("macro", "micro", "weighted"):
    # Macro averages are over the classes present in the true labels (issue 16 defect 1), the others over all.
    labels = np.unique(y) if avg == "macro" else range(k)
    pr, rc, f1, _ = skm.precision_recall_fscore_support(y, p, labels=labels, average=avg, zero_division=0)
    assert result[f"{avg}_precision"] == pytest.approx(pr, abs=1e-12)
    assert result[f"{avg}_recall"] == pytest.approx(rc, abs=1e-12)
    assert result[f"{avg}_f1"] == pytest.approx(f1, abs=1e-12)
  pr, rc, f1, support = skm.precision_recall_fscore_support(y, p, labels=range(k), zero_division=0)
  np.testing.assert_allclose(result["f1"], f1, atol=1e-12)
  assert result["support"] == support.tolist()


def test_expected_calibration_error_by_hand():
  confidence = np.array([0.95, 0.95, 0.55, 0.55, 0.55, 0.55])
  correct = np.array([1, 1, 1, 0, 0, 0])
  # Bin (0.933, 1]: acc 1.0, conf 0.95, 2 examples; bin (0.533, 0.6]: acc 0.25, conf 0.55, 4 examples.
  expected = (2 * 0.05 + 4 * 0.30) / 6
  assert metrics.expected_calibration_error(confidence, correct) == pytest.approx(expected, abs=1e-12)
  assert metrics.expected_calibration_error(np.ones(4), np.ones(4)) == 0.0


def test_sum_accumulator_is_exact_in_float64():
  acc = metrics.SumAccumulator()
  for _ in range(1000):
    acc.add({"count": jnp.asarray(3, jnp.int32), "value": jnp.asarray(0.1, jnp.float32)})
  result = acc.result()
  assert result["count"] == 3000 and result["count"].dtype == np.int64
  assert result["value"] == pytest.approx(1000 * float(np.float32(0.1)), abs=1e-9)
