"""The exact eval loop and the final report it feeds: every example once, padded rows masked out.

Training (at its eval points and at the end), `python -m jaxcls.evaluate` and the classical baseline all
evaluate and report through here, so a split evaluates to the same numbers and the same files whoever runs it.
The eval step (`make_eval_step`) applies `jaxcls.models.forward`, the forward pass predict and export share.
"""

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from jaxcls.core import parallel, paths
from jaxcls.core.metrics import RowGatherer, SumAccumulator
from jaxcls.data import prefetch
from jaxcls.evaluation import group_metrics
from jaxcls.evaluation import report as report_lib
from jaxcls.models import forward
from jaxcls.models import tta as tta_lib
from jaxcls.store import workdir as workdir_lib


def make_eval_step(model, task, *, mean, std, dtype: str, mesh, tta: str = "none") -> Callable:
  """Returns eval_step(variables, batch) -> (the task's sums over the valid rows, per-example outputs and mask).

  `variables` is {'params', 'batch_stats'} (the moving average's params when one is kept). No training
  augmentation, eval-mode batch norm; `tta` (config.eval_tta) averages the logits over fixed views of each image,
  as predict and export do. The outputs come back replicated, so every process can compute exact ranking metrics
  over the whole split; the mask says which rows are real.
  """
  tta_lib.check(tta)

  def eval_step(variables, batch: dict):
    logits = forward.eval_logits(
      model, forward.model_variables(variables), batch["image"], mean=mean, std=std, dtype=dtype, tta=tta
    )
    outputs = dict(task.eval_outputs(logits, batch["label"], batch["mask"]), mask=batch["mask"])
    return task.eval_sums(logits, batch["label"], batch["mask"]), outputs

  return jax.jit(
    eval_step,
    in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
    out_shardings=parallel.replicated(mesh),
  )


