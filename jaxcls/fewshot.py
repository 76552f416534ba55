"""`python -m jaxcls.fewshot --workdir DIR [--step N|best] [--shots 1,5,10,25] [--seeds 3] [--knn_k 1,10]`:
Measures how good a trained model's penultimate features are, with ridge few-shot and k-NN classifiers fitted on
the training split and scored on the eval split; prints a table and writes DIR/fewshot.json.

The defaults are those of the config's `fewshot` section (the evaluator training runs with
`--config.evaluators=fewshot`), except that the command uses the whole training split (docs/fewshot.md).
"""

from absl import flags

from jaxcls import cli
from jaxcls.core.errors import ConfigError


def define_flags() -> None:
  """Flags are defined only when this file runs as the command; their defaults come from config.fewshot."""
  from jaxcls.config import base  # pylint: disable=g-import-not-at-top  (ml_collections only: cheap)

  d = base.get_base_config().fewshot
  flags.DEFINE_string(
    "workdir", None, "A trained run's directory (holds config.json and checkpoints/; local or gs://)."
  )
  flags.DEFINE_string("step", None, "Checkpoint step: N, 'latest' (default) or 'best' (config.best_metric).")
  flags.DEFINE_string("shots", ",".join(map(str, d.shots)), "Training examples per class for the ridge classifier.")
  flags.DEFINE_integer("seeds", d.seeds, "Shot draws per shot count (mean and std over them).")
  flags.DEFINE_string("knn_k", ",".join(map(str, d.knn_k)), "Neighbour counts for k-NN accuracy ('' = none).")
  flags.DEFINE_string("knn_metric", d.knn_metric, "k-NN distance: cosine or euclidean.")
  flags.DEFINE_float("l2_reg", d.l2_reg, "Ridge penalty on the standardised features.")
  flags.DEFINE_integer(
    "train_examples", 0, "Training examples to use (0 = the whole split, rounded down to whole batches)."
  )
  flags.DEFINE_integer("batch_size", d.batch_size, "Feature-extraction batch (0 = the config's eval batch).")


def _int_list(text: str, flag: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise ConfigError(f"--{flag}={text!r} must be a comma-separated list of integers, e.g. 1,5,10,25.") from None


def main(argv: list[str]) -> int | None:
  """Flags -> fewshot.evaluate_workdir -> the table."""
  del argv
  f = flags.FLAGS
  if not f.workdir:
    raise ConfigError("--workdir is required, e.g. `python -m jaxcls.fewshot --workdir DIR`.")
  from absl import logging  # pylint: disable=g-import-not-at-top

  from jaxcls.evaluation import fewshot  # pylint: disable=g-import-not-at-top  (jax: not for --help)

  final = fewshot.evaluate_workdir(
    f.workdir,
    step=f.step,
    shots=_int_list(f.shots, "shots"),
    seeds=f.seeds,
    knn_k=_int_list(f.knn_k, "knn_k"),
    knn_metric=f.knn_metric,
    l2_reg=f.l2_reg,
    train_examples=f.train_examples,
    batch_size=f.batch_size,
  )
  logging.info("Few-shot results:\n%s", fewshot.table(final))
  print(fewshot.table(final))


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, doc=__doc__)
