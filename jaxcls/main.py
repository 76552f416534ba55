"""Entry point: `python -m jaxcls.main --config configs/default.py --workdir DIR [--config.key=value ...]`.

Only flags, multi-host initialisation and hand-off to `train.train_and_evaluate` live here. User errors (a bad
config key, a missing dataset, a mismatched checkpoint, a NaN loss) print one line and exit non-zero.
"""

import time

_STARTED = time.perf_counter()  # before the imports below, so the phase table can show what they cost

import importlib.util  # noqa: E402  pylint: disable=wrong-import-position
import os  # noqa: E402  pylint: disable=wrong-import-position
import sys  # noqa: E402  pylint: disable=wrong-import-position
import traceback  # noqa: E402  pylint: disable=wrong-import-position

from absl import app, flags, logging  # noqa: E402  pylint: disable=wrong-import-position
from ml_collections import config_flags  # noqa: E402  pylint: disable=wrong-import-position

from jaxcls.training import preemption  # noqa: E402  pylint: disable=wrong-import-position
from jaxcls.core.errors import ConfigError, JaxclsError  # noqa: E402  pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Initialise jax.distributed: 'auto' does so when the environment describes a multi-process job "
    "(SLURM with several tasks, a multi-host Cloud TPU) or --coordinator_address is given.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for manual multi-host.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (manual multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (manual multi-host).")
_PROFILE = flags.DEFINE_boolean(
    "profile", False, "Log a table of where the wall time went (imports, data, init, compile, steps, eval, "
    "checkpoints, plots, report) when training ends.")
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout", 300, "Seconds jax.distributed.initialize waits for every process to connect.")

_model_args_from_argv: dict = {}


class _QuietLibraries:
  """Drops INFO lines from orbax and jax internals, which otherwise bury the training log (warnings stay)."""

  NOISY = (os.sep + "orbax" + os.sep, os.sep + "jax" + os.sep + "_src" + os.sep)

  def filter(self, record) -> bool:
    if record.exc_info and any(part in record.pathname for part in (self.NOISY[0], os.sep + "asyncio" + os.sep)):
      record.exc_info, record.exc_text = None, None  # a failed background write (full disk) logged by orbax or
                                                     # asyncio with its traceback; the one-line error says why
    return record.levelno > 20 or not any(part in record.pathname for part in self.NOISY)


def init_distributed() -> None:
  """jax.distributed.initialize with arguments from jaxcls.core.cluster (SLURM: all local devices of a task)."""
  import jax
  from jaxcls.core import cluster
  args = cluster.initialize_args(os.environ, mode=_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
                                 num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  if args is None:
    return
  jax.distributed.initialize(**args, initialization_timeout=_DISTRIBUTED_TIMEOUT.value)
  from jax._src import xla_bridge  # where initialize() records the local_device_ids it applied
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices, local_device_ids=%s "
               "(jax_cuda_visible_devices=%s).", jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), ",".join(map(str, args.get("local_device_ids") or [])) or "all",
               xla_bridge.CUDA_VISIBLE_DEVICES.value)


def _load_config_file(argv: list[str]):
  """The config file named by --config, loaded on its own to check override keys before absl parses them."""
  path = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
  if path is None:
    return None
  path = path.split(":", 1)[0]
  if not os.path.isfile(path):
    raise ConfigError(f"Config file {path!r} does not exist; pass --config=configs/default.py or another file.")
  spec = importlib.util.spec_from_file_location("_jaxcls_user_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
      raise ConfigError(f"Config file {path!r} defines no get_config(); a config file returns its ConfigDict from "
                        "get_config() (see configs/default.py).")
    return module.get_config()
  except JaxclsError:
    raise
  except SyntaxError as e:
    raise ConfigError(f"Config file {path!r} is not valid Python: {e.msg} at line {e.lineno}.") from None
  except Exception as e:  # pylint: disable=broad-except  (the user's own code failed while building the config)
    frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.samefile(f.filename, path)] \
        if os.path.isfile(path) else []
    where = f" at line {frames[-1].lineno}" if frames else ""
    raise ConfigError(f"Config file {path!r} failed{where}: {type(e).__name__}: {e}.") from None


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config-key mistakes reported as one line instead of a traceback."""
  from jaxcls.config import check as config_check
  global _model_args_from_argv
  try:
    config = _load_config_file(argv)
    if config is not None:
      argv, _model_args_from_argv = config_check.split_argv(argv, config)
      sys.argv[:] = argv  # config_flags reads the override flags from sys.argv itself
    return flags.FLAGS(argv)
  except JaxclsError as e:
    _exit(str(e), 2)
  except flags.Error as e:
    _exit(f"{e}", 2)
  except (KeyError, AttributeError, ValueError, TypeError) as e:
    _exit(f"Bad --config override: {str(e).strip(chr(39) + chr(34))}", 2)


def _exit(message: str, code: int):
  print(f"jaxcls: error: {message}", file=sys.stderr)
  sys.exit(code)


def main(argv):
  del argv
  if _CONFIG.value is None or not _WORKDIR.value:
    _exit("Both --config and --workdir are required, e.g. --config=configs/default.py --workdir=/tmp/run.", 2)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from jaxcls.core import errors
  errors.drop_closed_loop_noise()  # after a failed checkpoint write (full disk): no traceback storm
  config = _CONFIG.value
  for key, value in _model_args_from_argv.items():
    config.model[key] = value
  try:
    from jaxcls.core import paths
    paths.path(_WORKDIR.value, "workdir")  # a bad or unsupported URL fails here, before jax is imported
    init_distributed()
    from jaxcls.core import phases
    from jaxcls.training import loop as train
    clock = phases.PhaseClock(_STARTED)
    clock.add("imports", time.perf_counter() - _STARTED)
    train.train_and_evaluate(config, _WORKDIR.value, clock=clock)
    if _PROFILE.value:
      logging.info("Where the wall time went (--profile; exit not included):\n%s", clock.table())
  except preemption.Preempted as e:
    import jax
    if jax.process_index() == 0:
      print(f"jaxcls: {e}", file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_CODE)
  except KeyboardInterrupt:
    _exit("interrupted before training started or after it ended; the checkpoints written so far are kept.", 130)
  except JaxclsError as e:
    _exit(str(e), 1)
  except Exception as e:  # pylint: disable=broad-except  (a full disk, a read-only or file workdir: one line)
    from jaxcls.core import errors
    fault = errors.disk_fault(e, _WORKDIR.value)
    if fault is None:
      raise
    _exit(str(fault), 1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
