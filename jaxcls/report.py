"""The final evaluation report: `report.json` for scripts and `report.md` for people."""

import json
import os
from typing import Any, Sequence


def write(workdir: str, report: dict[str, Any], class_names: Sequence[str], plot_paths: Sequence[str] = ()) -> None:
  """Writes DIR/report.json and DIR/report.md (atomically, so a kill never leaves half a file)."""
  _atomic_write(os.path.join(workdir, "report.json"), json.dumps(report, indent=1) + "\n")
  plots = [os.path.relpath(p, workdir) for p in plot_paths]
  _atomic_write(os.path.join(workdir, "report.md"), markdown(report, class_names, plots))


def markdown(report: dict[str, Any], class_names: Sequence[str], plots: Sequence[str] = ()) -> str:
  lines = [f"# Evaluation report: {report['split']} split, step {report['step']}", "",
           "| metric | value |", "|---|---|"]
  for key, value in report.items():
    if isinstance(value, float):
      lines.append(f"| {key} | {value:.4f} |")
    elif isinstance(value, int) and key != "step":
      lines.append(f"| {key} | {value} |")
  recall = report.get("per_class_recall")
  confusion = report.get("confusion_matrix")
  if recall and confusion:
    lines += ["", "## Per class", "", "| class | examples | recall |", "|---|---|---|"]
    for name, row, r in zip(class_names, confusion, recall):
      lines.append(f"| {name} | {sum(row)} | {'n/a' if r is None else f'{r:.4f}'} |")
    pairs = [(confusion[i][j], class_names[i], class_names[j])
             for i in range(len(confusion)) for j in range(len(confusion)) if i != j and confusion[i][j]]
    if pairs:
      lines += ["", "## Most confused (true -> predicted)", "", "| true | predicted | count |", "|---|---|---|"]
      for count, true, pred in sorted(pairs, reverse=True)[:10]:
        lines.append(f"| {true} | {pred} | {count} |")
  if plots:
    lines += ["", "## Figures", ""] + [f"![{os.path.basename(p)}]({p})" for p in plots]
  return "\n".join(lines) + "\n"


def _atomic_write(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
