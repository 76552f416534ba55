"""The final evaluation report: `report.json` for scripts and `report.md` for people.

report.md renders what the task's `finalize` put in the report, by name: the scalars, the per-class table
(`precision`, `recall`, `f1`, `support`), a hierarchical report's coarser levels (`level{k}_confusion_matrix`,
`level{k}_class_names`: a per-node table each), the most confused pairs (`confusion_matrix`) and `per_group`.
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcls.core import metrics, paths
from jaxcls.store import workdir as workdir_lib


def write(workdir: str, report: dict[str, Any], class_names: Sequence[str], plot_paths: Sequence[str] = ()) -> None:
  """Writes DIR/report.json and DIR/report.md (atomically, so a kill never leaves half a file)."""
  spread = recall_spread(report, class_names)
  if spread:
    report["recall_spread"] = spread
  workdir = paths.path(workdir, "report folder")
  paths.makedirs(workdir)
  json_path, md_path = workdir_lib.report_paths(workdir)  # store.workdir owns the names
  paths.write_text(json_path, json.dumps(report, indent=1) + "\n")
  plots = [_relative(p, workdir) for p in plot_paths]
  paths.write_text(md_path, markdown(report, class_names, plots))


def _relative(target, folder) -> str:
  """`target` relative to `folder` (both local, or both under one URL), for the report's links."""
  target, folder = os.fspath(paths.path(target)), os.fspath(folder).rstrip("/")
  if target.startswith(folder + "/"):
    return target[len(folder) + 1 :]
  return target if paths.is_remote(target) else os.path.relpath(target, folder)


def recall_spread(report: dict[str, Any], class_names: Sequence[str]) -> dict[str, Any] | None:
  """How unevenly the classes are served: the lowest and highest per-class recall, their gap and std."""
  recall = report.get("per_class_recall") or report.get("recall")
  if not recall:
    return None
  named = [(r, n) for r, n in zip(recall, class_names) if r is not None]
  if not named:
    return None
  values = np.asarray([r for r, _ in named], np.float64)
  low, high = min(named), max(named)
  return {
    "min": low[0],
    "min_class": low[1],
    "max": high[0],
    "max_class": high[1],
    "gap": float(high[0] - low[0]),
    "std": float(values.std()),
  }


def markdown(report: dict[str, Any], class_names: Sequence[str], plots: Sequence[str] = ()) -> str:
  """report.md: the scalar metrics, per-class and per-group tables, the most confused pairs and the figures."""
  lines = [
    f"# Evaluation report: {report['split']} split, step {report['step']}",
    "",
    "| metric | value |",
    "|---|---|",
  ]
  undefined = report.get("undefined") or {}
  for key, value in report.items():
    if key in undefined:  # a metric the eval data cannot define (tasks' finalize, metrics.mark_undefined)
      lines.append(f"| {key} | undefined ({undefined[key]}) |")
    elif isinstance(value, float):
      lines.append(f"| {key} | {value:.4f} |")
    elif isinstance(value, int) and key != "step":
      lines.append(f"| {key} | {value} |")
  lines += _macro_rule(report)
  if report.get("positive_class") is not None:  # a binary report
    lines += [
      "",
      f"Positive class: **{report['positive_class']}** (`task.positive_class`): precision, recall, "
      "specificity, F1, ROC-AUC and average precision are of this class, decided at probability >= "
      f"{report.get('threshold', 0.5):g}.",
    ]
  lines += _per_class(report, class_names)
  lines += _per_level(report)
  confusion = report.get("confusion_matrix")
  if confusion:
    pairs = [
      (confusion[i][j], class_names[i], class_names[j])
      for i in range(len(confusion))
      for j in range(len(confusion))
      if i != j and confusion[i][j]
    ]
    if pairs:
      lines += ["", "## Most confused (true -> predicted)", "", "| true | predicted | count |", "|---|---|---|"]
      for count, true, pred in sorted(pairs, reverse=True)[:10]:
        lines.append(f"| {true} | {pred} | {count} |")
  lines += _per_group(report.get("per_group"))
  if plots:
    lines += ["", "## Figures", ""] + [f"![{os.path.basename(p)}]({p})" for p in plots]
  return "\n".join(lines) + "\n"


