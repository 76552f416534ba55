"""`python -m jaxcls.classical --config configs/classical_digits.py --workdir DIR [--config.key=value ...]`: Fits a
classical model (an SVM on pixels or handcrafted features) instead of training a network.

The config file and its `--config.key=value` overrides work as for `python -m jaxcls.main`; DIR receives the report.
"""

from absl import flags

from jaxcls import cli
from jaxcls.core.errors import ConfigError


def define_flags() -> None:
  """--config (with its overrides) and --workdir."""
  cli.define_config_flag("configs/classical_digits.py")
  flags.DEFINE_string("workdir", None, "Directory for the report and the fitted model.")


def main(argv: list[str]) -> None:
  """The config -> classical.run.run -> one summary line."""
  del argv
  if flags.FLAGS.config is None or not flags.FLAGS.workdir:
    raise ConfigError(
      "Both --config and --workdir are required, e.g. --config=configs/classical_digits.py --workdir=/tmp/classical."
    )
  from jaxcls.classical import run  # pylint: disable=g-import-not-at-top

  final = run.run(cli.config(), flags.FLAGS.workdir)
  print(
    f"{final['model']} on the {final['split']} split: accuracy {final['accuracy']:.4f}, "
    f"train {final['train_seconds']:.1f} s, eval {final['eval_seconds']:.1f} s."
  )


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, doc=__doc__, flags_parser=cli.parse_config_flags)
