"""What one committed checkpoint folder (`DIR/checkpoints/<step>`) holds, read from its small files without orbax.

The checks here (is a step complete, which step is best, has a step changed) read only JSON files and file
listings, so commands that merely pick or vet a step (`restore.resolve_step`, predict's forward-pass cache) do not
import orbax and tensorstore; `checkpoint.Checkpointer` uses the same functions.
"""

import hashlib
import json
import math
import os
from collections.abc import Sequence

from etils import epath

from jaxcls.core import paths

METRICS_ITEM = "metrics"  # orbax's own item (and file) name for the metrics given to save()
STEP_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")  # written by orbax when a save is committed
_GARBAGE = object()


def read_json(path: epath.Path):
  """The parsed JSON file, or a marker object when it is not valid JSON (UTF-8)."""
  try:
    return json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError):
    return _GARBAGE


def score(metrics, metric: str) -> float | None:
  """The finite value of `metric` in a checkpoint's metrics, or None (absent, NaN or not a number)."""
  value = metrics.get(metric) if isinstance(metrics, dict) else None
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    return None
  return float(value)


def pick_best(step_scores: Sequence[tuple[int, float | None]], mode: str) -> int | None:
  """The step with the best score (ties: the later step), or None when no step has one."""
  best = None
  for step, value in sorted(step_scores):
    if value is not None and (best is None or (value >= best[1] if mode == "max" else value <= best[1])):
      best = (step, value)
  return None if best is None else best[0]


def step_problems(step_dir: epath.Path) -> list[str]:
  """What is missing or damaged in one checkpoint folder, from its small files only (no array data is read)."""
  problems = []
  if not step_dir.is_dir():
    return [f"{step_dir.name} is not a folder"]
  for name in STEP_FILES:
    if not (step_dir / name).exists():
      problems.append(f"{name} is missing (the save was never committed)")
  if (step_dir / "_CHECKPOINT_METADATA").exists() and read_json(step_dir / "_CHECKPOINT_METADATA") is _GARBAGE:
    problems.append("_CHECKPOINT_METADATA is not valid JSON")
  if not (step_dir / "state").is_dir():
    problems.append("the state item (state/) is missing")
  elif not (step_dir / "state" / "_METADATA").exists():
    problems.append("state/_METADATA (the array tree) is missing")
  elif not isinstance(read_json(step_dir / "state" / "_METADATA"), dict):
    problems.append("state/_METADATA is not valid JSON")
  if not (step_dir / "meta").is_dir():
    problems.append("the meta item (meta/) is missing")
  elif not (step_dir / "meta" / "metadata").exists():
    problems.append("meta/metadata is missing")
  else:
    meta = read_json(step_dir / "meta" / "metadata")
    if not isinstance(meta, dict) or "fingerprint" not in meta or "data" not in meta:
      problems.append("meta/metadata is not the JSON that jaxcls writes (fingerprint and data position)")
  metrics = step_dir / METRICS_ITEM / METRICS_ITEM
  if metrics.exists() and not isinstance(read_json(metrics), dict):
    problems.append(f"{METRICS_ITEM}/{METRICS_ITEM} is not valid JSON")
  return problems


def identity(step_dir: epath.Path) -> str:
  """A hex digest that changes whenever the step is written again or any of its files changes.

  orbax's `_CHECKPOINT_METADATA` holds the save's commit time, so a step saved anew (a rerun, a copy from
  elsewhere) gets another digest; in a local folder every file's path, size and modification time count too, so
  a file changed in place (damaged, or replaced by hand) does as well. Nothing of the arrays is read.
  """
  digest = hashlib.sha256((step_dir / "_CHECKPOINT_METADATA").read_bytes())
  if not paths.is_remote(step_dir):
    root = os.fspath(step_dir)
    for folder, subfolders, files in sorted(os.walk(root)):
      subfolders.sort()
      for name in sorted(files):
        stat = os.stat(os.path.join(folder, name))
        relative = os.path.relpath(os.path.join(folder, name), root)
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
  return digest.hexdigest()
