"""Issue 16's evaluation defects: one rule for macro averages (1), one report folder per data path (2), and the
misclassified grid's choice of images (3), each checked against scikit-learn or on plain arrays."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxcls import tasks
from jaxcls.evaluation import loop, report
from jaxcls.store import workdir as workdir_lib


def _finalize(task, logits, labels):
  """The task's report over these logits, as the eval loop computes it (sums, then outputs, then finalize)."""
  logits, labels = jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.int32)
  mask = jnp.ones(len(labels), bool)
  sums, outputs = jax.tree.map(
    np.asarray, (task.eval_sums(logits, labels, mask), task.eval_outputs(logits, labels, mask))
  )
  return task.finalize(
    {k: v.astype(np.int64) if v.dtype.kind == "i" else v.astype(np.float64) for k, v in sums.items()}, outputs
  )


# ------------------------------------------------------------------------------- defect 1: macro averages


def test_macro_averages_on_a_subset_of_the_classes_are_over_the_present_classes(tmp_path):
  rng = np.random.default_rng(0)
  k, n = 6, 200
  labels = rng.choice([0, 2, 3, 5], n)  # classes 1 and 4 have no eval example
  logits = rng.normal(size=(n, k)).astype(np.float32)
  logits[np.arange(n), labels] += 1.5
  logits[:7, 4] += 6.0  # class 4 is predicted a few times although absent
  task = tasks.build({"type": "multiclass"}, k)
  result = _finalize(task, logits, labels)
  predicted = logits.argmax(1)
  present = np.unique(labels)
  assert result["macro_classes"] == 4
  for name, score in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
    expected = score(labels, predicted, labels=present, average="macro", zero_division=0)
    assert result[f"macro_{name}"] == pytest.approx(expected, abs=1e-12), name
    # Weighted and micro averages are unchanged by the rule (absent classes weigh 0; micro is accuracy).
    assert result[f"weighted_{name}"] == pytest.approx(
      score(labels, predicted, average="weighted", zero_division=0), abs=1e-12
    )
    assert result[f"micro_{name}"] == pytest.approx(skm.accuracy_score(labels, predicted), abs=1e-12)
  assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, predicted), abs=1e-12)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1), np.float64)
  onehot = labels[:, None] == np.arange(k)
  assert result["macro_roc_auc"] == pytest.approx(
    skm.roc_auc_score(onehot[:, present], probs[:, present], average="macro"), abs=1e-9
  )
  assert result["macro_average_precision"] == pytest.approx(
    skm.average_precision_score(onehot[:, present], probs[:, present], average="macro"), abs=1e-9
  )
  # Per-class values stay those of every class (scikit-learn's labels=range(K), average=None).
  np.testing.assert_allclose(
    result["f1"], skm.f1_score(labels, predicted, labels=range(k), average=None, zero_division=0), atol=1e-12
  )
  # The rule and the count are stated in both reports.
  final = {"step": 1, "split": "new", **result}
  report.write(str(tmp_path), final, [f"c{i}" for i in range(k)])
  assert json.loads((tmp_path / "report.json").read_text())["macro_classes"] == 4
  md = (tmp_path / "report.md").read_text()
  assert "| macro_classes | 4 |" in md and "are over the 4 of 6 classes present in the eval labels" in md


def test_all_classes_present_keeps_the_usual_macro_average():
  rng = np.random.default_rng(1)
  labels = np.r_[np.arange(4), rng.integers(0, 4, 96)]
  logits = rng.normal(size=(100, 4)).astype(np.float32)
  result = _finalize(tasks.build({"type": "multiclass"}, 4), logits, labels)
  assert result["macro_classes"] == 4
  assert result["macro_f1"] == pytest.approx(skm.f1_score(labels, logits.argmax(1), average="macro"), abs=1e-12)


# ------------------------------------------------------------------------- defect 2: one folder per data path


