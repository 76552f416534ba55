"""One way to run a command: every `python -m jaxcls.X` parses its flags, filters logs and reports errors here.

A command file is flags -> one library call -> exit code, run by `run(main, define_flags=..., doc=__doc__)`:
- `--help` (`-h`, `--helpfull`) prints the command's doc and its own flags on stdout and exits 0, before absl
  (whose help exits 1 and lists every flag of every imported module) sees it;
- one log filter keeps the INFO lines of libraries (orbax, jax, absl, ...) out of every command's output;
- a `JaxclsError`, a bad flag or a disk fault prints one line `jaxcls: error: <message>` on stderr and exits 2;
  any other exception is a bug and keeps its traceback.
Commands that take a config file (`main`, `classical`, `show_data`) use `define_config_flag` + `parse_config_flags`
+ `config()`: `--config.key=value` overrides are checked against the file's keys (and the model's arguments)
before absl parses them, so a typo is one line naming the closest key, not a traceback.
"""

import importlib.util
import logging as std_logging
import os
import re
import signal
import sys
import textwrap
import traceback
from collections.abc import Callable
from typing import Any

from absl import app, flags, logging

from jaxcls.core import errors, extensions
from jaxcls.core.errors import ConfigError, JaxclsError

HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpfull", "-helpfull", "--helpshort", "-helpshort")
USER_ERROR_EXIT = 2

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_model_args: dict[str, Any] = {}  # model arguments named on the command line (--config.model.<arg>=...)
_file_model: dict[str, Any] = {}  # the config file's own model section and the model keys the command line gives
_model_keys_given: set[str] = set()  # (a model switched on the command line drops the file's: models.switch_model)


class QuietLibraries:
  """A logging filter: drops the INFO lines of libraries, which bury a command's own log (warnings stay).

  A library record is one whose source file lies in one of NOISY's folders (and not in jaxcls itself, wherever
  the checkout is). A background write that failed (a full disk) logs its traceback through orbax or asyncio:
  the traceback is dropped, the one-line error of the command says why.
  """

  NOISY = tuple(
    os.sep + name + os.sep
    for name in (
      "orbax",
      "jax",
      "jaxlib",
      "flax",
      "absl",
      "etils",
      "tensorstore",
      "tensorflow",
      "tensorflow_datasets",
      "chex",
      "optax",
      "clu",
    )
  )
  TRACEBACK_NOISE = (os.sep + "orbax" + os.sep, os.sep + "asyncio" + os.sep)

  def filter(self, record) -> bool:
    """True keeps the record."""
    path = record.pathname or ""
    if path.startswith(_PACKAGE_DIR):
      return True
    if record.exc_info and any(part in path for part in self.TRACEBACK_NOISE):
      record.exc_info, record.exc_text = None, None
    return record.levelno > std_logging.INFO or not any(part in path for part in self.NOISY)


def install_log_filter() -> None:
  """Puts one QuietLibraries on absl's handler (the one every library's log goes through); idempotent."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, QuietLibraries) for f in handler.filters):
    handler.addFilter(QuietLibraries())


def error(message: Any) -> None:
  """Prints the one line a user error ends with: `jaxcls: error: <message>` on stderr."""
  print(f"jaxcls: error: {message}", file=sys.stderr, flush=True)


def _fail(message: Any, code: int = USER_ERROR_EXIT):
  error(message)
  sys.exit(code)


INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a command ended by Ctrl-C


def interrupted(line: str | None = None) -> None:
  """Ctrl-C outside a handler of the command's own (training saves first: `training.preemption`): one line
  (default: `jaxcls: COMMAND interrupted (Ctrl-C).`) and exit status 130 at once, without the interpreter's
  teardown (which can wait on worker threads). Output files are written in one step (`core.paths.write_bytes`),
  so none is left half-written."""
  try:
    sys.stdout.flush()  # the lines already printed are whole ones
  except (OSError, RuntimeError, ValueError):
    pass
  command = os.path.splitext(os.path.basename(sys.argv[0] or "jaxcls"))[0]
  line = line or f"jaxcls: {command} interrupted (Ctrl-C)."
  os.write(2, (line + "\n").encode())
  os._exit(INTERRUPTED_EXIT)  # pylint: disable=protected-access


def _caused_by_interrupt(error: BaseException) -> bool:
  """Whether a KeyboardInterrupt is in the error's cause or context chain."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, KeyboardInterrupt):
      return True
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return False


