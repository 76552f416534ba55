"""Per-group metrics: how the model does on each subgroup of the eval split (hospital, scanner, region, ...).

A model can look good overall and fail one group; the report shows each group's figures and the gap between
the best and the worst, so that such bias is visible. Groups come with the data (an array source's `groups`
array, a folder label file's `group` column) as one name per eval example, in split order, which is also the
order of the gathered eval outputs.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcls.core import metrics


def single_label_predictions(outputs: dict, threshold: float = 0.5) -> np.ndarray | None:
  """Each example's predicted class for single-label outputs (binary: positive probability vs the threshold)."""
  probs, labels = outputs.get("probs"), outputs.get("labels")
  if probs is None or labels is None or np.ndim(labels) != 1:
    return None
  probs = np.asarray(probs)
  if probs.ndim == 1:
    return (probs >= threshold).astype(np.int64)
  return probs.argmax(1)


def _single_label_group(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict[str, Any]:
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, predicted), 1)
  support = confusion.sum(1)
  present = support > 0
  recall = np.diag(confusion)[present] / support[present]
  scores = metrics.precision_recall_f1(confusion)
  # Macro F1 over the classes present in this group's labels: the report's one rule for macro averages.
  return {
    "num_examples": int(len(labels)),
    "accuracy": float(np.mean(labels == predicted)),
    "balanced_accuracy": float(recall.mean()),
    "macro_f1": scores["macro_f1"],
  }


def _multilabel_group(labels: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
  labels, predicted = labels.astype(bool), predicted.astype(bool)
  tp = (labels & predicted).sum(0)
  fp = (~labels & predicted).sum(0)
  fn = (labels & ~predicted).sum(0)
  f1 = metrics.divide(2 * tp, 2 * tp + fp + fn)
  return {
    "num_examples": int(len(labels)),
    "subset_accuracy": float(np.mean(np.all(labels == predicted, 1))),
    "hamming_loss": float(np.mean(labels != predicted)),
    "macro_f1": float(f1.mean()),
  }


def per_group(
  outputs: dict,
  groups: Sequence[str],
  num_classes: int,
  *,
  threshold: float = 0.5,
  thresholds=None,
  predicted: np.ndarray | None = None,
) -> dict[str, Any] | None:
  """{'groups': {name: metrics}, 'worst_group', 'gap'} for the eval outputs, or None without usable outputs.

  `predicted` is each example's decision (`task.decide` of its probabilities: class ids, or label sets); the eval
  loop passes it so that groups are scored on the task's own decisions. Without it, `thresholds` (one per label,
  or one for all) turns multi-label probabilities into label sets and `threshold` is the binary decision
  threshold on the probability of class 1. The headline metric is accuracy (subset accuracy for multi-label sets); `gap`
  is its best minus its worst group value.
  """
  labels, probs = outputs.get("labels"), outputs.get("probs")
  groups = np.asarray([str(g) for g in groups], object)
  if labels is None or probs is None or len(groups) != len(labels) or not len(labels):
    return None
  labels = np.asarray(labels)
  if labels.ndim == 2:  # multi-label sets
    cut = np.broadcast_to(np.asarray(0.5 if thresholds is None else thresholds, np.float64), labels.shape[1:])
    predicted = np.asarray(probs) >= cut if predicted is None else np.asarray(predicted, bool)
    headline = "subset_accuracy"
    one = lambda rows: _multilabel_group(labels[rows], predicted[rows])
  else:
    predicted = single_label_predictions(outputs, threshold) if predicted is None else np.asarray(predicted, np.int64)
    headline = "accuracy"
    one = lambda rows: _single_label_group(labels[rows], predicted[rows], num_classes)
  table = {str(name): one(groups == name) for name in sorted(set(groups))}
  values = {name: row[headline] for name, row in table.items()}
  worst = min(values, key=values.get)
  return {"metric": headline, "groups": table, "worst_group": worst, "gap": float(max(values.values()) - values[worst])}
