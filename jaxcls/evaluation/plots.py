"""Evaluation figures, one PNG per function: confusion matrix, ROC/PR curves, per-class F1, training curves, mistakes.

`write_all` draws what the report holds, by name: `confusion_matrix` (confusion.png), each coarser level's
`level{k}_confusion_matrix` named by `level{k}_class_names` (confusion_level{k}.png, a hierarchical report), `f1`
and `support` (per_class_f1.png), and the eval outputs' `probs` and `labels` (roc_pr.png).

matplotlib is imported inside the drawing functions (Agg, no display), so the core trains without it. Figures are
built with `matplotlib.figure.Figure` rather than pyplot, so nothing global is left behind between calls. The curve
points (`roc_points`, `pr_points`) are numpy only and match scikit-learn's `roc_curve` / `precision_recall_curve`.
"""

import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcls.core import paths
from jaxcls.evaluation import report as report_lib

ANNOTATE_MAX_CLASSES = 30  # above this, cell counts would be unreadable
CURVES_MAX_CLASSES = 10  # above this, only the micro and macro averages are drawn


# --- Curve points (no matplotlib). ---


def _cumulative(scores: np.ndarray, positive: np.ndarray):
  """False and true positives predicting `score >= t`, at each distinct score t in decreasing order."""
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  order = np.argsort(-scores, kind="mergesort")
  s, p = scores[order], positive[order]
  last_of_tie = np.r_[s[1:] != s[:-1], True]
  tps = np.cumsum(p)[last_of_tie].astype(np.float64)
  fps = np.cumsum(~p)[last_of_tie].astype(np.float64)
  return fps, tps, s[last_of_tie]


def roc_points(scores: np.ndarray, positive: np.ndarray, drop_intermediate: bool = True):
  """(fpr, tpr, thresholds) as scikit-learn's roc_curve: starts at (0, 0) with threshold inf."""
  fps, tps, thresholds = _cumulative(scores, positive)
  if drop_intermediate and len(fps) > 2:  # drop points collinear with both neighbours
    keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
    fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
  fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
  thresholds = np.r_[np.inf, thresholds]
  fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
  tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
  return fpr, tpr, thresholds


def pr_points(scores: np.ndarray, positive: np.ndarray):
  """(precision, recall, thresholds) as scikit-learn's precision_recall_curve: recall decreasing, ending at (1, 0)."""
  fps, tps, thresholds = _cumulative(scores, positive)
  predicted = tps + fps
  precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted > 0)
  recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
  return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def _one_vs_rest(probs: np.ndarray, labels: np.ndarray, positive_id: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Scores [N, K] and positives [N, K] from binary [N] scores of class `positive_id` with class-id labels [N],
  class probabilities [N, K] with int labels [N], or per-label probabilities [N, K] with multi-hot labels [N, K]."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  if probs.ndim == 1:
    return probs[:, None], (labels == positive_id)[:, None]
  if labels.ndim == 1:
    return probs, labels[:, None] == np.arange(probs.shape[1])[None, :]
  return probs, labels.astype(bool)


def positive_index(positive_class: str | None, class_names: Sequence[str] | None) -> int:
  """The class id of a binary report's `positive_class` name (1, the binary task's default, when unknown)."""
  names = [str(n) for n in class_names or ()]
  return names.index(str(positive_class)) if positive_class is not None and str(positive_class) in names else 1


def binary_curve_label(positive_class: str | None, class_names: Sequence[str] | None) -> str:
  """The legend of a binary score's curves: the class it scores, e.g. 'face (positive class)'."""
  return f"{_names(class_names, 2)[positive_index(positive_class, class_names)]} (positive class)"


# --- Figures. ---


def preload() -> None:
  """Imports matplotlib's Figure and Agg canvas and renders one character, so the first real figure does not wait.

  That is about 0.6 s on a 2-core CPU (imports, the font list, the default font's glyphs). `loop.preload_plots`
  runs it in a background thread while the training run compiles (XLA releases the GIL).
  """
  fig, (ax,) = _figure(0.5, 0.5, layout=None)
  ax.set_title("0")
  fig.savefig(io.BytesIO(), format="png")


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1, layout: str | None = "constrained"):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(width, height), dpi=100, layout=layout)
  axes = fig.subplots(nrows, ncols, squeeze=False)
  return fig, axes.ravel()


