"""predict's forward-pass cache: the compiled forward pass and the weights of a checkpoint, kept on local disk.

The first `python -m jaxcls.predict` on a checkpoint restores the model (flax, orbax), traces and compiles its
forward pass; it then keeps, in the compilation cache folder's `predict/` subfolder, an entry holding the weights
(weights.npz, the flat list the compiled function takes) and each compiled batch shape (`forward-<rows>.bin`,
jax's serialized executable). A later predict on the same checkpoint loads both and runs the executable: no flax,
no orbax, no tracing and no compiling, which is most of its start-up (benchmarks/predict_vs_export.py).

An entry is found by a key that changes with anything that could change what it computes: the workdir and step,
the step's files (`step_folder.identity`: a checkpoint saved again, or a file changed in place), config.json, the
code (jaxcls's source files and those of `config.imports`, by size and modification time; the versions of jax,
jaxlib and flax) and the machine (platform and its version, the local devices, XLA flags, the CPU's features). A
batch shape the entry lacks restores the model then and there, and its executable joins the entry at the end.

A cache is never a reason to fail: an entry that cannot be read (damaged, half written, from another jax) is
removed and the model restored as without a cache; one that cannot be written is skipped. Entries are written
into a temporary folder and renamed, so concurrent commands never see half an entry, and the least recently used
ones are removed once the folder passes MAX_BYTES. `config.compilation_cache_dir=''` turns this cache off with
the compilation cache. Like jax's own compilation cache, an entry is executable code: keep the folder private.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from jaxcls.core import compile_cache, extensions
from jaxcls.inference import predictor as predictor_lib
from jaxcls.store import step_folder
from jaxcls.store import workdir as workdir_lib

FORMAT = "jaxcls-predict-cache/1"
SUBFOLDER = "predict"
ENTRY_FILE, WEIGHTS_FILE = "entry.json", "weights.npz"
MAX_BYTES = 1 << 30
STALE_TEMPORARY_SECONDS = 3600  # a temporary folder this old was left by a killed command
_JAXCLS_SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def folder_for(config, workdir: str) -> str:
  """The cache's folder for a workdir's config ('' = off): `predict/` in its compilation cache folder."""
  directory = compile_cache.resolve(compile_cache.setting_for(config, workdir))
  return os.path.join(directory, SUBFOLDER) if directory else ""


def entry_key(described) -> tuple[str, dict]:
  """(hex key, the parts it hashes) of `described` (a `restore.Described`) on this machine's local devices."""
  step_dir = workdir_lib.checkpoints_path(described.workdir) / str(described.step)
  devices = jax.local_devices()
  config = json.dumps(described.config.to_dict(), sort_keys=True, default=repr)  # config.json as read, not again
  parts = {
    "format": FORMAT,
    "workdir": described.workdir,  # absolute, or a URL (`restore.describe`)
    "step": described.step,
    "step_files": step_folder.identity(step_dir),
    "config": hashlib.sha256(config.encode()).hexdigest(),  # JSON: ASCII
    "use_ema": True,
    "code": _code_fingerprint(described.config),
    "versions": {name: _version(name) for name in ("jax", "jaxlib", "flax")},
    "platform": [devices[0].platform, devices[0].client.platform_version],
    "devices": [[d.id, d.device_kind] for d in devices],
    "process_count": jax.process_count(),
    "flags": [os.environ.get("XLA_FLAGS", ""), os.environ.get("LIBTPU_INIT_ARGS", "")],
    "jax_config": [bool(jax.config.jax_enable_x64), str(jax.config.jax_default_matmul_precision)],
    "cpu": _cpu_features() if devices[0].platform == "cpu" else "",
  }
  text = json.dumps(parts, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest(), parts


def _version(name: str) -> str:
  import importlib.metadata  # pylint: disable=g-import-not-at-top

  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return ""


def _code_fingerprint(config) -> str:
  """A digest of the size and modification time of every source file of jaxcls and of `config.imports`."""
  digest = hashlib.sha256()
  roots = [_JAXCLS_SOURCE]
  for entry in extensions.import_names(config):
    if entry.endswith(".py") or os.sep in entry:
      roots.append(os.path.abspath(entry))
    else:
      module = sys.modules.get(entry.split(".")[0])
      roots.extend(getattr(module, "__path__", None) or [getattr(module, "__file__", None) or entry])
  for root in roots:
    for path in _source_files(root):
      try:
        stat = os.stat(path)
      except OSError:
        continue
      digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
  return digest.hexdigest()


def _source_files(root: str) -> list[str]:
  if not os.path.isdir(root):
    return [root]
  found = []
  for folder, subfolders, files in os.walk(root):
    subfolders[:] = sorted(name for name in subfolders if name != "__pycache__")
    found += [os.path.join(folder, name) for name in sorted(files) if name.endswith(".py")]
  return found


def _cpu_features() -> str:
  """The CPU's model and feature flags (Linux): an executable compiled for one CPU may not run on another."""
  try:
    with open("/proc/cpuinfo") as f:
      lines = [line for line in f if line.startswith(("model name", "flags"))]
  except OSError:
    import platform  # pylint: disable=g-import-not-at-top

    return platform.processor() + platform.machine()
  return hashlib.sha256("".join(sorted(set(lines))).encode()).hexdigest()


class CachedPredictor:
  """`predictor.Predictor`'s `batch_size`, `dispatch` and `fetch`, from a cache entry.

  The weights are read and each batch shape's executable loaded on first use; the first shape the entry lacks (or
  cannot load) builds the real Predictor (`build`: restores the model, so flax and orbax) and every batch from
  then on goes to it (`fallback`), so its newly compiled shapes can be added to the entry afterwards.
  """

  fetch = staticmethod(predictor_lib.Predictor.fetch)

  def __init__(self, entry: str, batch_size: int, build: Callable[[], predictor_lib.Predictor]):
    self._entry, self._build = entry, build
    self._devices = len(jax.local_devices())
    self.batch_size = batch_size
    self._executables = {}
    self._weights = None
    self.fallback = None

  def dispatch(self, images: np.ndarray, rows: int | None = None):
    """See `Predictor.dispatch`."""
    if self.fallback is not None:
      return self.fallback.dispatch(images, rows)
    images, padded = predictor_lib.pad_batch(images, self.batch_size, self._devices, rows)
    first = padded not in self._executables
    executable = self._executable(padded)
    if executable is not None:
      result = executable(self._weights, jax.device_put(images, executable.input_shardings[0][1]))
      if not first:
        return result
      try:  # the first batch of each loaded executable is waited for: one that cannot run costs only a restore
        return result.block_until_ready()
      except Exception as e:  # pylint: disable=broad-except
        self._discard(e)
    self._executables, self._weights = {}, None  # freed before the restored model's copy is placed
    self.fallback = self._build()
    return self.fallback.dispatch(images, padded)

  def _executable(self, rows: int):
    """The loaded executable for `rows` images, or None (not in the entry, or unreadable: then removed)."""
    if rows in self._executables:
      return self._executables[rows]
    path = os.path.join(self._entry, _executable_name(rows))
    if not os.path.exists(path):
      return None
    try:
      executable = _load_executable(path)
      if self._weights is None:
        self._weights = _load_weights(os.path.join(self._entry, WEIGHTS_FILE), executable)
    except Exception as e:  # pylint: disable=broad-except  (a cache never fails the command: restore instead)
      self._discard(e)
      return None
    self._executables[rows] = executable
    return executable

  def _discard(self, error: Exception) -> None:
    """Removes the unusable entry (the command goes on with a restored model, which writes it anew)."""
    kind = type(error).__name__
    logging.info("predict's cache entry %s is unusable (%s: %s); removing it.", self._entry, kind, error)
    shutil.rmtree(self._entry, ignore_errors=True)


def _executable_name(rows: int) -> str:
  return f"forward-{rows}.bin"


def _load_executable(path: str):
  from jax.experimental import serialize_executable  # pylint: disable=g-import-not-at-top

  with open(path, "rb") as f:
    payload, in_tree, out_tree = pickle.load(f)
  return serialize_executable.deserialize_and_load(payload, in_tree, out_tree, execution_devices=jax.local_devices())


def _load_weights(path: str, executable) -> list:
  """The entry's weights on the devices, placed as `executable` takes them; a ValueError when they do not fit."""
  expected = jax.tree_util.tree_leaves(executable.args_info[0][0])
  with np.load(path) as npz:
    leaves = [npz[f"w{i:05d}"] for i in range(len(npz.files))]
  # numpy stores dtypes it does not know (ml_dtypes' bfloat16) as raw bytes: read them as the executable's.
  leaves = [
    leaf.view(e.dtype) if leaf.dtype.kind == "V" and leaf.dtype.itemsize == np.dtype(e.dtype).itemsize else leaf
    for leaf, e in zip(leaves, expected)
  ]
  if [(leaf.shape, str(leaf.dtype)) for leaf in leaves] != [(e.shape, str(e.dtype)) for e in expected]:
    raise ValueError("the weights do not fit the compiled forward pass")
  return jax.device_put(leaves, executable.input_shardings[0][0])


@dataclasses.dataclass(frozen=True)
class Entry:
  """Where one checkpoint's entry lives (it may not exist yet) and the key parts it is written with."""

  path: str
  parts: dict


def predictor_for(described, batch_size: int | None, build: Callable[[bool], predictor_lib.Predictor]):
  """(the predictor for `described`, its `Entry`, or None when the cache is off).

  The predictor is a `CachedPredictor` when the cache holds an entry for `described`, else `build(cached)`: the
  real Predictor, whose executables must be compiled afresh (`fresh_compiles`) when `cached` (they will be saved).
  """
  root = folder_for(described.config, described.workdir)
  if not root or jax.process_count() > 1:
    return build(False), None
  try:
    key, parts = entry_key(described)
  except OSError as e:  # a step file vanished between the checks: no cache this time
    logging.info("predict's cache is skipped: %s", e)
    return build(False), None
  entry = Entry(os.path.join(root, key), parts)
  if not os.path.exists(os.path.join(entry.path, ENTRY_FILE)):
    return build(True), entry
  _touch(entry.path)
  size = predictor_lib.padded_batch_size(described.config, batch_size, len(jax.local_devices()))
  return CachedPredictor(entry.path, size, lambda: build(True)), entry


def save(entry: Entry | None, predictor) -> None:
  """Adds what `predictor` compiled (and, for a new entry, its weights) to the entry; a cache that cannot be
  written (a read-only home, a full disk) is skipped without a word (absl's DEBUG log says why)."""
  real = predictor.fallback if isinstance(predictor, CachedPredictor) else predictor
  if entry is None or real is None or not real.compiled:
    return
  try:
    _write_entry(entry, real)
    prune(os.path.dirname(entry.path), keep=entry.path)
  except Exception as e:  # pylint: disable=broad-except  (a cache never fails the command)
    logging.debug("predict's cache entry %s was not written (%s: %s).", entry.path, type(e).__name__, e)


def _write_entry(entry: Entry, predictor: predictor_lib.Predictor) -> None:
  from jax.experimental import serialize_executable  # pylint: disable=g-import-not-at-top

  path = entry.path
  root = os.path.dirname(path)
  os.makedirs(root, exist_ok=True)
  if not os.path.exists(os.path.join(path, ENTRY_FILE)):
    staging = tempfile.mkdtemp(prefix=".tmp-", dir=root)
    try:
      np.savez(os.path.join(staging, WEIGHTS_FILE), **{f"w{i:05d}": w for i, w in enumerate(predictor.host_weights)})
      parts = entry.parts
      with open(os.path.join(staging, ENTRY_FILE), "w") as f:
        json.dump({**parts, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}, f, indent=1)
      if os.path.isdir(path) and not os.path.exists(os.path.join(path, ENTRY_FILE)):
        shutil.rmtree(path, ignore_errors=True)  # what a removal cut short left (never a whole entry)
      os.rename(staging, path)  # fails when a concurrent command's entry got there first: that one stays
    except OSError:
      shutil.rmtree(staging, ignore_errors=True)
      if not os.path.exists(os.path.join(path, ENTRY_FILE)):  # not a concurrent command's entry either
        raise
  for rows, compiled in predictor.compiled.items():
    target = os.path.join(path, _executable_name(rows))
    if os.path.exists(target):
      continue
    data = pickle.dumps(serialize_executable.serialize(compiled))
    handle, staging = tempfile.mkstemp(prefix=".tmp-", dir=path)
    try:
      with os.fdopen(handle, "wb") as f:
        f.write(data)
      os.replace(staging, target)
    finally:
      if os.path.exists(staging):  # a full disk: no half-written file stays in the entry
        os.unlink(staging)


def _touch(entry: str) -> None:
  try:
    os.utime(entry)
  except OSError:
    pass


def prune(root: str, *, keep: str = "", max_bytes: int = MAX_BYTES) -> list[str]:
  """Removes the least recently used entries until the folder holds at most `max_bytes` (never `keep`), and
  temporary folders left by killed commands; returns the removed paths."""
  entries, removed, now = [], [], time.time()
  for name in os.listdir(root):
    path = os.path.join(root, name)
    try:
      if name.startswith(".tmp-"):
        if now - os.path.getmtime(path) > STALE_TEMPORARY_SECONDS:
          shutil.rmtree(path, ignore_errors=True)
          removed.append(path)
        continue
      size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
      entries.append((os.path.getmtime(path), path, size))
    except OSError:
      continue
  total = sum(size for _, _, size in entries)
  for _, path, size in sorted(entries):
    if total <= max_bytes:
      break
    if path != keep:
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
      total -= size
  return removed
