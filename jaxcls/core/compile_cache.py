"""JAX's persistent compilation cache, on by default: a rerun or a resumed run loads its compiled steps from disk.

`config.compilation_cache_dir`: 'auto' (the default) is `$JAXCLS_CACHE_DIR`, else `$XDG_CACHE_HOME/jaxcls/xla`,
else `~/.cache/jaxcls/xla`; '' turns the cache off; any other value is the folder. Every program is cached however
quick to compile or small (JAX's defaults skip those under 1 s, and on a CPU the many small ones add up), and the
folder is kept under MAX_BYTES by JAX's least-recently-used eviction, so it never grows without bound.
"""

import contextlib
import os

import jax
from absl import logging

MAX_BYTES = 2 << 30


def resolve(setting: str) -> str:
  """The cache folder `setting` names ('' = off), as an absolute local path."""
  if not setting:
    return ""
  if setting == "auto":
    setting = os.environ.get("JAXCLS_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "jaxcls", "xla"
    )
  return os.path.abspath(os.path.expanduser(setting))


def enable(setting: str, *, announce: bool = True) -> str:
  """Turns the cache on in the folder `setting` names (see `resolve`); returns that folder, '' when off.

  A cache opened earlier in this process at another folder is closed first. A folder that cannot be created
  (a read-only home) leaves the cache off with a warning: compiling again is slower, never wrong. `announce`:
  log the folder (predict, whose stderr holds only its own lines, does not).
  """
  directory = resolve(setting)
  if not directory:
    return ""
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    logging.warning(
      "The compilation cache folder %s cannot be created (%s); compiling without it. Set "
      "config.compilation_cache_dir to a writable folder, or '' to silence this.",
      directory,
      e,
    )
    return ""
  if jax.config.jax_compilation_cache_dir != directory:
    from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top

    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size limit per entry
  jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  if announce:
    logging.info("Persistent compilation cache: %s", directory)
  return directory


def enable_for_workdir(config, workdir: str | None = None, *, announce: bool = True) -> str:
  """Turns the cache on as `config.compilation_cache_dir` says; returns the folder ('' when off).

  `workdir` is given when the config is a trained run's config.json rather than the user's own (evaluate,
  predict): that file may come from elsewhere, so a cache folder it names outside the default location is not
  trusted and the default is used. A config without the key (a workdir older than it) uses the default, 'auto'.
  """
  return enable(setting_for(config, workdir), announce=announce)


def setting_for(config, workdir: str | None = None) -> str:
  """`config.compilation_cache_dir` ('auto' when absent), or 'auto' (with a warning) when a workdir's config.json
  names a folder outside the default location (see `enable_for_workdir`)."""
  setting = config.get("compilation_cache_dir", "auto") if config is not None else "auto"
  if workdir is not None and setting not in ("", "auto") and resolve(setting) != resolve("auto"):
    logging.warning(
      "%s/config.json sets compilation_cache_dir=%r; compiled programs go to the default cache folder instead.",
      workdir,
      setting,
    )
    setting = "auto"
  return setting


@contextlib.contextmanager
def paused():
  """A context in which nothing is read from or written to the persistent compilation cache: what compiles inside
  is compiled afresh. predict's forward-pass cache needs that: on CPU, an executable jax loaded from this cache
  serializes without its machine code (`jax.experimental.serialize_executable` of it fails to run)."""
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top

  if not jax.config.jax_enable_compilation_cache:
    yield
    return
  compilation_cache.reset_cache()
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", True)
    compilation_cache.reset_cache()  # opened again, at the same folder, by the next compile


def entries(directory: str) -> int:
  """Compiled programs in the cache folder (JAX's LRU bookkeeping files left out)."""
  if not directory or not os.path.isdir(directory):
    return 0
  return sum(1 for name in os.listdir(directory) if name.endswith("-cache"))
