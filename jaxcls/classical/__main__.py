"""`python -m jaxcls.classical --config configs/classical_digits.py --workdir DIR [--config.key=value ...]`.

The same flags and config-override checks as `python -m jaxcls.main` (they are its own), then a classical run
instead of training. User errors print one line and exit non-zero.
"""

from absl import app, logging

from jaxcls import main as cli
from jaxcls.core.errors import JaxclsError


# The flags and helpers of jaxcls.main are reused here, not copied.
# pylint: disable=protected-access


def main(argv):
  del argv
  if cli._CONFIG.value is None or not cli._WORKDIR.value:
    cli._exit("Both --config and --workdir are required, e.g. --config=configs/classical_digits.py "
              "--workdir=/tmp/classical.", 2)
  logging.get_absl_handler().addFilter(cli._QuietLibraries())
  config = cli._CONFIG.value
  for key, value in cli._model_args_from_argv.items():
    config.model[key] = value
  try:
    from jaxcls.classical import run  # pylint: disable=g-import-not-at-top
    final = run.run(config, cli._WORKDIR.value)
  except JaxclsError as e:
    cli._exit(str(e), 1)
  print(f"{final['model']} on the {final['split']} split: accuracy {final['accuracy']:.4f}, "
        f"train {final['train_seconds']:.1f} s, eval {final['eval_seconds']:.1f} s.")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
