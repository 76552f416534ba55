"""Errors meant for users: each message is one sentence naming the bad value and what would be valid.

`jaxcls.cli.run` turns a `JaxclsError` into one line `jaxcls: error: <message>` and exit code 2; anything else is
a bug and keeps its traceback.
"""


class JaxclsError(Exception):
  """Base class of errors caused by the user's config, data or workdir."""


class ConfigError(JaxclsError):
  """A config key or value is unknown or invalid."""


class DataError(JaxclsError):
  """A dataset is missing, empty or malformed."""


class CheckpointError(JaxclsError):
  """A checkpoint cannot be restored into the configured model."""


class NonFiniteLossError(JaxclsError):
  """Training produced a NaN or infinite loss or gradient."""


class WorkdirBusyError(JaxclsError):
  """Another run holds the workdir's lock."""


class WorkdirError(JaxclsError):
  """The workdir (or another output) cannot be written: a full disk, read-only, missing, or a file."""


# errno name -> what it means for a user writing a run's files (see `disk_fault`).
DISK_FAULTS = {
  "ENOSPC": "the disk is full",
  "EDQUOT": "the disk quota is used up",
  "EFBIG": "the file size limit is reached (ulimit -f) or the disk is full",
  "EROFS": "the file system is read-only",
  "EACCES": "permission is denied",
  "EPERM": "the operation is not permitted",
  "ENOTDIR": "a part of the path is a file, not a folder",
  "EEXIST": "the path exists and is a file, not a folder",
}


def _fault_errno(error: BaseException) -> tuple[int, str] | None:
  """(errno, file name) of a disk fault: an OSError's errno, or one that orbax/tensorstore/TensorFlow put in text."""
  import errno as errno_lib  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top

  codes = {getattr(errno_lib, name): name for name in DISK_FAULTS if hasattr(errno_lib, name)}
  if isinstance(error, OSError) and error.errno in codes:
    return error.errno, error.filename or ""
  text = str(error)
  match = re.search(r"os_error_code='?(\d+)|\[Errno (\d+)\]", text)  # tensorstore, a wrapped OSError
  if match and int(match.group(1) or match.group(2)) in codes:
    code = int(match.group(1) or match.group(2))
  else:  # TensorFlow's file errors carry only the strerror text
    code = next((c for c in codes if c != errno_lib.EEXIST and os.strerror(c) in text), None)
    if code is None:
      return None
  quoted = re.search(r'"(/[^"]+)"', text)
  return code, quoted.group(1) if quoted else ""


def disk_fault(error: BaseException, workdir: str | None = None) -> "WorkdirError | None":
  """A one-line WorkdirError for a disk fault (errno in DISK_FAULTS) found in `error` or its causes, else None.

  Anything else returns None and stays a bug to report. The message names the file, the errno, the fix, and
  the newest checkpoint in `workdir`, which a failed write never touches (orbax writes a step into a temporary
  folder and renames it only when complete; jaxcls's own files are replaced atomically).
  """
  import errno as errno_lib  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  seen, current, found = set(), error, None
  while current is not None and id(current) not in seen and found is None:  # orbax wraps the OSError
    seen.add(id(current))
    found = _fault_errno(current)
    current = current.__cause__ or current.__context__
  if found is None:
    return None
  code, filename = found
  name = errno_lib.errorcode[code]
  # Outside: neither in the workdir nor a folder the workdir was to be made in (makedirs names the first it fails).
  outside = bool(filename and workdir) and not (
    _inside(str(filename), str(workdir)) or _inside(str(workdir), str(filename))
  )
  if name in ("ENOSPC", "EDQUOT", "EFBIG"):
    fix = "free some space (or raise the limit) and run the same command again to resume"
  elif outside or (filename and not workdir):  # an --output or --output_dir of its own, not the workdir
    fix = "give that output a path in a writable folder (new or existing)"
  else:
    fix = "give a --workdir that is a writable folder (new or existing)"
  steps = []
  about_workdir = bool(workdir) and not outside  # a failed --output says nothing about the run's checkpoints
  if about_workdir and "://" not in str(workdir):
    try:
      steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
    except OSError:
      pass
  kept = (
    f": the last checkpoint (step {steps[-1]}) is intact"
    if steps
    else ": no checkpoint had been written"
    if about_workdir
    else ""
  )
  return WorkdirError(
    f"Cannot write {filename or workdir or 'a file'}: {DISK_FAULTS[name]} ({name}: "
    f"{os.strerror(code)}); {fix}. Files written before are left as they were{kept}."
  )


def _inside(filename: str, folder: str) -> bool:
  """Whether `filename` is `folder` or lies below it (URLs compared as written; local paths with their symlinks
  resolved, as a library may report the real path of a file in a symlinked workdir)."""
  import os  # pylint: disable=g-import-not-at-top

  if "://" not in filename and "://" not in folder:
    filename, folder = os.path.realpath(filename), os.path.realpath(folder)
  return filename == folder or filename.startswith(folder.rstrip("/") + "/")


def drop_closed_loop_noise() -> None:
  """Silences the 'Event loop is closed' callbacks that follow a failed checkpoint write.

  When a save fails (a full disk), orbax closes its event loop while tensorstore still completes the other
  writes; each completion raises RuntimeError('Event loop is closed') into `sys.unraisablehook`, which would
  print dozens of tracebacks after the one-line error. Those are dropped; any other unraisable error is not.
  """
  import sys  # pylint: disable=g-import-not-at-top

  default = sys.unraisablehook

  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
      return
    default(unraisable)

  sys.unraisablehook = hook
