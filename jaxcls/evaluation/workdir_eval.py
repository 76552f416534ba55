"""Evaluate a trained workdir on a split of its data, or on a folder of new labelled images.

Restores the model and its resolved config (DIR/config.json) from a training workdir, evaluates exactly (every
example once), and writes report.json, report.md and plots/. A split's report goes into DIR (the same report
training writes at its end) unless `output_dir` says otherwise; a `data_dir` folder's report goes into
DIR/eval_<parent>_<folder>_<hash> (one per data path), so neither the training report nor another folder's is
overwritten. `python -m jaxcls.evaluate` is the command.
"""

import os

from absl import logging

from jaxcls.core.errors import ConfigError


def evaluate_workdir(
  workdir: str,
  *,
  split: str | None = None,
  step: int | None = None,
  output_dir: str | None = None,
  data_dir: str | None = None,
  labels_file: str | None = None,
) -> dict:
  """Evaluates checkpoint `step` (default: latest) of `workdir` on `split`; writes and returns the report.

  With `data_dir`, the images of that folder (labelled by class subfolders or `labels_file`) are evaluated
  instead of a split of the training data, which then need not exist.
  """
  from jaxcls.core import paths  # pylint: disable=g-import-not-at-top

  if labels_file and not data_dir:
    raise ConfigError("--labels_file needs --data (the folder its paths are relative to).")
  workdir = os.fspath(paths.path(workdir, "--workdir"))  # a local folder or a gs:// URL; a bad URL fails at once
  from jaxcls import data  # pylint: disable=g-import-not-at-top
  from jaxcls.core import compile_cache, parallel
  from jaxcls.data.sources import labelled_folder
  from jaxcls.evaluation import loop
  from jaxcls.models import tta
  from jaxcls.store import build, restore
  from jaxcls.store import workdir as workdir_lib

  config = restore.load_config(workdir)
  confine_cache_dir(config, workdir)
  compile_cache.enable_for_workdir(config, workdir)  # a second evaluation loads the compiled eval step from disk
  if split:
    config.dataset.eval_split = split
  mesh = parallel.make_mesh()
  eval_batch_size = config.eval_batch_size or config.batch_size
  parallel.check_batch_size(eval_batch_size, mesh, "eval_batch_size")
  step = restore.resolve_step(workdir, step)
  if data_dir:
    dataset = labelled_folder.load(config, restore.info_from_config(config), data_dir, labels_file or "")
    config.dataset.eval_split = os.fspath(paths.path(data_dir, "--data"))
  else:
    dataset = data.build(config)
  info = dataset.info
  # A split of the training data has its class counts, so the loss is weighted as in training; a new folder has
  # none, so its loss is unweighted even if training weighted classes.
  task, model, _ = build.build_task_and_model(config, info, weighted=not data_dir, new_run=False)
  # Only what evaluation reads (the moving average when one was kept), so any optimizer's checkpoint fits.
  variables = parallel.replicate(restore.read_variables(workdir, step), mesh)
  eval_step = loop.make_eval_step(
    model, task, mean=info.mean, std=info.std, dtype=config.dtype, mesh=mesh, tta=tta.from_config(config)
  )
  result, outputs = loop.evaluate(eval_step, variables, dataset, task, eval_batch_size, mesh, config.prefetch_to_device)
  final = loop.final_report(step, config, result)
  if parallel.is_main_process():
    output_dir = loop.output_folder(workdir, output_dir, data_dir)
    if data_dir:
      workdir_lib.write_skipped_files(output_dir, dataset, True)
    loop.write_report(
      output_dir,
      final,
      outputs,
      info.class_names,
      dataset=dataset,
      batch_size=eval_batch_size,
      metrics_dir=workdir,
      task=task,
    )
    logging.info("Report written to %s.", output_dir)
  return final


def confine_cache_dir(config, workdir: str) -> None:
  """Keeps the decoded-image cache in the workdir or the user's cache folder, whatever config.json says.

  A workdir's config.json may come from elsewhere (a copied or crafted workdir): its `dataset.cache_dir` must not
  make evaluate read or write arrays outside the workdir, the data folder and ~/.cache/jaxcls. Anywhere else
  (an old machine's path, `/etc`, a link out of the workdir) is replaced by WORKDIR/cache, with a warning.
  """
  from jaxcls.core import paths  # pylint: disable=g-import-not-at-top
  from jaxcls.store import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  value = config.dataset.get("cache_dir", "") or ""
  if not value:
    return  # the folder source's default: the user's cache folder
  user_cache = os.path.realpath(os.path.join(os.path.expanduser("~"), ".cache", "jaxcls"))
  roots = [user_cache]
  if not paths.is_remote(workdir):
    roots.append(os.path.realpath(workdir))
  real = "" if paths.is_remote(value) else os.path.realpath(os.path.expanduser(str(value)))
  if any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots if real):
    return
  replacement = "" if paths.is_remote(workdir) else workdir_lib.cache_dir(workdir)
  logging.warning(
    "The workdir's config.json sets dataset.cache_dir=%r, outside the workdir and %s; evaluate uses %s instead.",
    value,
    user_cache,
    replacement or user_cache,
  )
  config.dataset.cache_dir = replacement


def summary(final: dict) -> str:
  """The one line the command prints: model, step, split and the headline metrics."""
  keys = [
    k
    for k in (
      "num_examples",
      "loss",
      "accuracy",
      "top5_accuracy",
      "balanced_accuracy",
      "macro_f1",
      "macro_roc_auc",
      "ece",
    )
    if k in final
  ]
  values = ", ".join(
    f"{k} {final[k]:.4f}" if isinstance(final[k], float) else f"{k} {'undefined' if final[k] is None else final[k]}"
    for k in keys
  )
  return f"{final['model']} at step {final['step']} on the {final['split']} split: {values}"