def help_text(doc: str, names: list[str]) -> str:
  """The command's doc, then each of its flags (`names`) with its help and default: what --help prints."""
  text = textwrap.dedent(doc or "").strip()
  usage = re.match(r"`(python -m jaxcls[^`]*)`:?\s*", text)  # a doc that starts with its usage line
  if usage:  # its sentence may run on over the next lines: one paragraph under the usage line
    summary, _, rest = text[usage.end() :].partition("\n\n")
    text = "\n".join([f"usage: {usage.group(1)}", "", textwrap.fill(" ".join(summary.split()), 116), "", rest])
  lines = [text.replace("`", ""), ""]
  if names:
    lines.append("Flags:")
  for name in names:
    flag = flags.FLAGS[name]
    spelled = f"--[no]{name}" if flag.boolean else f"--{name}"
    choices = getattr(flag.parser, "enum_values", None)
    extra = [f"one of: {', '.join(choices)}"] if choices else []
    if flag.default not in (None, "", []):
      extra.append(f"default: {_shown(flag.default)}")
    lines.append(f"  {spelled}")
    text = re.sub(r"^<[^>]*>: ", "", (flag.help or "").strip())  # absl's "<a|b>: " before an enum's help
    if isinstance(flag, flags.MultiFlag):
      text = re.sub(r";\s*repeat this option to specify a list of values$", "", text)
      extra.append("repeatable")
    text += f" ({'; '.join(extra)})" if extra else ""
    lines.extend(textwrap.wrap(text, 116, initial_indent="      ", subsequent_indent="      "))
  return "\n".join(lines) + "\n"


