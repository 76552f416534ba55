"""Hierarchical classification: one softmax head per level of a class tree, consistent predictions.

The model's single head has sum(level sizes) outputs, split into one softmax per level (coarsest first). The loss
is the weighted sum of the levels' cross entropies, each against the true leaf's ancestor (soft leaf labels are
summed up the tree, so Mixup works). The predicted leaf maximises the sum of log-probabilities of the nodes on its
path, so a prediction is always a path of the tree: the predicted fine class implies its parent.

Metrics: accuracy and macro F1 per level, hierarchical precision, recall and F1 over ancestor sets (Kiritchenko et
al., 2005; the root excluded, the leaf included), and mistake severity: the tree distance between the true and the
predicted leaf (2 x the height of their lowest common ancestor; 0 for a correct prediction).

The report also holds the leaf classes' per-class table (`precision`, `recall`, `f1`, `support` and their
averages, as the multi-class report: `metrics.precision_recall_f1` of the leaf confusion matrix) and, for each
coarser level k (0 the coarsest), `level{k}_confusion_matrix` (rows true, columns predicted, the ancestors at that
level of the true and predicted leaves) with `level{k}_class_names` naming its rows; plots draw one confusion
figure per such level.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.core import metrics
from jaxcls.core.errors import ConfigError
from jaxcls.tasks import TASKS
from jaxcls.tasks import tree as tree_lib
from jaxcls.tasks.base import Task


@TASKS.register("hierarchical")
@dataclasses.dataclass(frozen=True)
class Hierarchical(Task):
  """One leaf class per example, predicted as a path of the class tree (one softmax per level)."""

  num_classes: int
  # Any form `tree.parse` accepts; replaced by the parsed (hashable) ClassTree.
  tree: Any = "folders"
  # The dataset's class names: needed when the tree names its leaves or comes from 'coarse/fine' folders.
  class_names: tuple = ()
  # One loss weight per level, coarsest first; empty means 1 for every level.
  level_weights: tuple = ()

  def __post_init__(self):
    names = tuple(map(str, self.class_names)) or tuple(str(i) for i in range(self.num_classes))
    if len(names) != self.num_classes:
      raise ConfigError(f"config.task.class_names has {len(names)} names for {self.num_classes} classes.")
    parsed = tree_lib.parse(self.tree, names)
    weights = tuple(float(w) for w in self.level_weights) or (1.0,) * parsed.depth
    if len(weights) != parsed.depth or min(weights) < 0 or not any(weights):
      raise ConfigError(
        f"config.task.level_weights={self.level_weights!r} is not valid; give {parsed.depth} "
        "non-negative numbers (one per level, coarsest first, not all zero)."
      )
    object.__setattr__(self, "tree", parsed)
    object.__setattr__(self, "class_names", names)
    object.__setattr__(self, "level_weights", weights)

  @property
  def num_outputs(self) -> int:
    """Hierarchical: one logit per node of every level, the levels' blocks side by side, coarsest first."""
    return sum(self.tree.level_sizes)

  def level_logits(self, logits: jax.Array) -> list[jax.Array]:
    """The head's outputs split into one [B, n_level] block per level, coarsest first."""
    bounds = np.cumsum((0,) + self.tree.level_sizes)
    logits = logits.astype(jnp.float32)
    return [logits[:, bounds[i] : bounds[i + 1]] for i in range(self.tree.depth)]

  def leaf_log_probs(self, logits: jax.Array) -> jax.Array:
    """[B, K] log of the product of level probabilities along each leaf's path, normalised over the leaves."""
    paths = self.tree.path_array()
    score = sum(jax.nn.log_softmax(block)[:, paths[:, level]] for level, block in enumerate(self.level_logits(logits)))
    return jax.nn.log_softmax(score)

  def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Hierarchical: the level-weighted sum of each level's softmax cross-entropy against the label's node there."""
    import optax  # pylint: disable=g-import-not-at-top  (traced in training and evaluation only)

    leaf = labels.astype(jnp.float32) if labels.ndim == 2 else jax.nn.one_hot(labels, self.num_classes)
    paths = self.tree.path_array()
    total = 0.0
    for level, block in enumerate(self.level_logits(logits)):
      member = np.eye(self.tree.level_sizes[level], dtype=np.float32)[paths[:, level]]  # [K, n_level]
      total = total + self.level_weights[level] * optax.softmax_cross_entropy(block, leaf @ member)
    return total

  def probabilities(self, logits: jax.Array) -> jax.Array:
    """The leaf probabilities [B, K]: the tree-consistent joint distribution over the classes."""
    return jnp.exp(self.leaf_log_probs(logits))

  def predict(self, logits: jax.Array) -> jax.Array:
    """Hierarchical: the most probable leaf of the joint path probabilities, so the predicted path is consistent."""
    return jnp.argmax(self.leaf_log_probs(logits), -1)

  def eval_sums(self, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Per-level confusion matrices and the histogram of LCA heights, over the valid rows."""
    paths = jnp.asarray(self.tree.path_array())
    true_path, pred_path = paths[labels], paths[self.predict(logits)]
    valid = mask.astype(jnp.int32)
    depth = self.tree.depth
    # Levels agreeing from the top; the LCA's height is depth - that, and the distance twice the height.
    common = jnp.sum(jnp.cumprod(true_path == pred_path, axis=-1), -1)
    sums = {
      "loss_sum": jnp.sum(self.loss(logits, labels) * mask.astype(jnp.float32)),
      "count": jnp.sum(valid),
      "lca_height": jnp.zeros(depth + 1, jnp.int32).at[depth - common].add(valid),
    }
    for level, size in enumerate(self.tree.level_sizes):
      sums[f"confusion_{level}"] = (
        jnp.zeros((size, size), jnp.int32).at[true_path[:, level], pred_path[:, level]].add(valid)
      )
    return sums

  def prediction_record(self, class_names, probs: np.ndarray, top_k: int) -> dict:
    """The single-label record plus the predicted path (`hierarchy`: node names, coarsest level first)."""
    record = super().prediction_record(class_names, probs, top_k)
    leaf = int(self.decide(probs))
    record["hierarchy"] = [
      self.tree.level_names[level][self.tree.paths[leaf][level]] for level in range(self.tree.depth)
    ]
    return record

  def export_metadata(self, class_names) -> dict:
    """Hierarchical: the base metadata plus the class tree, so a loader can map a leaf to its path."""
    return {
      **super().export_metadata(class_names),
      "tree": {
        "level_names": [list(names) for names in self.tree.level_names],
        "paths": [list(path) for path in self.tree.paths],
      },
    }

  def attribution_scores(self, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The leaf log-probabilities (a logit of one level alone would ignore the rest of the path)."""
    log_probs = self.leaf_log_probs(logits)
    return log_probs, jnp.exp(log_probs)

  def finalize(self, sums: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None = None) -> dict:
    """Hierarchical: leaf and per-level scores, hierarchical precision/recall/F1, mistake severity, ranking metrics."""
    count = int(sums["count"])
    depth = self.tree.depth
    heights = np.asarray(sums["lca_height"], np.int64)
    leaf = np.asarray(sums[f"confusion_{depth - 1}"], np.int64)
    support = leaf.sum(1)
    recall = np.where(support > 0, np.diag(leaf) / np.maximum(support, 1), np.nan)
    # With consistent predictions |ancestors(true) ∩ ancestors(pred)| = depth - LCA height, and both sets have
    # `depth` nodes, so hierarchical precision = recall = F1; all three are reported for clarity.
    shared = float(np.sum((depth - np.arange(depth + 1)) * heights))
    h_precision = h_recall = shared / max(depth * count, 1)
    mistakes = heights[1:].sum()
    result = {
      "num_examples": count,
      "loss": float(sums["loss_sum"]) / max(count, 1),
      "accuracy": int(np.trace(leaf)) / max(count, 1),
      "balanced_accuracy": float(np.nanmean(recall)) if np.any(support > 0) else float("nan"),
      "hierarchical_precision": h_precision,
      "hierarchical_recall": h_recall,
      "hierarchical_f1": h_precision,
      # {tree distance: number of eval examples}, mistakes only.
      "mistake_severity": {str(2 * h): int(heights[h]) for h in range(1, depth + 1)},
      "mean_mistake_severity": float(np.sum(2 * np.arange(depth + 1) * heights) / mistakes)
      if mistakes
      else float("nan"),
      "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
      "confusion_matrix": leaf.tolist(),
    }
    result.update(metrics.precision_recall_f1(leaf))  # the leaf per-class table, as the multi-class report has
    for level in range(depth):
      confusion = np.asarray(sums[f"confusion_{level}"], np.int64)
      scores = metrics.precision_recall_f1(confusion)
      result[f"level{level}_accuracy"] = int(np.trace(confusion)) / max(count, 1)
      result[f"level{level}_macro_f1"] = scores["macro_f1"]
      if level < depth - 1:
        result[f"level{level}_confusion_matrix"] = confusion.tolist()
        result[f"level{level}_class_names"] = list(self.tree.level_names[level])
    if outputs is not None:
      result.update(ranking_metrics(outputs["probs"], outputs["labels"]))
    return metrics.mark_undefined(
      result, {"mistake_severity": "the model made no mistake on the eval split"}, metrics.class_composition(support)
    )


def ranking_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
  """One-vs-rest ROC-AUC and AP of the leaf probabilities, log loss and ECE of the predicted leaf."""
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels, np.int64)
  if not len(labels):
    return {}
  curves = metrics.one_vs_rest_curves(probs, labels)
  eps = np.finfo(np.float64).eps
  clipped = np.clip(probs / probs.sum(1, keepdims=True), eps, 1 - eps)  # as scikit-learn's log_loss
  return {
    **curves,
    "log_loss": float(-np.mean(np.log(clipped[np.arange(len(labels)), labels]))),
    "ece": metrics.expected_calibration_error(probs.max(1), probs.argmax(1) == labels),
  }
