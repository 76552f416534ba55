"""Multi-class classification: one softmax over K classes, label-smoothed cross entropy, top-k accuracy."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcls.errors import ConfigError
from jaxcls.tasks import TASKS


@TASKS.register("multiclass")
@dataclasses.dataclass(frozen=True)
class MultiClass:
  num_classes: int
  label_smoothing: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ConfigError(f"config.task.label_smoothing={self.label_smoothing} must be in [0, 1).")

  @property
  def num_outputs(self) -> int:
    return self.num_classes

  @property
  def top_k(self) -> int:
    return min(5, self.num_classes)

  def targets(self, labels: jax.Array) -> jax.Array:
    """Integer labels -> (smoothed) probability targets; soft labels (from Mixup, say) pass through."""
    if labels.ndim == 2:
      return labels
    one_hot = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
    return one_hot * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes

  def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example training loss [B]."""
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), self.targets(labels))

  def train_metrics(self, logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Per-example values averaged into the training log."""
    hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
    return {"accuracy": (jnp.argmax(logits, -1) == hard).astype(jnp.float32)}

  def eval_sums(self, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Sums over the valid rows of one eval batch; counts are int32 so that totals stay exact."""
    logits = logits.astype(jnp.float32)
    valid = mask.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    pred = jnp.argmax(logits, -1)
    # Rank of the true class: the number of classes scored strictly higher (ties count in its favour).
    true_score = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    rank = jnp.sum(logits > true_score, axis=-1)
    confusion = jnp.zeros((self.num_classes, self.num_classes), jnp.int32).at[labels, pred].add(
        mask.astype(jnp.int32))
    return {
        "loss_sum": jnp.sum(nll * valid),
        "correct": jnp.sum((pred == labels) & mask).astype(jnp.int32),
        "correct_top_k": jnp.sum((rank < self.top_k) & mask).astype(jnp.int32),
        "count": jnp.sum(mask).astype(jnp.int32),
        "confusion": confusion,
    }

  def finalize(self, sums: dict[str, np.ndarray]) -> dict:
    """Host-side metrics from the summed values, in float64."""
    count = int(sums["count"])
    confusion = np.asarray(sums["confusion"], np.int64)
    support = confusion.sum(1)
    recall = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    return {
        "num_examples": count,
        "loss": float(sums["loss_sum"]) / max(count, 1),
        "accuracy": int(sums["correct"]) / max(count, 1),
        f"top{self.top_k}_accuracy": int(sums["correct_top_k"]) / max(count, 1),
        "balanced_accuracy": float(np.nanmean(recall)) if np.any(support > 0) else float("nan"),
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
        "confusion_matrix": confusion.tolist(),
    }