def _shown(value: Any) -> str:
  """A flag's default as a user types it: 'text' quoted, true/false, a list comma-separated."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (list, tuple)):
    return ",".join(map(str, value))
  return repr(value) if isinstance(value, str) else str(value)


def _wants_help(argv: list[str]) -> bool:
  for arg in argv[1:]:
    if arg == "--":
      return False
    if arg in HELP_FLAGS:
      return True
  return False


def _flag_error(e: flags.Error) -> str:
  """absl's message for a bad flag as one line ('--input is required' for a missing required flag)."""
  text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
  text = re.sub(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.", r"--\1 is required", text)
  return f"{text} (--help lists this command's flags)."


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad flag (unknown, wrong type, missing value) as one line instead of usage + exit 1."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(_flag_error(e))


def _guarded(parser: Callable[[list[str]], list[str]]) -> Callable[[list[str]], list[str]]:
  """A flags_parser whose JaxclsErrors (a bad config file or override) exit 2 with one line."""

  def parse(argv: list[str]) -> list[str]:
    try:
      return parser(argv)
    except JaxclsError as e:
      _fail(e)

  return parse


def _workdir_flag() -> str | None:
  """The command's --workdir, if it has one: a disk fault's message names its newest checkpoint."""
  try:
    return flags.FLAGS["workdir"].value
  except KeyError:
    return None


def run(
  main: Callable[[list[str]], int | None],
  *,
  define_flags: Callable[[], None] | None = None,
  doc: str,
  flags_parser: Callable[[list[str]], list[str]] | None = None,
  interrupted_line: str | None = None,
) -> None:
  """Runs `main` as the command: flags, --help, the log filter, user errors as one line with exit code 2, and
  Ctrl-C as one line with exit code 130 (`interrupted_line`, default `jaxcls: COMMAND interrupted (Ctrl-C).`).

  `main(argv)` gets the positional arguments (argv[0] is the program) and returns the exit code (None is 0).
  `flags_parser` replaces absl's parsing (see `parse_config_flags`). Never returns.
  """
  before = set(flags.FLAGS)
  if define_flags is not None:
    define_flags()
  if _wants_help(sys.argv):
    names = [name for name in flags.FLAGS if name not in before]
    names = [n for n in names if flags.FLAGS[n].name == n]  # short names (-n) are listed with their flag
    sys.stdout.write(help_text(doc, names))
    sys.stdout.flush()
    sys.exit(0)

  def command(argv: list[str]) -> int:
    # Ctrl-C ends the command at once with one line: a KeyboardInterrupt can print a traceback, be swallowed by a
    # library's GC callback (jax's; the command then runs on) or land inside native code. Training replaces this
    # with its own handler while it steps (training.preemption: finish the step, save it, stop).
    signal.signal(signal.SIGINT, lambda signum, frame: interrupted(interrupted_line))
    install_log_filter()
    errors.drop_closed_loop_noise()  # after a failed checkpoint write (full disk): no traceback storm
    try:
      return main(argv) or 0
    except KeyboardInterrupt:  # raised by code rather than by the signal
      interrupted(interrupted_line)
    except JaxclsError as e:
      _fail(e)
    except Exception as e:  # pylint: disable=broad-except  (a full disk, a read-only output: one line)
      if _caused_by_interrupt(e):  # a library that wrapped the KeyboardInterrupt (one raised inside an import)
        interrupted(interrupted_line)
      fault = errors.disk_fault(e, _workdir_flag())
      if fault is None:
        raise
      _fail(fault)

  app.run(command, flags_parser=_guarded(flags_parser or _parse_flags))


def define_dataclass_flags(cls) -> None:
  """One flag per field of the dataclass `cls` (its name, default and metadata['help']): a library's options
  and the command's flags cannot drift apart. A tuple field is a repeatable flag."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  define = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
  for field in dataclasses.fields(cls):
    if field.type in define:
      define[field.type](field.name, field.default, field.metadata.get("help", ""))
    else:  # tuple[str, ...]
      flags.DEFINE_multi_string(field.name, list(field.default), field.metadata.get("help", ""))


def dataclass_from_flags(cls):
  """An instance of the dataclass `cls` with every field read from the flag of its name."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  values = {field.name: flags.FLAGS[field.name].value for field in dataclasses.fields(cls)}
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# --- Commands that read a config file (main, classical, show_data) ----------------------------------------------


def define_config_flag(example: str = "configs/default.py") -> None:
  """--config: a config file (configs/*.py) whose keys `--config.key=value` overrides."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file(
    "config",
    None,
    f"A config file, e.g. {example}. Any key of it can be overridden: --config.key=value "
    "(e.g. --config.num_train_steps=100, --config.model.name=resnet18).",
    lock_config=False,
  )


def load_config_file(path: str):
  """The ConfigDict that `get_config()` of the config file at `path` returns; one-line ConfigErrors otherwise."""
  path = path.split(":", 1)[0]  # config_flags' "file.py:argument" form
  if not os.path.isfile(path):
    raise ConfigError(f"Config file {path!r} does not exist; pass --config=configs/default.py or another file.")
  if not path.endswith(".py"):
    hint = (
      " A workdir's config.json records a run's resolved config; to resume that run, re-run its command (the same "
      "--config file and --workdir)."
      if path.endswith(".json")
      else ""
    )
    raise ConfigError(
      f"Config file {path!r} is not a Python file: --config takes a .py file whose get_config() returns the "
      f"ConfigDict, e.g. configs/default.py.{hint}"
    )
  spec = importlib.util.spec_from_file_location("_jaxcls_user_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
      raise ConfigError(
        f"Config file {path!r} defines no get_config(); a config file returns its ConfigDict from "
        "get_config() (see configs/default.py)."
      )
    return module.get_config()
  except JaxclsError:
    raise
  except SyntaxError as e:
    raise ConfigError(f"Config file {path!r} is not valid Python: {e.msg} at line {e.lineno}.") from None
  except Exception as e:  # pylint: disable=broad-except  (the user's own code failed while building the config)
    frames = [
      f
      for f in traceback.extract_tb(e.__traceback__)
      if os.path.isfile(f.filename) and os.path.samefile(f.filename, path)
    ]
    where = f" at line {frames[-1].lineno}" if frames else ""
    raise ConfigError(f"Config file {path!r} failed{where}: {type(e).__name__}: {e}.") from None


def _config_path(argv: list[str]) -> str | None:
  path = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def parse_config_flags(argv: list[str]) -> list[str]:
  """The flags_parser of config commands: the config file is loaded first, so that every --config.key override
  is checked against its keys (and --config.model.<arg> against the model's arguments) with one-line errors."""
  from jaxcls.config import check as config_check  # pylint: disable=g-import-not-at-top

  global _model_args, _file_model, _model_keys_given
  try:
    path = _config_path(argv)
    if path is not None:
      file_config = load_config_file(path)
      _file_model = dict(file_config.get("model") or {})
      _model_keys_given = {a.split(".", 2)[2].partition("=")[0] for a in argv if a.startswith("--config.model.")}
      argv, _model_args = config_check.split_argv(argv, file_config)
      sys.argv[:] = argv  # config_flags reads the override flags from sys.argv itself
    return flags.FLAGS(argv)
  except JaxclsError as e:
    _fail(e)
  except flags.Error as e:
    _fail(_flag_error(e))
  except (KeyError, AttributeError, ValueError, TypeError) as e:
    _fail(f"Bad --config override: {str(e).strip(chr(39) + chr(34))}")


def config(required: str = "--config=configs/default.py"):
  """The parsed --config, with the model arguments given on the command line applied; ConfigError when absent."""
  value = flags.FLAGS["config"].value
  if value is None:
    raise ConfigError(f"--config is required, e.g. {required}.")
  for key, arg in _model_args.items():
    value.model[key] = arg
  extensions.import_extensions(value)  # config.imports: names they register are known to what the command builds
  if _file_model and value.model.get("name") != _file_model.get("name"):
    from jaxcls import models  # pylint: disable=g-import-not-at-top  (imports flax: only for a switched model)

    models.switch_model(value.model, _file_model, _model_keys_given)
  return value
