"""Exact streaming sums over many batches.

Integer sums (counts, confusion matrices) are added on the device, where int32 is exact and nothing waits on the
host; floating sums are kept per batch and added on the host in float64, so that a long eval split loses no
precision to float32 accumulation.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.core import parallel


class SumAccumulator:
  """Adds dicts of per-batch sums without blocking the device until `result()`."""

  def __init__(self):
    self._ints: dict[str, jax.Array] = {}
    self._floats: dict[str, list[jax.Array]] = {}

  def add(self, sums: dict[str, Any]) -> None:
    """Keeps one batch's sums on the device: integer counts added at once (exact), floats kept for `result`."""
    for name, value in sums.items():
      if jnp.issubdtype(value.dtype, jnp.integer):
        self._ints[name] = value if name not in self._ints else self._ints[name] + value
      else:
        self._floats.setdefault(name, []).append(value)

  def result(self) -> dict[str, np.ndarray]:
    """The totals on the host in one transfer: counts as int64, float sums added in float64."""
    ints, floats = parallel.to_host((self._ints, self._floats))  # one transfer for every batch's sums
    out = {name: v.astype(np.int64) for name, v in ints.items()}
    for name, values in floats.items():
      out[name] = np.sum([v.astype(np.float64) for v in values], axis=0)
    return out


class RowGatherer:
  """Collects per-example eval outputs (replicated device arrays) and keeps the rows whose mask is set.

  Fetching waits until `result()`, so evaluation batches keep flowing; every process ends with every row, in
  split order, and so computes the same exact ranking metrics.
  """

  def __init__(self):
    self._batches: list[dict[str, jax.Array]] = []

  def add(self, outputs: dict[str, jax.Array]) -> None:
    """Keeps one batch's outputs (with their 'mask') on the device; nothing is fetched before `result`."""
    self._batches.append(outputs)

  def result(self) -> dict[str, np.ndarray]:
    """Every batch's rows on the host in one transfer, concatenated, without the masked-out rows (and 'mask')."""
    if not self._batches:
      return {}
    host = parallel.to_host(self._batches)
    keep = np.concatenate([np.asarray(b["mask"], bool) for b in host])
    return {name: np.concatenate([b[name] for b in host])[keep] for name in host[0] if name != "mask"}


# --- Finishing on the host, in float64: functions of the confusion matrix and of all eval scores. ---


def divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den with 0 where den == 0 (scikit-learn's zero_division=0)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def precision_recall_f1(confusion: np.ndarray) -> dict[str, Any]:
  """Per-class, macro, micro and support-weighted precision, recall and F1 from a [K, K] (true, pred) matrix.

  Macro averages are over the classes present in the true labels (`macro_classes` of them: scikit-learn's
  `labels=` those classes), the rule balanced accuracy and the macro ROC-AUC / AP follow too: a folder holding a
  few of the trained classes is not charged a zero for each class it does not contain.
  """
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  support = confusion.sum(1)
  predicted = confusion.sum(0)
  precision = divide(tp, predicted)
  recall = divide(tp, support)
  f1 = divide(2 * precision * recall, precision + recall)
  weights = divide(support, np.full_like(support, support.sum()))
  micro = float(tp.sum() / max(confusion.sum(), 1))  # single-label: micro P = R = F1 = accuracy
  present = support > 0
  out = {
    "precision": precision.tolist(),
    "recall": recall.tolist(),
    "f1": f1.tolist(),
    "support": support.astype(np.int64).tolist(),
    "macro_classes": int(present.sum()),
  }
  for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
    out[f"macro_{name}"] = float(values[present].mean()) if present.any() else float("nan")
    out[f"weighted_{name}"] = float((values * weights).sum())
    out[f"micro_{name}"] = micro
  return out


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks with ties given their average rank (as scipy.stats.rankdata(method='average'))."""
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], len(values)]
  ranks = np.empty(len(values), np.float64)
  ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
  return ranks


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Area under the ROC curve (ties count one half, as scikit-learn); NaN when one class is absent."""
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  n_pos, n_neg = positive.sum(), (~positive).sum()
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = _average_ranks(scores)
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
  """Step-wise area under the precision-recall curve, thresholds at distinct scores (scikit-learn's AP)."""
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  n_pos = positive.sum()
  if n_pos == 0:
    return float("nan")
  order = np.argsort(-scores, kind="mergesort")
  s, p = scores[order], positive[order]
  last_of_tie = np.r_[s[1:] != s[:-1], True]
  tp = np.cumsum(p)[last_of_tie]
  fp = np.cumsum(~p)[last_of_tie]
  precision = tp / (tp + fp)
  recall = tp / n_pos
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def one_vs_rest_curves(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
  """ROC-AUC and average precision per class, macro (over classes with both outcomes) and micro."""
  probs = np.asarray(probs, np.float64)
  num_classes = probs.shape[1]
  onehot = np.asarray(labels)[:, None] == np.arange(num_classes)[None, :]
  auc = np.array([roc_auc(probs[:, k], onehot[:, k]) for k in range(num_classes)])
  ap = np.array([average_precision(probs[:, k], onehot[:, k]) for k in range(num_classes)])

  def mean(values):
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")

  as_list = lambda values: [None if np.isnan(v) else float(v) for v in values]
  return {
    "roc_auc": as_list(auc),
    "average_precision": as_list(ap),
    "macro_roc_auc": mean(auc),
    "macro_average_precision": mean(ap),
    "micro_roc_auc": roc_auc(probs.ravel(), onehot.ravel()),
    "micro_average_precision": average_precision(probs.ravel(), onehot.ravel()),
  }


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, num_bins: int = 15) -> float:
  """Σ_b (n_b / N) |accuracy_b - mean confidence_b| over equal-width confidence bins (Guo et al., 2017)."""
  confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
  if len(confidence) == 0:
    return float("nan")
  bins = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)  # (lo, hi] bins
  total = np.bincount(bins, minlength=num_bins)
  gap = np.abs(np.bincount(bins, correct, num_bins) - np.bincount(bins, confidence, num_bins))
  return float(gap.sum() / len(confidence)) if total.sum() else float("nan")


# --- Undefined metrics: None (null in report.json, 'undefined' in report.md) with the reason, never NaN. ---

_warned: set = set()


def mark_undefined(result: dict[str, Any], reasons: dict[str, str], default: str) -> dict[str, Any]:
  """Replaces every NaN metric of `result` with None and records why in `result['undefined']` ({name: reason}).

  `reasons` maps a part of a metric's name ('roc_auc', 'average_precision', ...) to the reason; others get
  `default`. A warning names the metrics and the reason (once per process for the same set). NaN would print
  as a number, break strict JSON readers and hide that the eval data cannot define the metric.
  """
  undefined = {}
  for name, value in result.items():
    if isinstance(value, float) and value != value:  # NaN
      undefined[name] = next((why for part, why in reasons.items() if part in name), default)
  if not undefined:
    return result
  for name in undefined:
    result[name] = None
  result["undefined"] = undefined
  key = tuple(sorted(undefined.items()))
  if key not in _warned:
    _warned.add(key)
    from absl import logging  # pylint: disable=g-import-not-at-top

    by_reason: dict[str, list[str]] = {}
    for name, why in undefined.items():
      by_reason.setdefault(why, []).append(name)
    for why, names in by_reason.items():
      logging.warning("%s undefined: %s; reported as null in report.json.", ", ".join(names), why)
  return result


def class_composition(support, class_names=None) -> str:
  """'the 40 eval examples are all of class 'cat'' and the like, for the reasons of undefined metrics."""
  support = np.asarray(support, np.int64)
  total = int(support.sum())
  present = np.flatnonzero(support > 0)
  if total == 0:
    return "the eval split has no examples"
  if len(present) == 1:
    k = int(present[0])
    name = repr(class_names[k]) if class_names is not None and k < len(class_names) else str(k)
    return f"the {total} eval examples are all of one class ({name}), so there is nothing to rank against"
  return f"{len(present)} of {len(support)} classes have eval examples"
