"""The hierarchical report: the leaf per-class table and one confusion matrix per coarser level, checked against
scikit-learn on the level labels mapped through the tree, written as report.json, report.md and plots/ figures."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from jaxcls import tasks
from jaxcls.evaluation import loop

# Three levels: kingdom, group, leaf. 'dog' gets no eval example, 'bird' is the lone child of 'animal/bird'.
ANCESTORS = (("animal", "mammal"), ("animal", "mammal"), ("animal", "bird"), ("vehicle", "car"), ("vehicle", "car"))
NAMES = ("cat", "dog", "owl", "sedan", "coupe")
PAD = 5


def _report(n=160, seed=3):
  """finalize() of one padded eval batch (the padding rows masked out), and what it was computed from."""
  task = tasks.build({"type": "hierarchical", "tree": ANCESTORS, "class_names": NAMES}, 5)
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 5, n).astype(np.int32)
  labels[labels == 1] = 0
  logits = rng.normal(size=(n, task.num_outputs)).astype(np.float32)
  logits[np.arange(n), 5 + labels] += 1.0
  padded_logits = np.concatenate([logits, rng.normal(size=(PAD, task.num_outputs)).astype(np.float32)])
  padded_labels = np.concatenate([labels, rng.integers(0, 5, PAD).astype(np.int32)])
  mask = np.arange(n + PAD) < n
  step = jax.jit(lambda *args: (task.eval_sums(*args), task.eval_outputs(*args)))
  sums, outputs = step(jnp.asarray(padded_logits), jnp.asarray(padded_labels), jnp.asarray(mask))
  sums = {k: np.asarray(v) for k, v in sums.items()}
  outputs = {k: np.asarray(v)[mask] for k, v in outputs.items()}
  pred = np.asarray(jax.jit(task.predict)(jnp.asarray(logits)))
  return task, task.finalize(sums, outputs), outputs, labels, pred


def test_leaf_table_and_level_confusions_match_sklearn():
  task, report, _, labels, pred = _report()
  # The leaf classes: scikit-learn's per-class precision, recall, F1 and support over all five classes.
  precision, recall, f1, support = skm.precision_recall_fscore_support(labels, pred, labels=range(5), zero_division=0)
  np.testing.assert_allclose(report["precision"], precision, atol=1e-12)
  np.testing.assert_allclose(report["recall"], recall, atol=1e-12)
  np.testing.assert_allclose(report["f1"], f1, atol=1e-12)
  assert report["support"] == support.tolist() and report["support"][1] == 0
  present = np.unique(labels)
  assert report["macro_f1"] == pytest.approx(
    skm.f1_score(labels, pred, labels=present, average="macro", zero_division=0), abs=1e-12
  )
  assert report["macro_classes"] == len(present) == 4
  assert report["confusion_matrix"] == skm.confusion_matrix(labels, pred, labels=range(5)).tolist()
  # Each coarser level: the ancestors of the true and predicted leaves, named by the tree's nodes.
  paths = task.tree.path_array()
  expected_names = {0: ["animal", "vehicle"], 1: ["mammal", "bird", "car"]}
  for level, names in expected_names.items():
    true_l, pred_l = paths[labels, level], paths[pred, level]
    assert report[f"level{level}_class_names"] == names
    assert (
      report[f"level{level}_confusion_matrix"]
      == skm.confusion_matrix(true_l, pred_l, labels=range(len(names))).tolist()
    )
  assert "level2_confusion_matrix" not in report  # the leaf level is `confusion_matrix`
  json.dumps(report, allow_nan=False)  # strict JSON: no NaN left in the new keys


def test_report_files_and_level_figures(tmp_path):
  task, report, outputs, labels, pred = _report()
  report.update(split="test", step=7)
  folder = tmp_path / "eval"
  figures = loop.write_report(str(folder), report, outputs, list(NAMES), task=task)
  names = sorted(p.rsplit("/", 1)[-1] for p in figures)
  assert {"confusion.png", "confusion_level0.png", "confusion_level1.png", "per_class_f1.png"} <= set(names)
  assert "confusion_level2.png" not in names
  for name in ("confusion.png", "confusion_level0.png", "confusion_level1.png"):
    with Image.open(folder / "plots" / name) as image:
      assert image.format == "PNG" and min(image.size) >= 300
      image.load()
  written = json.loads((folder / "report.json").read_text())
  assert written["level0_confusion_matrix"] == report["level0_confusion_matrix"]
  assert written["level1_class_names"] == ["mammal", "bird", "car"]
  markdown = (folder / "report.md").read_text()
  # The leaf table: one row per class, as in a multi-class report (dog: no examples, n/a recall).
  assert "## Per class" in markdown and "| class | examples | precision | recall | F1 |" in markdown
  precision, recall, f1, support = skm.precision_recall_fscore_support(labels, pred, labels=range(5), zero_division=0)
  for i, name in enumerate(NAMES):
    shown_recall = "n/a" if support[i] == 0 else f"{recall[i]:.4f}"
    assert f"| {name} | {support[i]} | {precision[i]:.4f} | {shown_recall} | {f1[i]:.4f} |" in markdown
  # One table per coarser level, its rows the level's nodes.
  paths = task.tree.path_array()
  for level, heading in ((0, "## Level 0 (coarsest) of the class tree"), (1, "## Level 1 of the class tree")):
    assert heading in markdown
    true_l, pred_l = paths[labels, level], paths[pred, level]
    nodes = report[f"level{level}_class_names"]
    p, r, f, s = skm.precision_recall_fscore_support(true_l, pred_l, labels=range(len(nodes)), zero_division=0)
    for i, node in enumerate(nodes):
      assert f"| {node} | {s[i]} | {p[i]:.4f} | {r[i]:.4f} | {f[i]:.4f} |" in markdown
  assert "![confusion_level0.png](plots/confusion_level0.png)" in markdown