def test_each_data_path_has_its_own_stable_report_folder(tmp_path, monkeypatch):
  root = str(tmp_path / "run")
  a, b = str(tmp_path / "A" / "new"), str(tmp_path / "B" / "new")
  deeper_a = str(tmp_path / "x" / "A" / "new")
  names = {workdir_lib.eval_folder(root, p).name for p in (a, b, deeper_a)}
  assert len(names) == 3
  assert workdir_lib.eval_folder(root, a).name.startswith("eval_A_new_")
  assert workdir_lib.eval_folder(root, b).name.startswith("eval_B_new_")
  # The same folder, however it is written, maps to the same report folder (evaluating it again updates it).
  monkeypatch.chdir(tmp_path)
  assert workdir_lib.eval_folder(root, "A/new/") == workdir_lib.eval_folder(root, a)
  assert workdir_lib.eval_folder(root, "gs://bucket/A/new").name.startswith("eval_A_new_")
  assert workdir_lib.eval_folder(root, "gs://bucket/A/new") != workdir_lib.eval_folder(root, "gs://other/A/new")
  # The evaluate command's default: an explicit --output_dir still wins.
  assert loop.output_folder(root, None, a) == os.fspath(workdir_lib.eval_folder(root, a))
  assert loop.output_folder(root, str(tmp_path / "mine"), a) == str(tmp_path / "mine")
  assert loop.output_folder(root, None, None) == root


# ------------------------------------------------------------------ defect 3: which mistakes the grid shows


def test_the_grid_takes_mistakes_of_many_classes_most_confident_first():
  # 40 mistakes of class 0 come first in eval order; classes 1, 2 and 3 have a few each.
  labels = np.r_[np.zeros(40, int), [1, 1, 1, 2, 2, 3, 3, 3], np.arange(4)]
  predicted = np.r_[np.ones(40, int), [0, 2, 0, 0, 1, 0, 0, 1], np.arange(4)]  # the last 4 are right
  confidence = np.r_[np.linspace(0.5, 0.9, 40), [0.6, 0.95, 0.7, 0.4, 0.8, 0.55, 0.65, 0.99], np.ones(4)]
  rows = loop.select_misclassified(labels, predicted, confidence, max_images=9)
  assert len(rows) == 9 and np.all(predicted[rows] != labels[rows])
  # Round one: each class's most confident mistake, classes by that confidence; then the second of each, ...
  assert rows[:4].tolist() == [47, 41, 39, 44]
  assert rows[4:8].tolist() == [46, 42, 38, 43]
  assert rows[8] == 45
  assert set(labels[rows]) == {0, 1, 2, 3}
  for k in range(4):  # within a class, the most confident first
    mine = confidence[rows[labels[rows] == k]]
    assert np.all(np.diff(mine) <= 0)
  # Fewer mistakes than the grid holds: all of them, and none when nothing is wrong.
  assert sorted(loop.select_misclassified(labels, predicted, confidence, 100).tolist()) == list(range(48))
  assert loop.select_misclassified(labels, labels, confidence, 9).tolist() == []


def test_the_grid_and_groups_use_the_tasks_decision_not_an_argmax():
  names = ("cat", "dog")
  task = tasks.build({"type": "binary", "threshold": 0.8, "positive_class": "cat", "class_names": names}, 2)
  probs = np.array([0.9, 0.7, 0.2, 0.85], np.float32)  # P(cat)
  labels = np.array([0, 0, 1, 1])
  predicted = task.decide(probs)
  assert predicted.tolist() == [0, 1, 1, 0]  # P(cat) 0.7 is below the 0.8 threshold: dog
  confidence = loop.decided_confidence(task, names, probs)
  np.testing.assert_allclose(confidence, [0.9, 0.3, 0.8, 0.85], rtol=1e-6)
  rows = loop.select_misclassified(labels, predicted, confidence, 36)
  assert rows.tolist() == [3, 1]  # dog taken for cat at 0.85, then cat for dog at 0.3
  from jaxcls.evaluation import group_metrics

  groups = ["a", "a", "b", "b"]
  by_group = group_metrics.per_group({"labels": labels, "probs": probs}, groups, 2, predicted=predicted)
  assert by_group["groups"]["a"]["accuracy"] == 0.5 and by_group["groups"]["b"]["accuracy"] == 0.5
  # Multi-class: the probability of the decided class.
  multi = tasks.build({"type": "multiclass"}, 3)
  np.testing.assert_allclose(
    loop.decided_confidence(multi, "abc", np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])), [0.5, 0.6]
  )
