"""Evaluation figures: valid PNGs of sensible size for 10 and 100 classes, curve points equal to scikit-learn's."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from jaxcls.evaluation import plots


def _check_png(path, min_side=300, max_side=6000):
  with Image.open(path) as image:
    assert image.format == "PNG"
    width, height = image.size
    image.load()  # decodes the whole file: a truncated PNG fails here
  assert min_side <= width <= max_side and min_side <= height <= max_side, (width, height)
  return width, height


def _scores(n, k, seed=0, ties=False):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k))
  logits[np.arange(n), labels] += 1.0
  if ties:
    logits = np.round(logits)
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return probs, labels


@pytest.mark.parametrize("ties", [False, True])
def test_curve_points_match_sklearn(ties):
  probs, labels = _scores(300, 3, ties=ties)
  scores, positive = probs[:, 1], labels == 1
  if ties:
    scores = np.round(scores, 1)
  for drop in (True, False):
    expected = skm.roc_curve(positive, scores, drop_intermediate=drop)
    for got, want in zip(plots.roc_points(scores, positive, drop_intermediate=drop), expected):
      np.testing.assert_allclose(got, want, atol=1e-12)
  for got, want in zip(plots.pr_points(scores, positive), skm.precision_recall_curve(positive, scores)):
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_curve_points_perfect_and_single_class():
  positive = np.array([0, 0, 1, 1], bool)
  fpr, tpr, _ = plots.roc_points(np.array([0.1, 0.2, 0.8, 0.9]), positive)
  np.testing.assert_array_equal(fpr, [0, 0, 0, 1])
  np.testing.assert_array_equal(tpr, [0, 0.5, 1, 1])
  with pytest.warns(UserWarning):
    want = skm.precision_recall_curve(np.zeros(4, bool), np.array([0.1, 0.4, 0.4, 0.9]))
  for got, expected in zip(plots.pr_points(np.array([0.1, 0.4, 0.4, 0.9]), np.zeros(4, bool)), want):
    np.testing.assert_allclose(got, expected)


@pytest.mark.parametrize("k", [10, 100])
def test_confusion_matrix_png(tmp_path, k):
  rng = np.random.default_rng(k)
  confusion = rng.integers(0, 20, (k, k)) + np.diag(rng.integers(50, 100, k))
  confusion[3] = 0  # a class absent from the eval split: its normalised row stays 0
  names = [f"class_{i}" for i in range(k)]
  path = plots.confusion_matrix(confusion, names, str(tmp_path / "plots" / "confusion.png"))
  width, height = _check_png(path)
  assert width > height  # counts and normalised side by side


@pytest.mark.parametrize("k", [10, 100])
def test_curves_and_f1_png(tmp_path, k):
  probs, labels = _scores(400, k, seed=k)
  names = [f"c{i}" for i in range(k)]
  _check_png(plots.roc_pr_curves(probs, labels, names, str(tmp_path / "roc.png")))
  f1 = np.random.default_rng(0).uniform(size=k).tolist()
  f1[2] = None  # undefined for an absent class
  _check_png(plots.per_class_f1(f1, names, str(tmp_path / "f1.png")))


def test_binary_and_multilabel_curves_png(tmp_path):
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 200)
  _check_png(plots.roc_pr_curves(rng.uniform(size=200) * 0.5 + 0.5 * y, y, None, str(tmp_path / "binary.png")))
  multi_hot = (rng.uniform(size=(200, 4)) < 0.3).astype(int)
  multi_hot[:, 2] = 0  # a label never present is skipped, not drawn as NaN
  probs = np.clip(rng.uniform(size=(200, 4)) * 0.6 + 0.4 * multi_hot, 0, 1)
  _check_png(plots.roc_pr_curves(probs, multi_hot, ["a", "b", "c", "d"], str(tmp_path / "multilabel.png")))


def test_training_curves_png(tmp_path):
  lines = [json.dumps({"step": s, "train/loss": 2.0 / s, "train/accuracy": 1 - 1.0 / s}) for s in range(1, 50)]
  lines += [json.dumps({"step": s, "eval/loss": 2.5 / s, "eval/accuracy": 1 - 1.2 / s}) for s in (10, 20, 40)]
  metrics_path = tmp_path / "metrics.jsonl"
  metrics_path.write_text("\n".join(lines) + '\n{"step": 5')  # a torn last line, as after a kill
  _check_png(plots.training_curves(str(metrics_path), str(tmp_path / "curves.png")))
  assert len(plots.read_metrics(str(metrics_path))) == len(lines)


@pytest.mark.parametrize("channels", [1, 3])
def test_misclassified_grid_png(tmp_path, channels):
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (50, 16, 16, channels), dtype=np.uint8)
  labels = rng.integers(0, 10, 50)
  predictions = np.where(rng.uniform(size=50) < 0.5, labels, (labels + 1) % 10)
  names = [f"digit {i}" for i in range(10)]
  _check_png(plots.misclassified_grid(images, labels, predictions, names, str(tmp_path / "wrong.png")))
  _check_png(plots.misclassified_grid(images, labels, labels, names, str(tmp_path / "none.png")), min_side=100)


def test_write_all(tmp_path):
  probs, labels = _scores(200, 4)
  confusion = skm.confusion_matrix(labels, probs.argmax(1), labels=range(4))
  metrics_path = tmp_path / "metrics.jsonl"
  metrics_path.write_text(json.dumps({"step": 1, "train/loss": 1.0, "eval/accuracy": 0.5}) + "\n")
  report = {"confusion_matrix": confusion.tolist(), "accuracy": 0.5}
  paths = plots.write_all(
    str(tmp_path / "plots"), report, {"probs": probs, "labels": labels}, list("abcd"), str(metrics_path)
  )
  assert [p.rsplit("/", 1)[-1] for p in paths] == [
    "confusion.png",
    "per_class_f1.png",
    "roc_pr.png",
    "training_curves.png",
  ]
  for path in paths:
    _check_png(path)


def test_core_imports_without_matplotlib():
  code = "import sys, jaxcls.evaluation.plots; assert 'matplotlib' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True)
