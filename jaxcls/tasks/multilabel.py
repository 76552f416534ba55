"""Multi-label classification: K independent sigmoid outputs, each with its own decision threshold.

Labels are multi-hot [B, K] (soft values from Mixup are fine as targets; eval labels count as positive at >= 0.5).
The per-example loss is summed over labels, not averaged: positives are sparse, so a mean would shrink the signal
per positive as K grows, and the focal and asymmetric losses are defined as sums. Metrics follow scikit-learn's
multilabel definitions: subset (exact-match) accuracy, Hamming loss, per-label, macro and micro scores.
"""

import ast
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.core import metrics
from jaxcls.core.errors import ConfigError
from jaxcls.core.metrics import divide
from jaxcls.tasks import TASKS, binary, check_field
from jaxcls.tasks.base import Task, top_classes

LOSSES = ("bce", "focal", "asymmetric")


@TASKS.register("multilabel")
@dataclasses.dataclass(frozen=True)
class MultiLabel(Task):
  """A set of labels per example: K independent sigmoids, each label present at or above its threshold."""

  single_label: ClassVar[bool] = False
  num_classes: int
  # Not `loss`: that name is the task's loss method.
  loss_type: str = "bce"
  focal_gamma: float = 2.0
  # Asymmetric loss (Ridnik et al., 2021): easy negatives are down-weighted harder and shifted by the clip.
  asl_gamma_neg: float = 4.0
  asl_gamma_pos: float = 0.0
  asl_clip: float = 0.05
  # One probability for all labels, or one per label.
  thresholds: float | tuple = 0.5

  def __post_init__(self):
    check_field("loss_type", self.loss_type, LOSSES)
    for name in ("focal_gamma", "asl_gamma_neg", "asl_gamma_pos"):
      if float(getattr(self, name)) < 0:
        raise ConfigError(f"config.task.{name}={getattr(self, name)!r} must be >= 0.")
    if not 0.0 <= float(self.asl_clip) < 1.0:
      raise ConfigError(f"config.task.asl_clip={self.asl_clip!r} must be in [0, 1).")
    object.__setattr__(self, "thresholds", check_thresholds(self.thresholds, self.num_classes))

  def loss(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example loss [B]: the chosen binary loss summed over labels."""
    x = logits.astype(jnp.float32)
    y = targets.astype(jnp.float32)
    log_p, log_not_p = jax.nn.log_sigmoid(x), jax.nn.log_sigmoid(-x)
    if self.loss_type == "bce":
      per_label = -(y * log_p + (1 - y) * log_not_p)
    elif self.loss_type == "focal":  # Lin et al., 2017: (1 - p_t)^gamma * BCE
      p = jax.nn.sigmoid(x)
      p_t = y * p + (1 - y) * (1 - p)
      per_label = -(y * log_p + (1 - y) * log_not_p) * _power(1 - p_t, self.focal_gamma)
    else:
      p = jax.nn.sigmoid(x)
      p_neg = jnp.maximum(p - self.asl_clip, 0.0)  # probability shifting: very easy negatives cost nothing
      log_not_p_neg = jnp.log(jnp.maximum(1 - p_neg, 1e-8)) if self.asl_clip else log_not_p
      per_label = -(
        y * _power(1 - p, self.asl_gamma_pos) * log_p + (1 - y) * _power(p_neg, self.asl_gamma_neg) * log_not_p_neg
      )
    return jnp.sum(per_label, axis=-1)

  def probabilities(self, logits: jax.Array) -> jax.Array:
    """One sigmoid per label [B, K] (they need not sum to 1)."""
    return jax.nn.sigmoid(logits.astype(jnp.float32))

  def predict(self, logits: jax.Array) -> jax.Array:
    """Multi-label: a boolean label set [B, K], each label on at or above its threshold."""
    return self.probabilities(logits) >= jnp.asarray(self.thresholds, jnp.float32)

  def decide(self, probs: np.ndarray) -> np.ndarray:
    """The label set: True where a label's probability reaches its threshold (float32, as on the device)."""
    return np.asarray(probs, np.float32) >= np.asarray(self.thresholds, np.float32)

  def train_metrics(self, logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Multi-label: subset accuracy (every label right) and Hamming loss, per example."""
    wrong = self.predict(logits) != (labels >= 0.5)
    return {
      "accuracy": 1.0 - jnp.any(wrong, -1).astype(jnp.float32),
      "hamming_loss": jnp.mean(wrong.astype(jnp.float32), -1),
    }

  def eval_sums(self, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Per-label true/false positive/negative counts at the thresholds and exact matches, over the valid rows."""
    pred = self.predict(logits)
    truth = labels >= 0.5
    valid = mask[:, None]
    count = lambda x: jnp.sum(x & valid, axis=0).astype(jnp.int32)
    return {
      "loss_sum": jnp.sum(self.loss(logits, labels) * mask.astype(jnp.float32)),
      "count": jnp.sum(mask).astype(jnp.int32),
      "exact": jnp.sum(jnp.all(pred == truth, -1) & mask).astype(jnp.int32),
      "tp": count(pred & truth),
      "fp": count(pred & ~truth),
      "fn": count(~pred & truth),
      "tn": count(~pred & ~truth),
    }

  def eval_outputs(self, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Multi-label: logits, probabilities and 0/1 labels [B, K], for the per-label ranking metrics."""
    del mask  # the loop keeps only the valid rows
    logits = logits.astype(jnp.float32)
    return {"logits": logits, "probs": jax.nn.sigmoid(logits), "labels": (labels >= 0.5).astype(jnp.int32)}

  def decision_thresholds(self) -> dict:
    """Multi-label: the per-label thresholds, so group metrics decide as the task does."""
    return {"thresholds": self.thresholds}

  def prediction_record(self, class_names, probs: np.ndarray, top_k: int) -> dict:
    """The labels at or above their thresholds (most probable first) as `labels`, and the top-k for reference."""
    probs = np.asarray(probs, np.float32)
    above = np.flatnonzero(self.decide(probs))
    above = above[np.argsort(-probs[above], kind="stable")]
    labels = [[class_names[i], float(probs[i])] for i in above]
    return {
      "prediction": ";".join(name for name, _ in labels),
      "probability": None,
      "top_k": top_classes(class_names, probs, top_k),
      "labels": labels,
    }

  def export_metadata(self, class_names) -> dict:
    """Multi-label: probabilities [B, K] and one threshold per label (a single threshold repeated)."""
    thresholds = np.broadcast_to(np.asarray(self.thresholds, np.float64), (len(class_names),))
    return {"output": "probabilities [B, K]", "thresholds": [float(t) for t in thresholds]}

  def finalize(self, sums: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None = None) -> dict:
    """Multi-label: subset accuracy, Hamming loss, per-label/macro/micro precision, recall and F1, ranking metrics."""
    count = int(sums["count"])
    tp, fp, fn, tn = (np.asarray(sums[k], np.float64) for k in ("tp", "fp", "fn", "tn"))
    precision, recall = divide(tp, tp + fp), divide(tp, tp + fn)
    f1 = divide(2 * tp, 2 * tp + fp + fn)
    micro_p, micro_r = divide(tp.sum(), tp.sum() + fp.sum()), divide(tp.sum(), tp.sum() + fn.sum())
    result = {
      "num_examples": count,
      "loss": float(sums["loss_sum"]) / max(count, 1),
      "accuracy": int(sums["exact"]) / max(count, 1),  # subset accuracy, as scikit-learn's accuracy_score
      "subset_accuracy": int(sums["exact"]) / max(count, 1),  # the same, by its own name
      "hamming_loss": float((fp + fn).sum()) / max(count * self.num_classes, 1),
      "precision": precision.tolist(),
      "recall": recall.tolist(),
      "f1": f1.tolist(),
      "support": (tp + fn).astype(np.int64).tolist(),
      "macro_precision": float(precision.mean()),
      "macro_recall": float(recall.mean()),
      "macro_f1": float(f1.mean()),
      "micro_precision": float(micro_p),
      "micro_recall": float(micro_r),
      "micro_f1": float(divide(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
    }
    if outputs is not None:
      result.update(ranking_metrics(outputs["logits"], outputs["probs"], outputs["labels"]))
    outcomes = (
      "the eval split has no examples"
      if not count
      else "no label has both positive and negative eval examples, so there is nothing to rank against"
    )
    return metrics.mark_undefined(result, {}, outcomes)


def ranking_metrics(logits: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> dict:
  """Per-label, macro and micro ROC-AUC and AP, mean binary log loss, ECE, and each label's best-F1 threshold.

  Macro averages skip labels without both outcomes (scikit-learn refuses them); they are None per label.
  """
  logits = np.asarray(logits, np.float64)
  probs = np.asarray(probs)
  positive = np.asarray(labels).astype(bool)
  k = logits.shape[1]
  auc = np.array([metrics.roc_auc(logits[:, j], positive[:, j]) for j in range(k)])
  ap = np.array([metrics.average_precision(logits[:, j], positive[:, j]) for j in range(k)])
  best = [binary.best_f1_threshold(probs[:, j], positive[:, j]) for j in range(k)]
  confidence = np.maximum(probs, 1.0 - probs).ravel()
  return {
    "roc_auc": _as_list(auc),
    "average_precision": _as_list(ap),
    "macro_roc_auc": _nanmean(auc),
    "macro_average_precision": _nanmean(ap),
    "micro_roc_auc": metrics.roc_auc(logits.ravel(), positive.ravel()),
    "micro_average_precision": metrics.average_precision(logits.ravel(), positive.ravel()),
    "log_loss": float(np.mean(np.logaddexp(0.0, logits) - positive * logits)) if logits.size else float("nan"),
    "ece": metrics.expected_calibration_error(confidence, ((probs >= 0.5) == positive).ravel()),
    "best_f1_thresholds": [None if np.isnan(t) else t for t, _ in best],
    "best_f1": [f for _, f in best],
  }


def check_thresholds(value, num_classes: int) -> float | tuple[float, ...]:
  """A probability, or one per label, each in (0, 1); a ConfigError otherwise."""
  if isinstance(value, str):
    try:  # '(0.3, 0.5)' from a command line
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
  try:
    values = float(value) if np.ndim(value) == 0 else tuple(float(v) for v in value)
  except (TypeError, ValueError):
    values = ()
  flat = np.atleast_1d(np.asarray(values, np.float64))
  if (np.ndim(values) and len(flat) != num_classes) or not flat.size or not np.all((flat > 0) & (flat < 1)):
    raise ConfigError(
      f"config.task.thresholds={value!r} is not valid; use one probability in (0, 1) or {num_classes}, one per label."
    )
  return values


def _power(base: jax.Array, gamma: float) -> jax.Array:
  """base ** gamma with a finite gradient at base = 0 (for gamma 0 and gamma < 1 too)."""
  return 1.0 if not gamma else jnp.maximum(base, 1e-12) ** gamma


def _nanmean(values: np.ndarray) -> float:
  return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def _as_list(values: np.ndarray) -> list:
  return [None if np.isnan(v) else float(v) for v in values]