def evaluate(
  eval_step, variables, dataset, task, batch_size: int, mesh, prefetch_size: int = 0
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Exact metrics over the whole eval split, and every valid example's outputs (padded rows masked out).

  `eval_step(variables, batch)` is `make_eval_step`'s (or any step of that shape, e.g. one compiled ahead).
  """
  sums, rows = SumAccumulator(), RowGatherer()
  with contextlib.closing(prefetch.to_device(dataset.eval_batches(batch_size), mesh, prefetch_size)) as batches:
    for batch in batches:
      batch_sums, outputs = eval_step(variables, batch)
      sums.add(batch_sums)
      rows.add(outputs)
  outputs = rows.result()
  result = task.finalize(sums.result(), outputs or None)
  groups = getattr(dataset, "eval_groups", None)  # only sources with groups (a folder's group file) have them
  if groups is not None and outputs:
    result["per_group"] = group_metrics.per_group(
      outputs, groups, task.num_classes, predicted=task.decide(outputs["probs"])
    )
  return result, outputs


def final_report(step: int, config, result: dict[str, Any], model_name: str | None = None) -> dict[str, Any]:
  """report.json's content: which step, split, task and model were evaluated, then the task's metrics."""
  return {
    "step": int(step),
    "split": config.dataset.eval_split,
    "task": config.task.type,
    "model": model_name or config.model.name,
    **result,
  }


def misclassified_images(dataset, batch_size: int, wrong_rows: np.ndarray) -> np.ndarray:
  """The eval images at `wrong_rows` (indices into the split's valid rows, in order), read again on the host."""
  wanted, found, row = set(int(r) for r in wrong_rows), {}, 0
  for batch in dataset.eval_batches(batch_size):
    for image in batch["image"][batch["mask"]]:
      if row in wanted:
        found[row] = image
      row += 1
    if len(found) == len(wanted):
      break
  return np.stack([found[int(r)] for r in wrong_rows])


def select_misclassified(
  labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, max_images: int = 36
) -> np.ndarray:
  """Rows of up to `max_images` mistakes for the misclassified grid: many true classes, the most confident first.

  The mistakes of each true class are ranked by the confidence of the wrong decision; the grid takes each class's
  most confident mistake, then each one's second, and so on (round-robin), with the classes in the order of their
  most confident mistake. The first mistakes in eval order are often all of one class and say little.
  """
  labels, predicted = np.asarray(labels), np.asarray(predicted)
  confidence = np.asarray(confidence, np.float64)
  wrong = np.flatnonzero(predicted != labels)
  queues: dict[int, list[int]] = {}  # true class -> its mistakes, most confident first
  for row in wrong[np.argsort(-confidence[wrong], kind="stable")]:
    queues.setdefault(int(labels[row]), []).append(int(row))
  picked, depth = [], 0
  while len(picked) < max_images and any(depth < len(q) for q in queues.values()):
    picked += [q[depth] for q in queues.values() if depth < len(q)][: max_images - len(picked)]
    depth += 1
  return np.asarray(picked, np.int64)


def decided_confidence(task, class_names: Sequence[str], probs: np.ndarray) -> np.ndarray:
  """The probability of each example's decided class, as `predict` reports it (the task's prediction record)."""
  return np.asarray([task.prediction_record(class_names, row, 1)["probability"] for row in probs], np.float64)


_preloading: threading.Thread | None = None  # the process's one `preload_plots` thread


def preload_plots() -> None:
  """Starts importing matplotlib (`plots.preload`) in a background thread, once per process: called early (the
  classification evaluator, built before the run compiles, which releases the GIL), the figures do not wait for it."""
  global _preloading
  if _preloading is None:
    _preloading = threading.Thread(target=_preload, name="jaxcls-plots-preload", daemon=True)
    _preloading.start()


def _preload() -> None:
  try:
    from jaxcls.evaluation import plots  # pylint: disable=g-import-not-at-top

    plots.preload()
  except Exception:  # pylint: disable=broad-except  (no matplotlib: write_plots warns; anything else: it raises)
    return


def write_plots(
  folder: str,
  report: dict,
  outputs: dict,
  class_names,
  metrics_dir: str | None = None,
  dataset=None,
  batch_size: int | None = None,
  max_images: int = 36,
  *,
  task,
) -> list[str]:
  """The report's figures in `folder`/plots (skipped, with a warning, when matplotlib is not installed).

  The training curves come from `metrics_dir`/metrics.jsonl (default: `folder`). With the dataset, a
  single-process run of a single-label task also draws a grid of misclassified eval images, decided by
  `task.decide` as predict decides (with several processes each holds only its share of the images, so the grid
  is left out).
  """
  if _preloading is not None:  # one thread draws at a time (matplotlib shares caches between figures)
    _preloading.join()
  try:
    import matplotlib  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    logging.warning("matplotlib is not installed, so DIR/plots is not written; pip install 'jaxcls[plots]'.")
    return []
  from jaxcls.evaluation import plots  # pylint: disable=g-import-not-at-top

  plots_dir = os.fspath(workdir_lib.plots_path(folder))
  written = plots.write_all(
    plots_dir, report, outputs or None, class_names, os.fspath(workdir_lib.metrics_path(metrics_dir or folder))
  )
  labels, probs = (outputs or {}).get("labels"), (outputs or {}).get("probs")
  if (
    dataset is not None
    and task.single_label
    and labels is not None
    and probs is not None
    and np.ndim(labels) == 1
    and len(labels)
    and jax.process_count() == 1
  ):
    predicted = np.asarray(task.decide(probs))
    confidence = np.zeros(len(labels))
    wrong = np.flatnonzero(predicted != labels)
    confidence[wrong] = decided_confidence(task, class_names, np.asarray(probs)[wrong])
    rows = select_misclassified(labels, predicted, confidence, max_images)
    if len(rows):
      images = misclassified_images(dataset, batch_size, rows)
      written.append(
        plots.misclassified_grid(
          images,
          labels[rows],
          predicted[rows],
          class_names,
          os.path.join(plots_dir, "misclassified.png"),
          max_images,
          confidence=confidence[rows],
        )
      )
  return written


class Drawing:
  """`write_plots` running in a background thread, so the figures are drawn while the run still closes its
  checkpoints; `result()` waits for them and raises what drawing raised, as drawing in line would have.

  Safe off the main thread: the figures are `matplotlib.figure.Figure`s (no pyplot, no GUI, no global state).
  The thread is a daemon, so a run failing before `result()` does not wait for its figures.
  """

  def __init__(self, draw: Callable[[], list[str]]):
    self.seconds = 0.0  # how long the drawing took, in its own thread (set when it ends)
    self._figures: list[str] = []
    self._error: BaseException | None = None
    self._thread = threading.Thread(target=self._draw, args=(draw,), name="jaxcls-plots", daemon=True)
    self._thread.start()

  def _draw(self, draw: Callable[[], list[str]]) -> None:
    begin = time.perf_counter()
    try:
      self._figures = draw()
    except BaseException as e:  # pylint: disable=broad-except  (result() raises it in the caller's thread)
      self._error = e
    finally:
      self.seconds = time.perf_counter() - begin

  def result(self) -> list[str]:
    """The figures' paths, once drawn; raises the drawing's exception (its traceback starts in the thread)."""
    self._thread.join()
    if self._error is not None:
      raise self._error
    return self._figures


def start_plots(
  folder: str,
  report: dict,
  outputs: dict,
  class_names,
  *,
  task,
  dataset=None,
  batch_size: int | None = None,
  metrics_dir: str | None = None,
) -> Drawing:
  """`write_plots` with these arguments started in a background thread; hand it to `write_report(drawing=...)`.

  Start it once metrics.jsonl holds its last line (the training curves read it) and leave `report` and `outputs`
  unchanged until `result()`.
  """
  return Drawing(
    lambda: write_plots(
      folder, report, outputs, class_names, metrics_dir=metrics_dir, dataset=dataset, batch_size=batch_size, task=task
    )
  )


def write_report(
  folder: str,
  report: dict,
  outputs: dict,
  class_names: Sequence[str],
  *,
  task,
  dataset=None,
  batch_size: int | None = None,
  metrics_dir: str | None = None,
  clock=None,
  drawing: Drawing | None = None,
) -> list[str]:
  """report.json, report.md and plots/ in `folder` (call on the main process); returns the figures' paths.

  `task` decides the misclassified grid's examples; `clock` (a `core.phases.PhaseClock`) is charged 'plots' and
  'report' for the two parts, when given. With `drawing` (`start_plots`' of the same report), the figures are
  that drawing's: 'plots' is charged the wait for it and its own duration is noted as overlapped.
  """
  phase = clock.phase if clock is not None else (lambda name: contextlib.nullcontext())
  with phase("plots"):
    if drawing is None:
      figures = write_plots(
        folder, report, outputs, class_names, metrics_dir=metrics_dir, dataset=dataset, batch_size=batch_size, task=task
      )
    else:
      try:
        figures = drawing.result()
      finally:
        if clock is not None:
          clock.overlapped("plots", drawing.seconds)
  with phase("report"):
    report_lib.write(folder, report, class_names, figures)
  return figures


def scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
  """The report's scalar metrics under `prefix` ('eval/accuracy', ...): what writers log and best_metric ranks."""
  return {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def output_folder(workdir: str, output_dir: str | None, data_dir: str | None) -> str:
  """Where an evaluation's report goes: `output_dir`, else the workdir for a split, and for a data folder
  DIR/eval_<parent>_<folder>_<hash> (`store.workdir.eval_folder`: one folder per data path, never shared)."""
  default = workdir_lib.eval_folder(workdir, data_dir) if data_dir else workdir
  return os.fspath(paths.makedirs(output_dir or default, "--output_dir"))
