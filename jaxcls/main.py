"""`python -m jaxcls.main --config configs/default.py --workdir DIR [--config.key=value ...]`: Trains a model.

The config file says what to train on what data; any of its keys can be changed on the command line. DIR receives
the checkpoints, metrics.jsonl, TensorBoard logs and the final report; running the same command again resumes it.
"""

import time

_STARTED = time.perf_counter()  # before the imports below, so the phase table can show what they cost

import os  # noqa: E402  pylint: disable=wrong-import-position
import sys  # noqa: E402  pylint: disable=wrong-import-position

from absl import flags  # noqa: E402  pylint: disable=wrong-import-position

from jaxcls import cli  # noqa: E402  pylint: disable=wrong-import-position
from jaxcls.core.errors import ConfigError  # noqa: E402  pylint: disable=wrong-import-position


def define_flags() -> None:
  """The training command's flags."""
  cli.define_config_flag()
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports (local or gs://).")
  flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "Initialise jax.distributed: 'auto' does so when the environment describes a multi-process job "
    "(SLURM with several tasks, a multi-host Cloud TPU) or --coordinator_address is given.",
  )
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for manual multi-host.")
  flags.DEFINE_integer("num_processes", None, "Number of processes (manual multi-host).")
  flags.DEFINE_integer("process_id", None, "This process's index (manual multi-host).")
  flags.DEFINE_integer("distributed_timeout", 300, "Seconds jax.distributed.initialize waits for every process.")
  flags.DEFINE_boolean(
    "profile",
    False,
    "Log a table of where the wall time went (imports, data, init, compile, "
    "steps, eval, checkpoints, plots, report) when training ends.",
  )


def main(argv: list[str]) -> int | None:
  """--config and --workdir -> jax.distributed (when asked) -> train.train_and_evaluate."""
  del argv
  f = flags.FLAGS
  if f.config is None or not f.workdir:
    raise ConfigError("Both --config and --workdir are required, e.g. --config=configs/default.py --workdir=/tmp/run.")
  config = cli.config()
  from jaxcls.core import cluster, paths, phases  # pylint: disable=g-import-not-at-top
  from jaxcls.training import preemption  # pylint: disable=g-import-not-at-top

  paths.path(f.workdir, "workdir")  # a bad or unsupported URL fails here, before jax is imported
  try:
    cluster.initialize(
      os.environ,
      mode=f.distributed,
      coordinator_address=f.coordinator_address,
      num_processes=f.num_processes,
      process_id=f.process_id,
      timeout=f.distributed_timeout,
    )
    from jaxcls.training import loop  # pylint: disable=g-import-not-at-top

    clock = phases.PhaseClock(_STARTED)
    clock.add("imports", time.perf_counter() - _STARTED)
    loop.train_and_evaluate(config, f.workdir, clock=clock)
    import gc  # pylint: disable=g-import-not-at-top

    gc.freeze()  # the interpreter's exit collections skip the ~300k objects the run left: 0.7-1 s less on 2 cores
    if f.profile:
      from absl import logging  # pylint: disable=g-import-not-at-top

      logging.info("Where the wall time went (--profile; exit not included):\n%s", clock.table())
  except preemption.Preempted as e:
    import jax  # pylint: disable=g-import-not-at-top

    if jax.process_index() == 0:
      print(f"jaxcls: {e}", file=sys.stderr, flush=True)
    return preemption.EXIT_CODE


# Ctrl-C outside the steps (while they run, the loop's own handler saves a checkpoint first).
INTERRUPTED = (
  "jaxcls: error: interrupted before training started or after it ended; the checkpoints written so far are kept."
)


if __name__ == "__main__":
  cli.run(
    main, define_flags=define_flags, doc=__doc__, flags_parser=cli.parse_config_flags, interrupted_line=INTERRUPTED
  )
