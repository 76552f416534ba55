"""Per-group metrics (checked against scikit-learn) and their way from an arrays source into the report."""

import json
import os

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxcls.evaluation import group_metrics, report


def test_single_label_groups_match_scikit_learn():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 300)
  probs = rng.dirichlet(np.ones(4), 300)
  groups = rng.choice(["site_a", "site_b", "site_c"], 300)
  result = group_metrics.per_group({"labels": labels, "probs": probs}, groups, 4)
  predicted = probs.argmax(1)
  assert result["metric"] == "accuracy"
  for name in ("site_a", "site_b", "site_c"):
    rows = groups == name
    row = result["groups"][name]
    assert row["num_examples"] == rows.sum()
    assert row["accuracy"] == pytest.approx(skm.accuracy_score(labels[rows], predicted[rows]), abs=1e-12)
    assert row["balanced_accuracy"] == pytest.approx(
      skm.balanced_accuracy_score(labels[rows], predicted[rows]), abs=1e-12
    )
    assert row["macro_f1"] == pytest.approx(
      skm.f1_score(labels[rows], predicted[rows], average="macro", zero_division=0), abs=1e-12
    )
  accuracies = {n: r["accuracy"] for n, r in result["groups"].items()}
  assert result["worst_group"] == min(accuracies, key=accuracies.get)
  assert result["gap"] == pytest.approx(max(accuracies.values()) - min(accuracies.values()))


def test_a_group_missing_classes_uses_only_its_own_classes_like_scikit_learn():
  labels = np.array([0, 0, 1, 2, 2, 2])
  probs = np.eye(3)[[0, 1, 1, 2, 2, 0]]
  groups = np.array(["a", "a", "a", "b", "b", "b"])
  result = group_metrics.per_group({"labels": labels, "probs": probs}, groups, 3)
  b = groups == "b"
  # The report's one rule: macro over the classes present in the group's labels (class 0 is only predicted).
  assert (
    result["groups"]["b"]["macro_f1"]
    == pytest.approx(skm.f1_score(labels[b], probs[b].argmax(1), labels=[2], average="macro", zero_division=0))
    == 0.8
  )
  assert result["groups"]["b"]["balanced_accuracy"] == pytest.approx(
    skm.balanced_accuracy_score(labels[b], probs[b].argmax(1))
  )


def test_binary_and_multilabel_groups_use_the_thresholds():
  labels = np.array([1, 1, 0, 0])
  probs = np.array([0.7, 0.4, 0.2, 0.6])  # positive-class probabilities
  groups = np.array([1, 1, 2, 2])  # numbers are group names too
  result = group_metrics.per_group({"labels": labels, "probs": probs}, groups, 2, threshold=0.5)
  assert result["groups"]["1"]["accuracy"] == 0.5 and result["groups"]["2"]["accuracy"] == 0.5
  result = group_metrics.per_group({"labels": labels, "probs": probs}, groups, 2, threshold=0.3)
  assert result["groups"]["1"]["accuracy"] == 1.0 and result["groups"]["2"]["accuracy"] == 0.5

  rng = np.random.default_rng(1)
  sets = rng.random((200, 5)) < 0.3
  scores = rng.random((200, 5))
  thresholds = (0.5, 0.4, 0.6, 0.5, 0.7)
  groups = rng.choice(["x", "y"], 200)
  result = group_metrics.per_group({"labels": sets.astype(np.int32), "probs": scores}, groups, 5, thresholds=thresholds)
  predicted = scores >= np.asarray(thresholds)
  assert result["metric"] == "subset_accuracy"
  for name in ("x", "y"):
    rows = groups == name
    row = result["groups"][name]
    assert row["subset_accuracy"] == pytest.approx(skm.accuracy_score(sets[rows], predicted[rows]))
    assert row["hamming_loss"] == pytest.approx(skm.hamming_loss(sets[rows], predicted[rows]))
    assert row["macro_f1"] == pytest.approx(skm.f1_score(sets[rows], predicted[rows], average="macro", zero_division=0))


def test_group_count_must_match_the_examples():
  assert group_metrics.per_group({"labels": np.zeros(3, int), "probs": np.ones((3, 2)) / 2}, ["a"] * 2, 2) is None


def test_report_markdown_shows_per_class_worst_classes_spread_and_groups(tmp_path):
  final = {
    "step": 7,
    "split": "test",
    "accuracy": 0.5,
    "per_class_recall": [1.0, 0.0, None],
    "precision": [0.5, 0.0, 0.0],
    "recall": [1.0, 0.0, 0.0],
    "f1": [2 / 3, 0.0, 0.0],
    "support": [2, 2, 0],
    "confusion_matrix": [[2, 0, 0], [2, 0, 0], [0, 0, 0]],
    "per_group": {
      "metric": "accuracy",
      "worst_group": "b",
      "gap": 1.0,
      "groups": {"a": {"num_examples": 2, "accuracy": 1.0}, "b": {"num_examples": 2, "accuracy": 0.0}},
    },
  }
  report.write(str(tmp_path), final, ["cat", "dog", "eel"])
  text = (tmp_path / "report.md").read_text()
  assert "| dog | 2 | 0.0000 | 0.0000 | 0.0000 |" in text
  assert "## Worst classes (lowest F1)" in text and "| dog | 0.0000 | 2 |" in text
  assert "eel" not in text.split("## Worst classes")[1].split("##")[0]  # absent classes are not 'worst'
  assert "from 0.0000 (dog) to 1.0000 (cat): a gap of 1.0000" in text
  assert "| b | 2 | 0.0000 |" in text and "Worst group by accuracy: b" in text
  saved = json.loads((tmp_path / "report.json").read_text())
  assert saved["recall_spread"]["min_class"] == "dog" and saved["recall_spread"]["gap"] == 1.0


def test_arrays_source_groups_reach_the_training_report(tmp_path, make_config):
  from jaxcls.training import loop as train

  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (160, 8, 8, 3), dtype=np.uint8)
  labels = rng.integers(0, 3, 160)
  groups = np.where(np.arange(160) % 2, "clinic_a", "clinic_b")
  np.savez(tmp_path / "data.npz", images=images, labels=labels, groups=groups)
  config = make_config(
    **{
      "dataset.name": "arrays",
      "dataset.path": str(tmp_path / "data.npz"),
      "dataset.image_size": None,
      "num_train_steps": 4,
      "eval_every_steps": 4,
      "checkpoint_every_steps": 4,
      "augment": "",
    }
  )
  workdir = str(tmp_path / "run")
  final = train.train_and_evaluate(config, workdir)
  groups_report = final["per_group"]["groups"]
  assert set(groups_report) == {"clinic_a", "clinic_b"}
  assert sum(g["num_examples"] for g in groups_report.values()) == final["num_examples"]
  weighted = sum(g["accuracy"] * g["num_examples"] for g in groups_report.values()) / final["num_examples"]
  assert weighted == pytest.approx(final["accuracy"])
  assert "## Per group" in open(os.path.join(workdir, "report.md")).read()
