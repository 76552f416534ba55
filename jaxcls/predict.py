"""`python -m jaxcls.predict --workdir DIR IMAGE_OR_FOLDER... [--step N|best] [--top_k 5] [--output FILE]`: Prints
each image's predicted classes with their probabilities, scored as the workdir's evaluation scores its images.

Binary tasks show the positive-class probability against the threshold, multi-label tasks the labels at or above
their thresholds, hierarchical tasks the predicted path. Folders are searched recursively. A file that cannot be
read gets an error line and the others go on; the exit status is 1 only when every file failed. --output also
writes every prediction to a .csv or .json file; a last line on stderr gives the images per second. The first call
on a checkpoint keeps its compiled forward pass and weights in ~/.cache/jaxcls/xla/predict/, so the next ones start
without restoring or compiling (docs/predict.md).
"""

import os
import sys

from absl import flags

from jaxcls import cli
from jaxcls.core.errors import ConfigError


def define_flags() -> None:
  """Flags are defined only when this file runs as the command (so commands can be imported side by side)."""
  flags.DEFINE_string(
    "workdir", None, "A trained run's directory (holds config.json and checkpoints/; local or gs://)."
  )
  flags.DEFINE_string("step", None, "Checkpoint step to use: N, 'latest' (default) or 'best' (config.best_metric).")
  flags.DEFINE_integer("top_k", 5, "Classes listed per image (at most the number of classes).")
  flags.DEFINE_integer(
    "batch_size", None, "Images per forward pass, over all local devices (default: the config's eval batch size)."
  )
  flags.DEFINE_string("output", None, "Also write every prediction to this .csv or .json file.")
  flags.DEFINE_integer("workers", 0, "Decoding threads (0 = one per CPU core).")


def main(argv: list[str]) -> int | None:
  """--workdir and the image paths -> predictor.run (which prints a line per file) -> exit status."""
  f = flags.FLAGS
  if not f.workdir:
    raise ConfigError("--workdir is required, e.g. `python -m jaxcls.predict --workdir DIR photo.jpg folder/`.")
  from jaxcls.inference import predictor  # pylint: disable=g-import-not-at-top  (jax: not for --help)

  status = predictor.run(
    f.workdir, argv[1:], step=f.step, top_k=f.top_k, batch_size=f.batch_size, output=f.output, workers=f.workers
  )
  exit_now(status)


def exit_now(status: int) -> None:
  """Ends the finished command without the interpreter's teardown.

  By now every line is printed, --output is written (in one step) and the decoding threads are joined;
  finalizing the jax, orbax and flax modules and the XLA client would only add 0.3-0.8 s (2-core CPU) to the
  command's wall time. Buffered output is flushed first.
  """
  import logging as std_logging  # pylint: disable=g-import-not-at-top

  std_logging.shutdown()  # absl's handlers too: flushes them
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


# What Ctrl-C leaves behind: --output is written in one step at the end, and the decode workers die with the command.
INTERRUPTED = "jaxcls: predict interrupted (Ctrl-C); the lines printed above are whole, --output is not written."

if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, doc=__doc__, interrupted_line=INTERRUPTED)
