"""The Task contract: everything the rest of jaxcls asks of a task type, in one place.

A task type turns a model's head into a classifier: how many outputs the head has, how they are trained, what
they mean as probabilities and decisions, how evaluation sums and reports them, and how `predict`, `export` and
`explain` present them. Code outside `jaxcls/tasks/` calls these methods and never asks which task it holds, so a
new task type is one file: a frozen dataclass that subclasses `Task`, registered with `@TASKS.register(name)`.

The dataclass fields are the task's `config.task.*` keys (`tasks.build` passes only the keys a task declares);
`num_classes` is always one of them and comes from the dataset. Instances are hashable (frozen), so jitted steps
may close over them.

Who calls what:

  head size                 `num_outputs`                         models.build (training and restore)
  training                  `loss`, `train_metrics`               training/steps.py, the train step
  outputs                   `probabilities`, `predict`            eval step, predict, export (on the device)
  decision                  `decide`                              predict, explain, per-group metrics and the
                                                                  misclassified grid (on the host)
  evaluation                `eval_sums` (exact sums, masked),     the eval step and loop: sums over batches,
                            `eval_outputs` (per-example rows),    rows gathered over the split, then `finalize`
                            `finalize` (the report's sections)    gives report.json's keys
  group metrics             `decision_thresholds`                 group_metrics.per_group called without decisions
  one-class data            `single_label`                        tasks.check_classes
  predict                   `prediction_record`                   inference/predictor.py (lines, CSV, JSON)
  export                    `export_metadata`                     inference/exporter.py (model.json)
  explain                   `attribution_scores`,                 inference/explainer.py
                            `explained_class`

Plots need nothing of their own: evaluation/plots.py draws what the report and the eval outputs hold, by name. A
`confusion_matrix` section gives the confusion figure, an `f1` list (or a confusion matrix) the per-class F1 bars,
and `eval_outputs` with `probs` and `labels` the ROC / PR curves (probabilities [N] with 0/1 labels, [N, K] with
int labels [N] one vs rest, or [N, K] with multi-hot labels [N, K]).

Only `loss`, `probabilities`, `eval_sums` and `finalize` must be written; the rest have defaults for a
single-label task whose probabilities are [B, K] over the classes and whose decision is the most probable class.
"""

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np


class Task(abc.ABC):
  """The base of every task type (see the module docstring for who calls which method).

  Device methods (`loss`, `train_metrics`, `probabilities`, `predict`, `eval_sums`, `eval_outputs`,
  `attribution_scores`) take jax arrays and are traced inside jitted steps; host methods (`decide`, `finalize`,
  `prediction_record`, `export_metadata`, `explained_class`, `decision_thresholds`) take numpy values.
  """

  num_classes: int
  # Each example has exactly one class (False: a set of labels). One-class data is refused for single-label
  # tasks (a softmax over one class learns nothing), not for label sets (one present/absent detector is a model).
  single_label: ClassVar[bool] = True

  @property
  def num_outputs(self) -> int:
    """The head size: the number of logits the model returns per example."""
    return self.num_classes

  # Training.

  @abc.abstractmethod
  def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example training loss [B]; `labels` are int [B] or soft [B, K] (Mixup) or multi-hot [B, K]."""

  def train_metrics(self, logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Per-example values [B] averaged into the training log (default: accuracy of `predict` on hard labels)."""
    hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
    return {"accuracy": (self.predict(logits) == hard).astype(jnp.float32)}

  # Outputs and decisions.

  @abc.abstractmethod
  def probabilities(self, logits: jax.Array) -> jax.Array:
    """What `predict` prints and `export` returns, from logits [B, num_outputs]: [B, K] over the classes (a
    binary task may return [B], the positive class); float32, jittable."""

  def predict(self, logits: jax.Array) -> jax.Array:
    """Decisions on the device, as `decide` makes them on the host (default: the most probable class)."""
    return jnp.argmax(self.probabilities(logits), -1)

  def decide(self, probs: np.ndarray) -> np.ndarray:
    """Decisions from `probabilities` output on the host: class ids (single-label) or a boolean label set.

    Works on one example's row or a batch; compares in float32, as `predict` does on the device.
    """
    return np.argmax(np.asarray(probs, np.float32), -1)

  # Evaluation.

  @abc.abstractmethod
  def eval_sums(self, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """The metric accumulators of one eval batch: sums over the rows where `mask` is True (int32 counts stay
    exact). The loop adds them over batches, in float64 on the host, and hands the totals to `finalize`."""

  def eval_outputs(self, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Per-example rows gathered over the whole split (padding dropped by the loop) for the ranking metrics,
    plots and group metrics; default: {'probs': `probabilities`, 'labels': int labels}."""
    del mask  # the loop keeps only the valid rows
    return {"probs": self.probabilities(logits), "labels": labels.astype(jnp.int32)}

  @abc.abstractmethod
  def finalize(self, sums: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None = None) -> dict:
    """The report's sections (report.json's keys: at least num_examples, loss and accuracy) from the summed
    accumulators and, when given, every example's `eval_outputs`; use `metrics.mark_undefined` for values the
    eval data cannot define."""

  def decision_thresholds(self) -> dict[str, Any]:
    """Keyword arguments of `group_metrics.per_group` that make its decisions this task's when it is not given
    `decide`'s (the eval loop gives them): {'threshold': t} for a binary score, {'thresholds': t} for label sets;
    {} for the most probable class."""
    return {}

  # The commands.

  def prediction_record(self, class_names: Sequence[str], probs: np.ndarray, top_k: int) -> dict:
    """One image's prediction from its `probabilities` row, for `python -m jaxcls.predict`.

    Every record has `prediction` (a class name; label sets: the names joined by ';'), `probability` (of that
    class; None for label sets) and `top_k` ([[class, probability], ...], most probable first); a task may add
    keys (predictor.format_line and the CSV know `threshold`, `labels` and `hierarchy`).
    """
    probs = np.asarray(probs, np.float32)
    ranked = top_classes(class_names, probs, top_k)
    chosen = int(self.decide(probs))
    return {"prediction": class_names[chosen], "probability": float(probs[chosen]), "top_k": ranked}

  def export_metadata(self, class_names: Sequence[str]) -> dict:
    """What a loader of an exported model needs to turn its output into decisions as `predict` does: the
    output's name and shape, and the task's thresholds or class tree (merged into model.json)."""
    del class_names
    return {"output": "probabilities [B, K]"}

  def attribution_scores(self, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(scores [B, K] whose gradients `explain` maps, one per class; probabilities [B, K] shown with them).

    Default: the logits and `probabilities`. A score should rise with the evidence for its class.
    """
    logits = logits.astype(jnp.float32)
    return logits, self.probabilities(logits)

  def explained_class(self, probs: np.ndarray) -> int:
    """The class `explain` explains by default, from one image's probabilities [K] (`attribution_scores`)."""
    return int(np.argmax(np.asarray(probs, np.float32)))


def top_classes(class_names: Sequence[str], probs: np.ndarray, top_k: int) -> list:
  """[[class name, probability], ...] of the `top_k` most probable classes, most probable first (stable)."""
  order = np.argsort(-probs, kind="stable")[:top_k]
  return [[class_names[i], float(probs[i])] for i in order]