def _save(fig, path: str) -> str:
  """Writes the figure as a PNG at `path` (local or `gs://`, in one step) and returns `path`."""
  target = paths.path(path, "figure path")
  paths.makedirs(target.parent)
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  paths.write_bytes(target, buffer.getvalue())
  return path


def _names(class_names: Sequence[str] | None, k: int) -> list[str]:
  return (
    [str(n) for n in class_names] if class_names is not None and len(class_names) == k else [str(i) for i in range(k)]
  )


def confusion_matrix(
  confusion: np.ndarray, class_names: Sequence[str] | None, path: str, title: str = "Confusion matrix"
) -> str:
  """Counts and row-normalised (recall) matrices side by side; the figure and font scale with the classes."""
  confusion = np.asarray(confusion, np.int64)
  k = len(confusion)
  names = _names(class_names, k)
  side = float(np.clip(0.15 * k + 3.0, 5.0, 18.0))  # inches per matrix
  font = float(np.clip(0.55 * 72 * side / k, 4.0, 10.0))  # about half a cell high
  # Fixed margins sized to the longest class name: a layout engine would lay out hundreds of labels twice.
  label = max(map(len, names)) * font / 72 * 0.6 + 0.5
  width, height = 2 * (side + label + 1.4), side + label + 0.8
  fig, (ax_counts, ax_norm) = _figure(width, height, ncols=2, layout=None)
  fig.subplots_adjust(
    left=label / width,
    right=1 - 1.2 / width,
    bottom=label / height,
    top=1 - 0.6 / height,
    wspace=(label + 1.4) / (side + 0.1),
  )
  rows = confusion.sum(1, keepdims=True)
  normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
  for ax, values, caption in ((ax_counts, confusion, "count"), (ax_norm, normalised, "fraction of the true class")):
    image = ax.imshow(values, cmap="Blues", interpolation="nearest", aspect="equal")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label=caption)
    ax.set_xticks(range(k), names, rotation=90, fontsize=font)
    ax.set_yticks(range(k), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= ANNOTATE_MAX_CLASSES:
      high = values.max() / 2 if values.max() > 0 else 1
      for i in range(k):
        for j in range(k):
          text = f"{values[i, j]}" if values is confusion else f"{values[i, j]:.2f}"
          ax.text(
            j, i, text, ha="center", va="center", fontsize=font * 0.8, color="white" if values[i, j] > high else "black"
          )
  ax_counts.set_title(f"{title}: counts")
  ax_norm.set_title(f"{title}: normalised by row")
  return _save(fig, path)


def roc_pr_curves(
  probs: np.ndarray,
  labels: np.ndarray,
  class_names: Sequence[str] | None,
  path: str,
  max_classes: int = CURVES_MAX_CLASSES,
  positive_class: str | None = None,
) -> str:
  """ROC and precision-recall curves per class (up to `max_classes`) plus the micro and macro averages.

  probs/labels: binary scores [N] with 0/1 labels, class probabilities [N, K] with int labels [N] (one vs rest),
  or per-label probabilities [N, K] with multi-hot labels [N, K]. The macro curves average the per-class curves
  interpolated on a common grid over the classes with both outcomes. Binary scores are of `positive_class` (a
  class name, the report's; default: the second class), which the legend names.
  """
  from jaxcls.core import metrics  # pylint: disable=g-import-not-at-top

  binary = np.asarray(probs).ndim == 1
  scores, positive = _one_vs_rest(probs, labels, positive_index(positive_class, class_names))
  k = scores.shape[1]
  names = [binary_curve_label(positive_class, class_names)] if binary else _names(class_names, k)
  fig, (ax_roc, ax_pr) = _figure(13.0, 6.0, ncols=2)
  grid = np.linspace(0.0, 1.0, 201)
  roc_interp, pr_interp = [], []
  for c in range(k):
    if positive[:, c].all() or not positive[:, c].any():
      continue
    fpr, tpr, _ = roc_points(scores[:, c], positive[:, c])
    precision, recall, _ = pr_points(scores[:, c], positive[:, c])
    roc_interp.append(np.interp(grid, fpr, tpr))
    # Interpolated precision: the best precision at recall >= r (recall is decreasing in pr_points).
    best_from_here = np.maximum.accumulate(precision)[::-1]  # in increasing recall order
    pr_interp.append(best_from_here[np.searchsorted(recall[::-1], grid, side="left")])
    if k <= max_classes:
      auc = metrics.roc_auc(scores[:, c], positive[:, c])
      ap = metrics.average_precision(scores[:, c], positive[:, c])
      ax_roc.plot(fpr, tpr, lw=1, label=f"{names[c]} (AUC {auc:.3f})")
      ax_pr.step(recall, precision, where="post", lw=1, label=f"{names[c]} (AP {ap:.3f})")
  if not binary:
    flat_scores, flat_positive = scores.ravel(), positive.ravel()
    if flat_positive.any() and not flat_positive.all():
      fpr, tpr, _ = roc_points(flat_scores, flat_positive)
      precision, recall, _ = pr_points(flat_scores, flat_positive)
      ax_roc.plot(fpr, tpr, "k--", lw=2, label=f"micro (AUC {metrics.roc_auc(flat_scores, flat_positive):.3f})")
      ax_pr.step(
        recall,
        precision,
        "k--",
        where="post",
        lw=2,
        label=f"micro (AP {metrics.average_precision(flat_scores, flat_positive):.3f})",
      )
    if roc_interp:
      ax_roc.plot(grid, np.mean(roc_interp, 0), "k:", lw=2, label="macro (interpolated)")
      ax_pr.plot(grid, np.mean(pr_interp, 0), "k:", lw=2, label="macro (interpolated)")
  ax_roc.plot([0, 1], [0, 1], color="0.7", lw=1)
  ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
  ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
  for ax in (ax_roc, ax_pr):
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
  return _save(fig, path)


def per_class_f1(
  f1: Sequence[float], class_names: Sequence[str] | None, path: str, support: Sequence[int] | None = None
) -> str:
  """Horizontal bars of per-class F1, worst first, so the classes that need work are on top.

  With `support`, classes without eval examples are left out, so the title's macro F1 is the report's (over the
  classes present in the eval labels).
  """
  f1 = np.asarray([np.nan if v is None else v for v in f1], np.float64)
  names = _names(class_names, len(f1))
  if support is not None and len(support) == len(f1) and any(support):
    present = np.flatnonzero(np.asarray(support) > 0)
    f1, names = f1[present], [names[i] for i in present]
  order = np.argsort(np.nan_to_num(f1, nan=-1.0), kind="mergesort")
  k = len(f1)
  font = float(np.clip(300.0 / k, 4.0, 10.0))
  fig, (ax,) = _figure(8.0, float(np.clip(0.14 * k + 1.5, 3.0, 40.0)))
  ax.barh(np.arange(k), np.nan_to_num(f1[order]), color="tab:blue")
  ax.set_yticks(range(k), [names[i] for i in order], fontsize=font)
  ax.invert_yaxis()
  ax.set(xlim=(0, 1), xlabel="F1", title=f"Per-class F1 (macro {np.nanmean(f1) if k else float('nan'):.3f})")
  return _save(fig, path)


def read_metrics(metrics_path: str) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl (a torn last line, as after a kill, is skipped)."""
  rows = []
  with paths.path(metrics_path, "metrics file").open("r", encoding="utf-8") as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        continue
  return rows


def training_curves(metrics_path: str, path: str) -> str:
  """Loss and accuracy against step, train and eval, from `workdir/metrics.jsonl`."""
  rows = read_metrics(metrics_path)
  fig, axes = _figure(12.0, 4.5, ncols=2)
  for ax, name in zip(axes, ("loss", "accuracy")):
    for split, style in (("train", "-"), ("eval", "o-")):
      points = [(r["step"], r[f"{split}/{name}"]) for r in rows if f"{split}/{name}" in r]
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, style, ms=3, label=split)
    ax.set(xlabel="step", ylabel=name, title=name)
    if ax.get_legend_handles_labels()[0]:
      ax.legend()
  return _save(fig, path)


def misclassified_grid(
  images: np.ndarray,
  labels: Sequence[int],
  predictions: Sequence[int],
  class_names: Sequence[str] | None,
  path: str,
  max_images: int = 36,
  confidence: Sequence[float] | None = None,
) -> str:
  """Up to `max_images` of the given images whose prediction is wrong, in the given order, each captioned with
  its true and predicted class names (and the predicted class's probability, when `confidence` gives it).

  images: uint8 [N, H, W, C] with C = 1 or 3, in the order of labels and predictions (the eval loop passes
  the mistakes `loop.select_misclassified` chose: many classes, the most confident first).
  """
  images = np.asarray(images)
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  wrong = np.flatnonzero(labels != predictions)[:max_images]
  num_names = int(max(labels.max(initial=0), predictions.max(initial=0))) + 1
  names = _names(class_names, len(class_names) if class_names is not None else num_names)
  cols = int(np.ceil(np.sqrt(max(len(wrong), 1))))
  rows = int(np.ceil(max(len(wrong), 1) / cols))
  fig, axes = _figure(2.2 * cols, 2.6 * rows, ncols=cols, nrows=rows)
  for ax in axes:
    ax.axis("off")
  if not len(wrong):
    axes[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
  for ax, i in zip(axes, wrong):
    image = images[i]
    ax.imshow(
      image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255
    )
    caption = f"true: {names[labels[i]]}\npredicted: {names[predictions[i]]}"
    if confidence is not None:
      caption += f" ({float(confidence[i]):.2f})"
    ax.set_title(caption, fontsize=7)
  return _save(fig, path)


def write_all(
  plots_dir: str,
  report: dict[str, Any],
  outputs: dict[str, np.ndarray] | None = None,
  class_names: Sequence[str] | None = None,
  metrics_path: str | None = None,
) -> list[str]:
  """Every figure the report and the gathered eval outputs allow, into `plots_dir`; returns the paths."""
  written = []
  if report.get("confusion_matrix"):
    names = class_names if len(report["confusion_matrix"]) == len(class_names or ()) else None
    written.append(confusion_matrix(report["confusion_matrix"], names, os.path.join(plots_dir, "confusion.png")))
  for level, confusion in report_lib.level_confusions(report):
    written.append(
      confusion_matrix(
        confusion,
        report.get(f"level{level}_class_names"),
        os.path.join(plots_dir, f"confusion_level{level}.png"),
        title=f"Level {level}{' (coarsest)' if level == 0 else ''} confusion matrix",
      )
    )
  f1 = report.get("f1")
  if isinstance(f1, list):
    written.append(per_class_f1(f1, class_names, os.path.join(plots_dir, "per_class_f1.png"), report.get("support")))
  elif report.get("confusion_matrix") and len(report["confusion_matrix"]) > 2:
    from jaxcls.core import metrics  # pylint: disable=g-import-not-at-top

    scores = metrics.precision_recall_f1(np.asarray(report["confusion_matrix"]))
    written.append(
      per_class_f1(scores["f1"], class_names, os.path.join(plots_dir, "per_class_f1.png"), scores["support"])
    )
  if outputs is not None and "probs" in outputs and len(outputs["probs"]):
    written.append(
      roc_pr_curves(
        outputs["probs"],
        outputs["labels"],
        class_names,
        os.path.join(plots_dir, "roc_pr.png"),
        positive_class=report.get("positive_class"),
      )
    )
  if metrics_path and paths.path(metrics_path, "metrics file").exists():
    written.append(training_curves(metrics_path, os.path.join(plots_dir, "training_curves.png")))
  return written
