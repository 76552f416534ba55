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
  sums, outputs = jax.tree.map(np.asarray, (task.eval_sums(logits, labels, mask),
                                            task.eval_outputs(logits, labels, mask)))
  return task.finalize({k: v.astype(np.int64) if v.dtype.kind == "i" else v.astype(np.float64)
                        for k, v in sums.items()}, outputs)


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
        score(labels, predicted, average="weighted", zero_division=0), abs=1e-12)
    assert result[f"micro_{name}"] == pytest.approx(skm.accuracy_score(labels, predicted), abs=1e-12)
  assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, predicted), abs=1e-12)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1), np.float64)
  onehot = labels[:, None] == np.arange(k)
  assert result["macro_roc_auc"] == pytest.approx(
      skm.roc_auc_score(onehot[:, present], probs[:, present], average="macro"), abs=1e-9)
  assert result["macro_average_precision"] == pytest.approx(
      skm.average_precision_score(onehot[:, present], probs[:, present], average="macro"), abs=1e-9)
  # Per-class values stay those of every class (scikit-learn's labels=range(K), average=None).
  np.testing.assert_allclose(result["f1"], skm.f1_score(labels, predicted, labels=range(k), average=None,
                                                        zero_division=0), atol=1e-12)
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