def _macro_rule(report: dict[str, Any]) -> list[str]:
  """The sentence saying which classes the macro averages are over (metrics.precision_recall_f1's rule)."""
  averaged, support = report.get("macro_classes"), report.get("support")
  if averaged is None or not support:
    return []
  return [
    "",
    f"Macro averages (precision, recall, F1, balanced accuracy, ROC-AUC, average precision) are over the "
    f"{averaged} of {len(support)} classes present in the eval labels; a class with no eval example has "
    "no recall to average.",
  ]


def _fmt(value) -> str:
  return "n/a" if value is None else f"{value:.4f}"


def _per_class(report: dict[str, Any], class_names: Sequence[str]) -> list[str]:
  """The per-class table, the worst classes by F1, and the spread of per-class recall."""
  f1, precision, support = report.get("f1"), report.get("precision"), report.get("support")
  recall = report.get("per_class_recall") or report.get("recall")
  if not (f1 and precision and recall and support) or len(f1) != len(class_names):
    return []
  lines = _class_table("Per class", "class", class_names, support, precision, recall, f1)
  present = [(f, name, n) for f, name, n in zip(f1, class_names, support) if n]
  worst = sorted(present)[:5]
  if len(present) > 1:
    lines += ["", "## Worst classes (lowest F1)", "", "| class | F1 | examples |", "|---|---|---|"]
    lines += [f"| {name} | {f:.4f} | {n} |" for f, name, n in worst]
  spread = recall_spread(report, class_names)
  if spread and len(present) > 1:
    lines += [
      "",
      f"Per-class recall ranges from {spread['min']:.4f} ({spread['min_class']}) to "
      f"{spread['max']:.4f} ({spread['max_class']}): a gap of {spread['gap']:.4f} (std "
      f"{spread['std']:.4f}).",
    ]
  return lines


def _class_table(heading: str, column: str, names, support, precision, recall, f1) -> list[str]:
  """One '## heading' table: a row per class with its examples, precision, recall and F1."""
  lines = ["", f"## {heading}", "", f"| {column} | examples | precision | recall | F1 |", "|---|---|---|---|---|"]
  for name, n, p, r, f in zip(names, support, precision, recall, f1):
    lines.append(f"| {name} | {n} | {_fmt(p)} | {_fmt(r)} | {_fmt(f)} |")
  return lines


def level_confusions(report: dict[str, Any]) -> list[tuple[int, list]]:
  """(k, matrix) for each `level{k}_confusion_matrix` of a hierarchical report (its coarser levels), coarsest first."""
  found = []
  for key, value in report.items():
    level = key[len("level") : -len("_confusion_matrix")]
    if key.startswith("level") and key.endswith("_confusion_matrix") and level.isdigit() and value:
      found.append((int(level), value))
  return sorted(found)


def _per_level(report: dict[str, Any]) -> list[str]:
  """A hierarchical report's coarser levels: per node precision, recall and F1 from `level{k}_confusion_matrix`."""
  lines = []
  for level, confusion in level_confusions(report):
    names = report.get(f"level{level}_class_names") or [str(i) for i in range(len(confusion))]
    scores = metrics.precision_recall_f1(np.asarray(confusion))
    heading = f"Level {level}{' (coarsest)' if level == 0 else ''} of the class tree"
    lines += _class_table(
      heading, "node", names, scores["support"], scores["precision"], scores["recall"], scores["f1"]
    )
  return lines


def _per_group(groups: dict[str, Any] | None) -> list[str]:
  if not groups:
    return []
  table = groups["groups"]
  columns = [k for k in next(iter(table.values())) if k != "num_examples"]
  lines = [
    "",
    "## Per group",
    "",
    "| group | examples | " + " | ".join(columns) + " |",
    "|---|---|" + "---|" * len(columns),
  ]
  for name, row in table.items():
    lines.append(f"| {name} | {row['num_examples']} | " + " | ".join(_fmt(row[c]) for c in columns) + " |")
  lines += ["", f"Worst group by {groups['metric']}: {groups['worst_group']} ({groups['gap']:.4f} below the best)."]
  return lines
