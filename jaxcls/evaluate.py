"""`python -m jaxcls.evaluate --workdir DIR [--split S | --data FOLDER] [--step N|best] [--output_dir OUT]`:
Evaluates a trained model exactly (every example once) on a split of its data or on a folder of new labelled
images, writes report.json, report.md and plots/, and prints a one-line summary.

A split's report goes into DIR (the report training writes at its end) unless --output_dir says otherwise; a
--data folder's report goes into DIR/eval_<parent>_<folder>_<hash>: one folder per data path, so neither the
training report nor the report of another folder is overwritten.
"""

from absl import flags

from jaxcls import cli
from jaxcls.core.errors import ConfigError


def define_flags() -> None:
  """Flags are defined only when this file runs as the command (so commands can be imported side by side)."""
  flags.DEFINE_string(
    "workdir", None, "A trained run's directory (holds config.json and checkpoints/; local or gs://)."
  )
  flags.DEFINE_string("split", None, "Split to evaluate (default: the config's dataset.eval_split).")
  flags.DEFINE_string("step", None, "Checkpoint step to evaluate: N, 'latest' (default) or 'best'.")
  flags.DEFINE_string(
    "output_dir",
    None,
    "Where the report and plots go (default: the workdir; with --data, "
    "WORKDIR/eval_<parent>_<folder>_<hash>, one per data path).",
  )
  flags.DEFINE_string(
    "data",
    None,
    "A folder of new labelled images to evaluate instead of a split: class "
    "subfolders named like the trained classes, or any layout with --labels_file.",
  )
  flags.DEFINE_string(
    "labels_file",
    None,
    "With --data: a CSV/JSON of image paths (relative to --data) and labels, as for dataset.labels_file.",
  )


def main(argv: list[str]) -> int | None:
  """Flags -> workdir_eval.evaluate_workdir -> the summary line."""
  del argv
  f = flags.FLAGS
  if not f.workdir:
    raise ConfigError("--workdir is required, e.g. `python -m jaxcls.evaluate --workdir DIR`.")
  from jaxcls.evaluation import workdir_eval  # pylint: disable=g-import-not-at-top  (jax: not for --help)

  final = workdir_eval.evaluate_workdir(
    f.workdir, split=f.split, step=f.step, output_dir=f.output_dir, data_dir=f.data, labels_file=f.labels_file
  )
  print(workdir_eval.summary(final))  # stdout only: a second copy in the log would show it twice on a terminal


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, doc=__doc__)
