"""Multi-class classification: one softmax over K classes, label-smoothed cross entropy, top-k accuracy."""

import ast
import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.core import metrics
from jaxcls.core.errors import ConfigError
from jaxcls.tasks import TASKS
from jaxcls.tasks.base import Task


@TASKS.register("multiclass")
@dataclasses.dataclass(frozen=True)
class MultiClass(Task):
  """One class per example out of K: a softmax head (the default task)."""

  num_classes: int
  label_smoothing: float = 0.0
  # 'none', or one weight per class ('balanced' is turned into weights by `resolve_class_weights` first).
  class_weights: str | tuple = "none"

  def __post_init__(self):
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ConfigError(f"config.task.label_smoothing={self.label_smoothing} must be in [0, 1).")
    if self.class_weights != "none":
      weights = check_class_weights(self.class_weights, self.num_classes)
      object.__setattr__(self, "class_weights", weights)

  @property
  def top_k(self) -> int:
    """The k of the top-k accuracy: 5, or the number of classes when there are fewer."""
    return min(5, self.num_classes)

  def targets(self, labels: jax.Array) -> jax.Array:
    """Integer labels [B] or soft labels [B, K] (from Mixup, say) -> label-smoothed probability targets.

    Smoothing is linear, so smoothing mixed labels equals mixing smoothed ones (timm's order).
    """
    probs = (
      labels.astype(jnp.float32) if labels.ndim == 2 else jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
    )
    if not self.label_smoothing:
      return probs
    return probs * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes

  def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example training loss [B], times the class weight of the label (the mixed weight for soft labels)."""
    import optax  # pylint: disable=g-import-not-at-top  (traced in training and evaluation only)

    per_example = optax.softmax_cross_entropy(logits.astype(jnp.float32), self.targets(labels))
    if self.class_weights == "none":
      return per_example
    weights = jnp.asarray(self.class_weights, jnp.float32)
    return per_example * (labels.astype(jnp.float32) @ weights if labels.ndim == 2 else weights[labels])

  def probabilities(self, logits: jax.Array) -> jax.Array:
    """Softmax over the classes [B, K]."""
    return jax.nn.softmax(logits.astype(jnp.float32), -1)

  def predict(self, logits: jax.Array) -> jax.Array:
    """The top logit (the top probability, without the softmax's rounding)."""
    return jnp.argmax(logits, -1)

  def eval_sums(self, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Sums over the valid rows of one eval batch; counts are int32 so that totals stay exact."""
    import optax  # pylint: disable=g-import-not-at-top  (traced in training and evaluation only)

    logits = logits.astype(jnp.float32)
    valid = mask.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    pred = jnp.argmax(logits, -1)
    # Rank of the true class: the number of classes scored strictly higher (ties count in its favour).
    true_score = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    rank = jnp.sum(logits > true_score, axis=-1)
    confusion = jnp.zeros((self.num_classes, self.num_classes), jnp.int32).at[labels, pred].add(mask.astype(jnp.int32))
    return {
      "loss_sum": jnp.sum(nll * valid),
      "correct": jnp.sum((pred == labels) & mask).astype(jnp.int32),
      "correct_top_k": jnp.sum((rank < self.top_k) & mask).astype(jnp.int32),
      "count": jnp.sum(mask).astype(jnp.int32),
      "confusion": confusion,
    }

  def finalize(self, sums: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None = None) -> dict:
    """Host-side metrics from the summed values (and, when given, every example's outputs), in float64."""
    count = int(sums["count"])
    confusion = np.asarray(sums["confusion"], np.int64)
    support = confusion.sum(1)
    recall = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    result = {
      "num_examples": count,
      "loss": float(sums["loss_sum"]) / max(count, 1),
      "accuracy": int(sums["correct"]) / max(count, 1),
      f"top{self.top_k}_accuracy": int(sums["correct_top_k"]) / max(count, 1),
      "balanced_accuracy": float(np.nanmean(recall)) if np.any(support > 0) else float("nan"),
      "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
      "confusion_matrix": confusion.tolist(),
    }
    result.update(metrics.precision_recall_f1(confusion))
    if outputs is not None and len(outputs["labels"]):
      probs = np.asarray(outputs["probs"], np.float64)
      labels = np.asarray(outputs["labels"])
      result.update(metrics.one_vs_rest_curves(probs, labels))
      result["ece"] = metrics.expected_calibration_error(probs.max(1), probs.argmax(1) == labels)
    return metrics.mark_undefined(result, {}, metrics.class_composition(support))


def check_class_weights(weights: Sequence[float], num_classes: int) -> tuple[float, ...]:
  """Explicit weights as a tuple of floats, or a ConfigError saying what is valid."""
  try:
    values = tuple(float(w) for w in weights)
  except (TypeError, ValueError):
    values = ()
  if len(values) != num_classes or min(values, default=-1.0) < 0 or not any(values):
    raise ConfigError(
      f"config.task.class_weights={weights!r} is not valid; use 'none', 'balanced' or "
      f"{num_classes} non-negative numbers (one per class, not all zero)."
    )
  return values


def resolve_class_weights(value, class_counts: Sequence[int] | None, num_classes: int) -> str | tuple:
  """'balanced' -> inverse-frequency weights from the training class counts; 'none' and tuples as given.

  Balanced weights are scikit-learn's n / (K * n_k) over the classes present (absent classes get 0): they
  average to 1 over the training examples, so the loss keeps its scale and the learning rate need not change.
  """
  if isinstance(value, str) and value not in ("none", "balanced"):
    try:  # '(1, 2.5, 1)' from a command line
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
  if isinstance(value, str) and value not in ("none", "balanced"):
    raise ConfigError(
      f"config.task.class_weights={value!r} is not valid; use 'none', 'balanced' or "
      f"{num_classes} numbers (one per class)."
    )
  if value != "balanced":
    return value if isinstance(value, str) else check_class_weights(value, num_classes)
  if class_counts is None:
    raise ConfigError(
      "config.task.class_weights='balanced' needs the training class counts, which this dataset "
      "does not report; give explicit weights, one per class, instead."
    )
  counts = np.asarray(class_counts, np.float64)
  present = counts > 0
  weights = np.where(present, counts.sum() / (present.sum() * np.maximum(counts, 1)), 0.0)
  return tuple(float(w) for w in weights)
