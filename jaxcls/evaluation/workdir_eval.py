"""Evaluate a trained workdir on a split of its data, or on a folder of new labelled images.

  python -m jaxcls.evaluate --workdir DIR [--split test] [--step N|best] [--output_dir OUT]
  python -m jaxcls.evaluate --workdir DIR --data FOLDER [--labels_file F] [--step N|best] [--output_dir OUT]

Restores the model and its resolved config (DIR/config.json) from a training workdir, evaluates exactly (every
example once), and writes report.json, report.md and plots/, then prints a summary. A split's report goes into DIR
(the same report training writes at its end) unless --output_dir says otherwise; a --data folder's report goes
into DIR/eval_<folder name>, so the training report is kept.
"""

import os
import sys

from absl import app, flags, logging

from jaxcls.core.errors import ConfigError

def define_flags() -> None:
  """The command's flags, defined only when it runs (several commands share names such as --workdir)."""
  flags.DEFINE_string("workdir", None, "A jaxcls training workdir (holds config.json and checkpoints/).")
  flags.DEFINE_string("split", None, "Split to evaluate (default: the config's dataset.eval_split).")
  flags.DEFINE_string("step", None, "Checkpoint step to evaluate: N, 'latest' (default) or 'best'.")
  flags.DEFINE_string("output_dir", None, "Where the report and plots go (default: the workdir; with --data, "
                      "WORKDIR/eval_<folder name>).")
  flags.DEFINE_string("data", None, "A folder of new labelled images to evaluate instead of a split: class "
                      "subfolders named like the trained classes, or any layout with --labels_file.")
  flags.DEFINE_string("labels_file", None, "With --data: a CSV/JSON of image paths (relative to --data) and "
                      "labels, as for dataset.labels_file.")


def evaluate_workdir(workdir: str, *, split: str | None = None, step: int | None = None,
                     output_dir: str | None = None, data_dir: str | None = None,
                     labels_file: str | None = None) -> dict:
  """Evaluates checkpoint `step` (default: latest) of `workdir` on `split`; writes and returns the report.

  With `data_dir`, the images of that folder (labelled by class subfolders or `labels_file`) are evaluated
  instead of a split of the training data, which then need not exist.
  """
  from jaxcls.core import paths  # pylint: disable=g-import-not-at-top
  workdir = os.fspath(paths.path(workdir, "--workdir"))  # a local folder or a gs:// URL; a bad URL fails at once
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxcls import data  # pylint: disable=g-import-not-at-top
  from jaxcls.core import parallel
  from jaxcls.evaluation import report
  from jaxcls.store import restore
  from jaxcls.training import steps
  from jaxcls.training import loop as train
  from jaxcls.models import tta
  from jaxcls.data.sources import labelled_folder  # pylint: disable=g-import-not-at-top
  from jaxcls.training.state import TrainState  # pylint: disable=g-import-not-at-top

  config = restore.load_config(workdir)
  confine_cache_dir(config, workdir)
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
  if data_dir:  # no training class counts here: the loss is unweighted even if training weighted classes
    task, model = restore.build_task_and_model(config, info)
  else:
    task, model, _ = train.build_task_and_model(config, info)
  # Only what evaluation reads (the moving average when one was kept), so any optimizer's checkpoint fits.
  variables = restore.read_variables(workdir, step)
  state = parallel.replicate(TrainState(step=jnp.asarray(step, jnp.int32), params=variables["params"],
                                        batch_stats=variables["batch_stats"], opt_state={}, ema_params={}), mesh)
  eval_step = steps.CompiledOnFirstCall(
      steps.make_eval_step(model, task, mean=info.mean, std=info.std, dtype=config.dtype, mesh=mesh,
                           tta=tta.from_config(config)),
      "Eval step (forward)", eval_batch_size / mesh.size)
  result, outputs = train.evaluate(eval_step, state, dataset, task, eval_batch_size, mesh,
                                   config.prefetch_to_device)
  final = {"step": int(step), "split": config.dataset.eval_split, "task": config.task.type,
           "model": config.model.name, **result}
  if parallel.is_main_process():
    default = paths.join(workdir, "eval_" + os.path.basename(os.path.normpath(data_dir))) if data_dir else workdir
    output_dir = os.fspath(paths.makedirs(output_dir or default, "--output_dir"))
    if data_dir:
      train.write_skipped_files(output_dir, dataset, True)
    plots = train.write_plots(output_dir, final, outputs, info.class_names, metrics_dir=workdir, dataset=dataset,
                              batch_size=eval_batch_size)
    report.write(output_dir, final, info.class_names, plots)
  return final


def confine_cache_dir(config, workdir: str) -> None:
  """Keeps the decoded-image cache in the workdir or the user's cache folder, whatever config.json says.

  A workdir's config.json may come from elsewhere (a copied or crafted workdir): its `dataset.cache_dir` must not
  make evaluate read or write arrays outside the workdir, the data folder and ~/.cache/jaxcls. Anywhere else
  (an old machine's path, `/etc`, a link out of the workdir) is replaced by WORKDIR/cache, with a warning.
  """
  from jaxcls.core import paths  # pylint: disable=g-import-not-at-top
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
  replacement = "" if paths.is_remote(workdir) else os.path.join(workdir, "cache")
  logging.warning("The workdir's config.json sets dataset.cache_dir=%r, outside the workdir and %s; evaluate "
                  "uses %s instead.", value, user_cache, replacement or user_cache)
  config.dataset.cache_dir = replacement


def summary(final: dict) -> str:
  keys = [k for k in ("num_examples", "loss", "accuracy", "top5_accuracy", "balanced_accuracy", "macro_f1",
                      "macro_roc_auc", "ece") if k in final]
  values = ", ".join(f"{k} {final[k]:.4f}" if isinstance(final[k], float) else
                     f"{k} {'undefined' if final[k] is None else final[k]}" for k in keys)
  return f"{final['model']} at step {final['step']} on the {final['split']} split: {values}"


def main(argv):
  del argv
  args = flags.FLAGS
  if not args.workdir:
    print("jaxcls: error: --workdir is required.", file=sys.stderr)
    sys.exit(2)
  from jaxcls.core import errors  # pylint: disable=g-import-not-at-top
  with errors.exit_on_user_error():
    if args.labels_file and not args.data:
      raise ConfigError("--labels_file needs --data (the folder its paths are relative to).")
    final = evaluate_workdir(args.workdir, split=args.split, step=args.step, output_dir=args.output_dir,
                             data_dir=args.data, labels_file=args.labels_file)
  logging.info("%s", summary(final))
  print(summary(final))


if __name__ == "__main__":
  define_flags()
  app.run(main)
