"""Binary classification: one logit, sigmoid cross entropy, a configurable decision threshold.

The threshold applies to the positive-class probability (positive when p >= threshold, as scikit-learn's curves
count). The positive class is `config.task.positive_class` (a class name), by default the second class in name
order, as before the key existed, so saved workdirs evaluate as they trained. Labels, decisions and confusion
matrices stay class ids; only the single logit, its probability and the one-class metrics (precision, recall,
F1, ROC-AUC, AP) are of the positive class. With the gathered eval outputs, `finalize` adds the ranking metrics
and the threshold that maximises F1 on the eval split, so a user can pick a better operating point than 0.5.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.core import metrics
from jaxcls.core.errors import ConfigError
from jaxcls.tasks import TASKS
from jaxcls.tasks.base import Task, top_classes


@TASKS.register("binary")
@dataclasses.dataclass(frozen=True)
class Binary(Task):
  """Two classes, one logit: the positive class when its probability reaches the threshold."""

  num_classes: int
  threshold: float = 0.5
  # A class name; '' is the second class in name order (class 1), the choice before this key existed.
  positive_class: str = ""
  class_names: tuple = ()

  def __post_init__(self):
    if self.num_classes != 2:
      raise ConfigError(
        f"config.task.type='binary' needs a dataset with 2 classes; this one has {self.num_classes} (use 'multiclass')."
      )
    if not 0.0 < float(self.threshold) < 1.0:
      raise ConfigError(f"config.task.threshold={self.threshold!r} must be a probability in (0, 1).")
    object.__setattr__(self, "threshold", float(self.threshold))
    names = tuple(str(n) for n in self.class_names)
    object.__setattr__(self, "class_names", names)
    if self.positive_class not in ("", *names):
      known = ", ".join(repr(n) for n in names) if names else "none are known without the dataset"
      raise ConfigError(
        f"config.task.positive_class={self.positive_class!r} is not a class of this dataset; use one of {known}."
      )

  @property
  def positive(self) -> int:
    """The positive class's id: `positive_class` among the class names, else 1."""
    return self.class_names.index(self.positive_class) if self.positive_class else 1

  @property
  def positive_name(self) -> str:
    """The positive class's name ('1' without class names), for the report, plots and model.json."""
    return self.class_names[self.positive] if self.class_names else str(self.positive)

  def _class_of(self, is_positive):
    """Class ids from positive/negative decisions (numpy or jax)."""
    return is_positive.astype(jnp.int32) if self.positive == 1 else 1 - is_positive.astype(jnp.int32)

  @property
  def num_outputs(self) -> int:
    """Binary: one logit, the positive class's; the other class's probability is its complement."""
    return 1

  def targets(self, labels: jax.Array) -> jax.Array:
    """Positive-class probability [B] from int labels [B], soft labels [B] (of class 1) or soft labels [B, 2]."""
    labels = labels.astype(jnp.float32)
    if labels.ndim == 2:
      return labels[:, self.positive]
    return labels if self.positive == 1 else 1.0 - labels

  def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Binary: sigmoid cross-entropy of the one logit against the positive-class probability (soft labels too)."""
    import optax  # pylint: disable=g-import-not-at-top  (traced in training and evaluation only)

    return optax.sigmoid_binary_cross_entropy(logits[:, 0].astype(jnp.float32), self.targets(labels))

  def probabilities(self, logits: jax.Array) -> jax.Array:
    """The positive-class probability [B]."""
    return jax.nn.sigmoid(logits[:, 0].astype(jnp.float32))

  def predict(self, logits: jax.Array) -> jax.Array:
    """The class id: the positive class where its probability reaches the threshold, else the other."""
    return self._class_of(self.probabilities(logits) >= self.threshold)

  def decide(self, probs: np.ndarray) -> np.ndarray:
    """The class id from the positive-class probability against the threshold (both in float32, as on the device)."""
    is_positive = np.asarray(probs, np.float32) >= np.float32(self.threshold)
    return (is_positive if self.positive == 1 else ~is_positive).astype(np.int64)

  def train_metrics(self, logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Binary: accuracy of the thresholded decision against the hard (>= 0.5) targets."""
    hard = self.targets(labels) >= 0.5
    return {"accuracy": ((self.probabilities(logits) >= self.threshold) == hard).astype(jnp.float32)}

  def eval_sums(self, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Loss sum and the 2x2 (true, predicted) confusion matrix at the threshold, over the valid rows."""
    labels = labels.astype(jnp.int32)
    valid = mask.astype(jnp.int32)
    confusion = jnp.zeros((2, 2), jnp.int32).at[labels, self.predict(logits)].add(valid)
    return {
      "loss_sum": jnp.sum(self.loss(logits, labels) * mask.astype(jnp.float32)),
      "count": jnp.sum(valid),
      "confusion": confusion,
    }

  def eval_outputs(self, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Per-example values for the ranking metrics; logits too, so ranks and log loss avoid saturated probs."""
    del mask  # the loop keeps only the valid rows
    logit = logits[:, 0].astype(jnp.float32)
    return {"logits": logit, "probs": jax.nn.sigmoid(logit), "labels": labels.astype(jnp.int32)}

  def decision_thresholds(self) -> dict:
    """Binary: the threshold, so group metrics decide as the task does."""
    return {"threshold": self.threshold}

  def prediction_record(self, class_names, probs: np.ndarray, top_k: int) -> dict:
    """The decided class and, for the line and CSV, the positive-class probability and the threshold."""
    positive = float(np.float32(probs))
    pair = np.array([positive, 1.0 - positive][:: -1 if self.positive == 1 else 1])  # by class id
    chosen = int(self.decide(probs))
    return {
      "prediction": class_names[chosen],
      "probability": float(pair[chosen]),
      "top_k": top_classes(class_names, pair, top_k),
      "threshold": self.threshold,
      "positive": [class_names[self.positive], positive],
    }

  def export_metadata(self, class_names) -> dict:
    """Binary: the output is the positive-class probability [B], with the threshold and the positive class's name."""
    return {
      "output": "positive-class probability [B]",
      "threshold": self.threshold,
      "positive_class": class_names[self.positive],
    }

  def attribution_scores(self, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """+/- the single logit by class id: the positive class's score is the logit, the other's its negation."""
    sides = [-logits, logits] if self.positive == 1 else [logits, -logits]
    pair = jnp.concatenate(sides, axis=-1).astype(jnp.float32)
    return pair, jax.nn.sigmoid(pair)

  def explained_class(self, probs: np.ndarray) -> int:
    """The decided class, from the (class 0, class 1) probabilities of `attribution_scores`."""
    return int(self.decide(probs[self.positive]))

  def finalize(self, sums: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None = None) -> dict:
    """Binary: precision, recall, specificity, F1 and balanced accuracy at the threshold, and the ranking metrics."""
    count = int(sums["count"])
    confusion = np.asarray(sums["confusion"], np.int64)  # (true, predicted) by class id
    pos, neg = self.positive, 1 - self.positive
    tn, fp, fn, tp = confusion[neg, neg], confusion[neg, pos], confusion[pos, neg], confusion[pos, pos]
    support = confusion.sum(1)
    class_recall = np.diag(confusion).astype(np.float64) / np.maximum(support, 1)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    result = {
      "num_examples": count,
      "loss": float(sums["loss_sum"]) / max(count, 1),
      "accuracy": float(tn + tp) / max(count, 1),
      "threshold": self.threshold,
      # The class that precision, recall, specificity, F1, ROC-AUC and AP are of.
      "positive_class": self.positive_name,
      "precision": precision,
      "recall": recall,
      "specificity": _ratio(tn, tn + fp),
      "f1": _ratio(2 * precision * recall, precision + recall),
      # scikit-learn's balanced accuracy: mean recall over the classes present.
      "balanced_accuracy": float(class_recall[support > 0].mean()) if count else float("nan"),
      "per_class_recall": [float(r) if n else None for r, n in zip(class_recall, support)],
      "confusion_matrix": confusion.tolist(),
    }
    if outputs is not None:
      result.update(ranking_metrics(outputs["logits"], outputs["probs"], np.asarray(outputs["labels"]) == pos))
    return metrics.mark_undefined(
      result, {"best_f1_threshold": "the eval split has no positive example"}, metrics.class_composition(support)
    )


def ranking_metrics(logits: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> dict:
  """ROC-AUC, AP, log loss, ECE and the best-F1 threshold of one binary score over the whole split."""
  logits = np.asarray(logits, np.float64)
  positive = np.asarray(labels).astype(bool)
  probs = np.asarray(probs)
  threshold, f1 = best_f1_threshold(probs, positive)
  confidence = np.maximum(probs, 1.0 - probs)
  return {
    "roc_auc": metrics.roc_auc(logits, positive),
    "average_precision": metrics.average_precision(logits, positive),
    "log_loss": float(np.mean(np.logaddexp(0.0, logits) - positive * logits)) if len(logits) else float("nan"),
    # Calibration of the probability itself, so at 0.5 whatever the decision threshold.
    "ece": metrics.expected_calibration_error(confidence, (probs >= 0.5) == positive),
    "best_f1_threshold": threshold,
    "best_f1": f1,
  }


def best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
  """(t, F1) maximising F1 of `scores >= t` over the distinct scores; the highest such t on ties.

  (NaN, 0.0) when there is no positive, since every threshold then has F1 = 0.
  """
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  n_pos = int(positive.sum())
  if n_pos == 0:
    return float("nan"), 0.0
  order = np.argsort(-scores, kind="mergesort")
  s, p = scores[order], positive[order]
  last_of_tie = np.r_[s[1:] != s[:-1], True]
  tp = np.cumsum(p)[last_of_tie]
  fp = np.cumsum(~p)[last_of_tie]
  f1 = 2.0 * tp / (tp + fp + n_pos)  # 2PR / (P + R) with FN = n_pos - TP
  best = int(np.argmax(f1))
  return float(s[last_of_tie][best]), float(f1[best])


def _ratio(num, den) -> float:
  """num / den, or 0.0 when den is 0 (scikit-learn's zero_division=0)."""
  return float(num) / float(den) if den else 0.0
