"""The one path layer: every workdir and data path, local or in an object store (`gs://`), goes through here.

`etils.epath` (which orbax already uses) does the work: `gs://` through gcsfs (the `gcs` extra) or TensorFlow's
file system, a local path through `pathlib`. This module adds what users need on top of it:

- a URL is never mistaken for a local folder name (`gs:/bucket` or `s3://b` without its backend is an error that
  names the extra to install, instead of a folder `./gs:/bucket` that vanishes with the VM);
- writes that replace a whole file atomically on a local disk (temporary file + rename) and in one object
  upload on an object store, which has no rename and no append;
- one spelling of "is this remote" for the few places that must behave differently (append vs rewrite).
"""

from __future__ import annotations

import os
import re

from etils import epath

from jaxcls.core.errors import ConfigError

PathLike = str | os.PathLike | epath.Path

# scheme -> (module that provides it, pip extra / package that installs it)
_BACKENDS = {
  "gs": ("gcsfs", "pip install 'jaxcls[gcs]' (gcsfs)"),
  "s3": ("s3fs", "pip install s3fs"),
}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")


def scheme(value: PathLike) -> str:
  """'gs', 's3', ... for a URL; '' for a local path."""
  match = _URL.match(os.fspath(value) if not isinstance(value, epath.Path) else str(value))
  if not match or len(match.group(1)) == 1:  # 'C:/...' is a Windows drive, not a URL
    return ""
  return match.group(1).lower()


def is_remote(value: PathLike) -> bool:
  """Whether the path is on an object store (gs://...), where writes are uploads and there is no rename."""
  return bool(scheme(value))


def _check_url(text: str, what: str) -> None:
  name = scheme(text)
  if not name:
    return
  if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]", text):
    raise ConfigError(f"The {what} {text!r} is not a valid URL; write it as {name}://BUCKET/PATH.")
  if name not in _BACKENDS:
    raise ConfigError(
      f"The {what} {text!r} uses the unsupported scheme {name}://; use a local path or "
      f"one of {', '.join(s + '://' for s in _BACKENDS)}."
    )
  module, install = _BACKENDS[name]
  if name == "gs" and _tensorflow_routes_gcs():
    return
  try:
    __import__(module)
  except ImportError:
    raise ConfigError(f"The {what} {text!r} needs the {module} package, which is not installed; {install}.") from None


def _tensorflow_routes_gcs() -> bool:
  """Whether epath sends gs:// to TensorFlow's file system (TF importable and not switched off)."""
  if os.environ.get("EPATH_USE_TF", "").lower() in ("0", "false", "no"):
    return False
  import importlib.util  # pylint: disable=g-import-not-at-top

  return importlib.util.find_spec("tensorflow") is not None


def path(value: PathLike, what: str = "path") -> epath.Path:
  """`value` as an `epath.Path`: a URL stays a URL (checked), a local path is made absolute and `~`-expanded.

  Raises ConfigError for an empty value, a malformed or unsupported URL, or a missing storage backend.
  """
  if isinstance(value, epath.Path):
    return value
  text = os.fspath(value)
  if not text:
    raise ConfigError(f"The {what} is empty; give a local folder or a gs://BUCKET/PATH URL.")
  _check_url(text, what)
  if is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def join(base: PathLike, *parts: str) -> epath.Path:
  """`base/parts...` for local and gs:// paths alike (never os.path.join on a workdir)."""
  return path(base).joinpath(*parts)


def write_text(target: PathLike, text: str) -> None:
  """Replaces the file with `text` in one step: a reader sees the old or the new content, never half of it."""
  write_bytes(target, text.encode("utf-8"))


def write_bytes(target: PathLike, data: bytes) -> None:
  """Writes a whole file so that a reader never sees half of it: a rename locally, one upload remotely."""
  target = path(target)
  if is_remote(target):  # an object upload is atomic already, and object stores have no rename
    target.write_bytes(data)
    return
  tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, target)
  finally:
    if os.path.lexists(tmp):  # the write failed (a full disk): the old file stays, and no half-written copy
      os.unlink(tmp)


def read_text(target: PathLike) -> str:
  """A small text file (JSON, a label list) from a local or gs:// path, as UTF-8."""
  return path(target).read_text(encoding="utf-8")


def makedirs(target: PathLike, what: str = "folder") -> epath.Path:
  """Creates a local folder and its parents; nothing on an object store, whose folders are only name prefixes
  (creating one there would be an empty marker object at best, a new bucket at worst)."""
  target = path(target, what)
  if not is_remote(target):
    try:
      target.mkdir(parents=True, exist_ok=True)
    except FileNotFoundError as e:  # no parent can be made there (/proc, a mount that went away): not a disk fault
      raise ConfigError(
        f"Cannot create the {what} {target} ({e.strerror}); give a path in a writable folder (new or existing)."
      ) from None
  return target
