"""The fault table: every fault case run through the real commands, with what was expected and what was observed.

  python benchmarks/fault_table.py                 # every case (about 10-20 minutes on a 2-core CPU)
  python benchmarks/fault_table.py --list          # the cases, without running them
  python benchmarks/fault_table.py --only cfg-ema  # the cases whose id contains a substring
  python benchmarks/fault_table.py --jobs 2 --json /tmp/faults.json --timeout 240

Each case builds its inputs in a temporary folder (a tiny trained workdir is made once per table run and copied
per case; image folders get hostile files), runs `python -m jaxcls.main` / `evaluate` / `predict` / `export` as
real subprocesses, sends real signals (SIGKILL, SIGTERM, SIGINT with os.kill when a log line or a checkpoint
appears), and classifies what it saw:

  traceback     "Traceback (most recent call last)" in a command's output
  hang          a command did not exit within --timeout (its process group is killed)
  silent-wrong  exit 0 but the expected error, skip or warning did not happen, or a result differs from the
                uninterrupted reference run (final parameters, report, logged metrics)
  lost-data     a checkpoint file that was intact before the case is gone afterwards (moved aside is fine), or
                metrics.jsonl lost logged values
  unexpected    a non-zero exit without the expected one-line `jaxcls: error: ...`, a wrong exit code, or a
                process killed by a signal it should have handled
  ok            everything as expected

The commands run on 8 virtual CPU devices, without matplotlib (the core install: no figures; --plots keeps it).
A case may carry several labels; the totals count cases per label. `harness` marks a failure of this script
itself (its inputs could not be built), never of jaxcls. The totals are the last lines of the output. Exit status:
0 when the table ran (whatever it found), 2 on bad flags.
"""

import argparse
import codecs
import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
CATEGORIES = ("config", "workdir", "checkpoint", "signal", "data", "concurrency", "storage")
LABELS = ("traceback", "hang", "silent-wrong", "lost-data", "unexpected", "harness")
TRACEBACK = "Traceback (most recent call last)"
ERROR_LINE = r"^jaxcls: error: "
BUCKET = "fault-table"
# Logged values that legitimately differ between two runs of the same training (wall-clock measurements).
TIMING_KEYS = re.compile(r"steps_per_sec|uptime|data_wait|seconds|_s_per_|time")
# What a preempted run's one line says (any of these words).
PREEMPT_LINE = r"preempt|sigterm|sigint|signal|interrupt"
REFERENCE_STEPS = 20


# ------------------------------------------------------------------------------------------------ observations


@dataclasses.dataclass
class Run:
  """One finished command: what it printed (stdout and stderr together) and how it ended."""

  name: str
  rc: int | None
  output: str
  seconds: float = 0.0
  timed_out: bool = False
  sent: list = dataclasses.field(default_factory=list)  # (signal name, seconds after start, last logged step)


@dataclasses.dataclass(frozen=True)
class Expect:
  """What a command should do.

  kind: 'error'   a non-zero exit (one of `codes`, when given) with a one-line error (a line matching `line`)
                  that matches `pattern`;
        'success' exit 0 (or one of `codes`), and `pattern` somewhere in the output when given (a warning);
        'either'  exit 0 with `pattern` in the output (a warning), or the 'error' outcome with `pattern` in the
                  error line;
        'exit'    an exit code in `codes` (never killed by a signal), and `pattern` in the output.
  """

  kind: str
  pattern: str = ""
  codes: tuple = ()
  line: str = ERROR_LINE

  def describe(self) -> str:
    about = f" ~ /{self.pattern}/" if self.pattern else ""
    codes = f" (exit {'/'.join(map(str, self.codes))})" if self.codes else ""
    return {
      "error": f"error{codes}{about}",
      "success": f"exit 0{' + warning' + about if about else ''}",
      "either": f"warning or error{about}",
      "exit": f"exit{codes}{about}",
    }[self.kind]


def error(pattern: str = "", codes: tuple = (), line: str = ERROR_LINE) -> Expect:
  return Expect("error", pattern, codes, line)


def success(pattern: str = "") -> Expect:
  return Expect("success", pattern)


def either(pattern: str = "") -> Expect:
  return Expect("either", pattern)


def _last_exception(output: str) -> str:
  """The exception line that ends the last traceback in `output` (for the detail column)."""
  tail = output[output.rfind(TRACEBACK) :].splitlines()
  for line in tail[1:]:
    if line and not line.startswith((" ", "\t")) and not line.startswith(TRACEBACK):
      return line.strip()[:160]
  return "traceback"


def _short(text: str, limit: int = 160) -> str:
  text = " ".join(text.split())
  return text if len(text) <= limit else text[: limit - 3] + "..."


def classify_run(run: Run, expect: Expect | None) -> list[tuple[str, str]]:
  """The problems (label, detail) one command shows against what it should have done; [] means as expected."""
  if run.timed_out:
    return [("hang", f"{run.name}: still running after {run.seconds:.0f} s (process group killed)")]
  problems = []
  had_traceback = TRACEBACK in run.output
  if had_traceback:
    problems.append(("traceback", f"{run.name}: {_last_exception(run.output)}"))
  if expect is None:
    return problems
  lines = run.output.splitlines()
  errors = [line for line in lines if re.search(expect.line, line)]
  pattern = re.compile(expect.pattern, re.I) if expect.pattern else None
  rc = run.rc
  last = _short(errors[-1] if errors else (lines[-1] if lines else "(no output)"))

  def check_error():
    if rc == 0:
      problems.append(
        (
          "silent-wrong",
          f"{run.name}: exit 0, but an error{' ~ /' + expect.pattern + '/' if pattern else ''} was expected",
        )
      )
    elif rc is not None and rc < 0:
      problems.append(("unexpected", f"{run.name}: killed by {_signal_name(-rc)}"))
    elif expect.codes and rc not in expect.codes:
      problems.append(("unexpected", f"{run.name}: exit {rc}, expected {'/'.join(map(str, expect.codes))}: {last}"))
    elif not errors:
      if not had_traceback:
        problems.append(("unexpected", f"{run.name}: exit {rc} without a one-line error: {last}"))
    elif pattern and not any(pattern.search(line) for line in errors):
      problems.append(("unexpected", f"{run.name}: the error does not match /{expect.pattern}/: {last}"))

  if expect.kind == "error":
    check_error()
  elif expect.kind == "success":
    if rc not in (expect.codes or (0,)):
      if not had_traceback:
        problems.append(("unexpected", f"{run.name}: exit {rc}, expected success: {last}"))
    elif pattern and not pattern.search(run.output):
      problems.append(("silent-wrong", f"{run.name}: exit {rc}, but no warning ~ /{expect.pattern}/"))
  elif expect.kind == "either":
    if rc == 0:
      if pattern and not pattern.search(run.output):
        problems.append(("silent-wrong", f"{run.name}: exit 0 without a warning ~ /{expect.pattern}/"))
    else:
      check_error()
  elif expect.kind == "exit":
    if rc is not None and rc < 0:
      problems.append(("unexpected", f"{run.name}: killed by {_signal_name(-rc)}"))
    elif expect.codes and rc not in expect.codes:
      if not had_traceback:
        problems.append(("unexpected", f"{run.name}: exit {rc}, expected {'/'.join(map(str, expect.codes))}: {last}"))
    elif pattern and not pattern.search(run.output):
      problems.append(("silent-wrong", f"{run.name}: exit {rc}, but nothing in the output ~ /{expect.pattern}/"))
  else:
    raise ValueError(f"unknown expectation kind {expect.kind!r}")
  return problems


def labels_of(problems: list[tuple[str, str]]) -> list[str]:
  """The distinct labels of a case's problems, in LABELS order; ['ok'] when there are none."""
  found = {label for label, _ in problems}
  return [label for label in LABELS if label in found] or ["ok"]


def _signal_name(number: int) -> str:
  try:
    return signal.Signals(number).name
  except ValueError:
    return f"signal {number}"


# ---------------------------------------------------------------------------------------------- running commands


class OnOutput:
  """Fires when `regex` (multi-line) appears in the command's output."""

  def __init__(self, regex: str):
    self.regex, self._re, self._pos = regex, re.compile(regex, re.M), 0

  def __call__(self, watch) -> bool:
    found = self._re.search(watch.text, max(0, self._pos - 400))
    self._pos = len(watch.text)
    return found is not None


class OnPath:
  """Fires when an entry of `folder` matches `regex` (polled every few milliseconds)."""

  fast = True

  def __init__(self, folder: str, regex: str, or_output: str | None = None):
    self.folder, self._re = folder, re.compile(regex)
    self._fallback = OnOutput(or_output) if or_output else None
    self.fired_by = None

  def __call__(self, watch) -> bool:
    try:
      names = os.listdir(self.folder)
    except OSError:
      names = []
    if any(self._re.search(n) for n in names):
      self.fired_by = "path"
      return True
    if self._fallback is not None and self._fallback(watch):
      self.fired_by = "fallback"
      return True
    return False


class After:
  """Fires `seconds` after the previous signal was sent."""

  def __init__(self, seconds: float):
    self.seconds = seconds

  def __call__(self, watch) -> bool:
    return watch.last_sent is not None and watch.now - watch.last_sent >= self.seconds


@dataclasses.dataclass
class _Watch:
  text: str
  now: float
  last_sent: float | None


_STEP_LOG = re.compile(r"\] \[(\d+)\] train/")


def last_logged_step(text: str) -> int:
  steps = [int(m) for m in _STEP_LOG.findall(text)]
  return max(steps) if steps else 0


def execute(name: str, argv: list, *, cwd: str, env: dict, timeout: float, log_path: str, signals: tuple = ()) -> Run:
  """Runs `argv` in its own process group, sending each (trigger, signal) when its trigger fires."""
  start = time.monotonic()
  with open(log_path, "wb") as log:
    proc = _started(
      subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
      )
    )
  pending, sent, chunks, timed_out = list(signals), [], [], False
  decoder = codecs.getincrementaldecoder("utf-8")("replace")
  with open(log_path, "rb") as reader:
    text = ""
    while True:
      rc = proc.poll()
      data = reader.read()
      if data:
        chunks.append(data)
        text += decoder.decode(data)
      if rc is not None:
        break
      now = time.monotonic() - start
      if now > timeout:
        _kill_group(proc)
        timed_out = True
        break
      while pending:
        trigger, sig = pending[0]
        if not trigger(_Watch(text, now, sent[-1][1] if sent else None)):
          break
        try:
          os.kill(proc.pid, sig)
        except ProcessLookupError:
          pass
        sent.append((sig.name, now, last_logged_step(text)))
        pending.pop(0)
      fast = any(getattr(t, "fast", False) for t, _ in pending)
      time.sleep(0.003 if fast else 0.05)
    proc.wait()
    chunks.append(reader.read())
  _kill_group(proc)  # anything the command left behind in its group
  output = b"".join(chunks).decode("utf-8", "replace")
  return Run(
    name=name, rc=proc.returncode, output=output, seconds=time.monotonic() - start, timed_out=timed_out, sent=sent
  )


_LIVE: set = set()  # every process group this script started and has not killed yet
_LIVE_LOCK = threading.Lock()


def _started(proc):
  with _LIVE_LOCK:
    _LIVE.add(proc)
  return proc


def _kill_group(proc) -> None:
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  with _LIVE_LOCK:
    _LIVE.discard(proc)


def _kill_all_and_exit(signum, frame) -> None:
  """SIGTERM/SIGINT to the table: its commands' process groups go too, then it exits 128 + the signal."""
  del frame
  with _LIVE_LOCK:
    live = list(_LIVE)
  for proc in live:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass
  print(f"fault_table: stopped by {_signal_name(signum)}", file=sys.stderr)
  os._exit(128 + signum)  # pylint: disable=protected-access


# A folder put first on the children's PYTHONPATH (unless --plots) where `import matplotlib` fails: the core install
# without the `plots` extra, which jaxcls documents (no DIR/plots, one warning). Drawing the report's figures costs
# ~20 s a run on a busy 2-core CPU and is no part of any fault case.
_HIDE_MATPLOTLIB: list = []


def hide_matplotlib(root: str) -> None:
  folder = os.path.join(root, "no_matplotlib")
  os.makedirs(os.path.join(folder, "matplotlib"), exist_ok=True)
  with open(os.path.join(folder, "matplotlib", "__init__.py"), "w") as f:
    f.write('raise ImportError("matplotlib is hidden by benchmarks/fault_table.py (run it with --plots)")\n')
  _HIDE_MATPLOTLIB[:] = [folder]


def child_env(extra: dict | None = None) -> dict:
  env = dict(os.environ)
  env.update(
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    TF_CPP_MIN_LOG_LEVEL="2",
    PYTHONUNBUFFERED="1",
    JAX_PLATFORMS="cpu",
  )
  env["PYTHONPATH"] = os.pathsep.join(
    [*_HIDE_MATPLOTLIB, REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
  )
  env.update(extra or {})
  return env


# The whole train state of a checkpoint step, hashed: what "equals the reference" compares (bit for bit).
_HASH_SCRIPT = r"""
import hashlib, sys
import jax, numpy as np, orbax.checkpoint as ocp
path = sys.argv[1]
reader = ocp.StandardCheckpointer()
tree = reader.metadata(path).item_metadata
sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)
state = reader.restore(path, target)
digest = hashlib.sha256()
for key, leaf in jax.tree_util.tree_leaves_with_path(state):
  digest.update(jax.tree_util.keystr(key).encode()); digest.update(np.asarray(leaf).tobytes())
print("STATE-SHA256", digest.hexdigest())
"""


# ------------------------------------------------------------------------------------------------- shared inputs


def _png(path, width: int, height: int, seed: int, mode: str = "RGB") -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  channels = {"RGB": 3, "L": 1}[mode]
  Image.frombytes(mode, (width, height), random.Random(seed).randbytes(width * height * channels)).save(
    path, format="PNG"
  )


def bomb_png(path, side: int = 40_000) -> None:
  """A tiny PNG file that declares a side x side RGB image (a decompression bomb)."""

  def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

  header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
  with open(path, "wb") as f:
    f.write(
      b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _emulator_launcher() -> str:
  """tests/gcs_emulator.py's launcher: the emulator with the generation headers real GCS sends on downloads
  (without them tensorstore's conditional rewrite of an OCDBT manifest fails: "Malformed StorageGeneration")."""
  path = os.path.join(REPO, "tests", "gcs_emulator.py")
  with open(path) as f:
    found = re.search(r'^_LAUNCHER = """(.*?)"""', f.read(), re.S | re.M)
  if not found:
    raise HarnessError(f"no _LAUNCHER in {path}")
  return found.group(1)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class Table:
  """What every case shares: the reference workdir (trained once), an image folder, the GCS emulator."""

  def __init__(self, root: str, timeout: float):
    self.root, self.timeout = root, timeout
    self.cache = os.path.join(root, "xla_cache")
    self._lock = threading.Lock()
    self._reference = None
    self._reference_hash = None
    self._folder = None
    self._folder_workdir = None
    self._emulator = None
    self._emulator_port = None

  # The training command every case starts from: digits, a tiny CNN, 20 steps (checkpoints 5 .. 20, keep 3).
  def base_flags(self, config: str = "default.py") -> list[str]:
    return [
      f"--config={os.path.join(CONFIGS, config)}",
      f"--config.num_train_steps={REFERENCE_STEPS}",
      "--config.model.widths=(8, 16)",
      "--config.optimizer.warmup_steps=2",
      "--config.log_every_steps=1",
      "--config.checkpoint_every_steps=5",
      "--config.eval_every_steps=10",
      f"--config.compilation_cache_dir={self.cache}",
    ]

  def folder_flags(self, path: str) -> list[str]:
    return [
      f"--config={os.path.join(CONFIGS, 'folder.py')}",
      f"--config.dataset.path={path}",
      "--config.dataset.image_size=(8, 8)",
      "--config.model.name=simple_cnn",
      "--config.model.widths=(8, 16)",
      "--config.dataset.cache=memory",
      "--config.dataset.train_crop=resize",
      "--config.dataset.eval_crop=resize",
      "--config.batch_size=8",
      "--config.num_train_steps=2",
      "--config.optimizer.warmup_steps=0",
      "--config.log_every_steps=1",
      f"--config.compilation_cache_dir={self.cache}",
    ]

  def reference(self) -> str:
    """The uninterrupted reference run's workdir (trained on first use)."""
    with self._lock:
      if self._reference is None:
        workdir = os.path.join(self.root, "reference")
        if os.path.isfile(os.path.join(workdir, "report.json")):  # --root of an earlier table run
          self._reference = workdir
          return workdir
        shutil.rmtree(workdir, ignore_errors=True)
        run = execute(
          "reference",
          [sys.executable, "-m", "jaxcls.main", f"--workdir={workdir}", *self.base_flags()],
          cwd=self.root,
          env=child_env(),
          timeout=max(self.timeout, 600),
          log_path=os.path.join(self.root, "reference.log"),
        )
        if run.rc != 0 or not os.path.isfile(os.path.join(workdir, "report.json")):
          raise HarnessError(f"the reference run failed (exit {run.rc}): {_short(run.output[-400:])}")
        self._reference = workdir
      return self._reference

  def reference_hash(self) -> str:
    ref = self.reference()
    with self._lock:
      if self._reference_hash is None:
        self._reference_hash = state_hash(ref, self.root, self.timeout)
        if self._reference_hash is None:
          raise HarnessError("could not hash the reference run's last checkpoint")
      return self._reference_hash

  def image_folder(self) -> str:
    """Two classes ('cat', 'dog') of 12 random 8x8 RGB PNGs each."""
    with self._lock:
      if self._folder is None:
        folder = os.path.join(self.root, "images")
        shutil.rmtree(folder, ignore_errors=True)
        for k, name in enumerate(("cat", "dog")):
          os.makedirs(os.path.join(folder, name))
          for i in range(12):
            _png(os.path.join(folder, name, f"{i:02d}.png"), 8, 8, seed=100 * k + i)
        self._folder = folder
      return self._folder

  def emulator(self) -> tuple[int, dict]:
    """(port, env) of a gcp-storage-emulator serving bucket BUCKET, started on first use."""
    with self._lock:
      if self._emulator is None:
        if importlib.util.find_spec("gcp_storage_emulator") is None:
          raise HarnessError("gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")
        port = _free_port()
        self._emulator = _started(
          subprocess.Popen(
            [
              sys.executable,
              "-c",
              _emulator_launcher(),
              "start",
              "--host=localhost",
              f"--port={port}",
              f"--default-bucket={BUCKET}",
              "-M",
            ],
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
          )
        )
        deadline = time.monotonic() + 30
        while True:
          try:
            urllib.request.urlopen(f"http://localhost:{port}/storage/v1/b/{BUCKET}", timeout=2).read()
            break
          except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline or self._emulator.poll() is not None:
              raise HarnessError("the GCS emulator did not start") from None
            time.sleep(0.2)
        self._emulator_port = port
      port = self._emulator_port
    return port, {
      "STORAGE_EMULATOR_HOST": f"http://localhost:{port}",
      "FSSPEC_GCS_TOKEN": "anon",
      "TENSORSTORE_GCS_HTTP_URL": f"http://localhost:{port}",
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
      "NO_GCE_CHECK": "true",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "EPATH_USE_TF": "false",
    }

  def close(self) -> None:
    if self._emulator is not None:
      _kill_group(self._emulator)
      self._emulator.wait()


class HarnessError(Exception):
  """This script could not build a case's inputs (not a jaxcls fault)."""


def state_hash(workdir: str, cwd: str, timeout: float, env_extra: dict | None = None, step: int | None = None):
  """The sha256 of checkpoint `step`'s (default: the latest) whole train state, or None if it cannot be read."""
  if step is None:
    steps = checkpoint_steps(workdir, env_extra)
    if not steps:
      return None
    step = steps[-1]
  path = f"{workdir.rstrip('/')}/checkpoints/{step}/state"
  log = tempfile.NamedTemporaryFile(dir=cwd, prefix="hash-", suffix=".log", delete=False).name
  run = execute(
    "hash", [sys.executable, "-c", _HASH_SCRIPT, path], cwd=cwd, env=child_env(env_extra), timeout=timeout, log_path=log
  )
  found = re.search(r"STATE-SHA256 ([0-9a-f]{64})", run.output)
  return found.group(1) if found else None


def checkpoint_steps(workdir: str, env_extra: dict | None = None) -> list[int]:
  """The numbered checkpoint folders of a workdir (local or on the emulator)."""
  if workdir.startswith("gs://"):
    names = gcs_list(env_extra, workdir.rstrip("/") + "/checkpoints/")
    found = set()
    for name in names:
      part = name.split("/checkpoints/", 1)[1].split("/", 1)[0]
      if part.isdigit():
        found.add(int(part))
    return sorted(found)
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit() and os.path.isdir(os.path.join(folder, n)))


def _gcs_base(env_extra: dict) -> str:
  return env_extra["STORAGE_EMULATOR_HOST"]


def gcs_list(env_extra: dict, url: str) -> list[str]:
  """Object names under a gs:// prefix on the emulator (as gs://bucket/name)."""
  bucket, _, prefix = url[len("gs://") :].partition("/")
  names, token = [], None
  while True:
    query = {"prefix": prefix}
    if token:
      query["pageToken"] = token
    with urllib.request.urlopen(
      f"{_gcs_base(env_extra)}/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}", timeout=30
    ) as response:
      listing = json.load(response)
    names += [f"gs://{bucket}/{item['name']}" for item in listing.get("items", [])]
    token = listing.get("nextPageToken")
    if not token:
      return names


def gcs_read(env_extra: dict, url: str) -> bytes | None:
  bucket, _, name = url[len("gs://") :].partition("/")
  try:
    with urllib.request.urlopen(
      f"{_gcs_base(env_extra)}/download/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media",
      timeout=30,
    ) as response:
      return response.read()
  except urllib.error.HTTPError:
    return None


# ------------------------------------------------------------------------------------------- workdir snapshots


def _sha(path) -> str | None:
  digest = hashlib.sha256()
  try:
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  except OSError:
    return None
  return digest.hexdigest()


def _is_tmp(relpath: str) -> bool:
  return "tmp" in relpath.lower()


@dataclasses.dataclass
class Snapshot:
  """A workdir's checkpoint files (content hashes, by step) and its logged (step, key) values."""

  files: dict  # step -> {relative path: sha256}
  metrics: dict  # (step, key) -> value


def read_metrics(text: str) -> dict:
  values = {}
  for line in text.splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if isinstance(row, dict) and "step" in row:
      for key, value in row.items():
        if key != "step" and not TIMING_KEYS.search(key):
          values[(row["step"], key)] = value  # the last value logged for a step wins
  return values


def snapshot(workdir: str) -> Snapshot:
  files = {}
  folder = os.path.join(workdir, "checkpoints")
  for step in checkpoint_steps(workdir):
    base = os.path.join(folder, str(step))
    found = {}
    for parent, _, names in os.walk(base):
      for name in names:
        path = os.path.join(parent, name)
        rel = os.path.relpath(path, folder)
        if not _is_tmp(rel):
          found[rel] = _sha(path)
    files[step] = found
  metrics = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.isfile(path):
    with open(path, "rb") as f:
      metrics = read_metrics(f.read().decode("utf-8", "replace"))
  return Snapshot(files, metrics)


def _hashes_under(root: str) -> set:
  found = set()
  for parent, _, names in os.walk(root):
    for name in names:
      path = os.path.join(parent, name)
      if os.path.isfile(path) and not os.path.islink(path):
        found.add(_sha(path))
  return found


def lost_data(
  before: Snapshot, workdir: str, search_root: str, *, keep: int | None = None, skip_steps: tuple = ()
) -> list[tuple[str, str]]:
  """Checkpoint files and logged values of `before` that are gone now.

  A checkpoint file counts as kept when a file with the same bytes is anywhere under `search_root` (moved
  aside is fine). With `keep` (training went on), a step may be pruned once `keep` newer steps exist.
  `skip_steps` are steps the case damaged on purpose (their files may go, as long as they are moved aside:
  that is checked through `search_root` too).
  """
  problems = []
  present = _hashes_under(search_root)
  after_steps = checkpoint_steps(workdir)
  for step, files in sorted(before.files.items()):
    if step in skip_steps:
      continue
    missing = [rel for rel, sha in files.items() if sha not in present]
    if not missing:
      continue
    if keep is not None and sum(1 for s in after_steps if s > step) >= keep:
      continue  # pruned after `keep` newer checkpoints: the documented keep_checkpoints behaviour
    problems.append(
      ("lost-data", f"checkpoint step {step}: {len(missing)} of {len(files)} files gone (e.g. {missing[0]})")
    )
  now = snapshot(workdir).metrics if os.path.isdir(workdir) else {}
  gone = sorted(k for k in before.metrics if k not in now)
  if gone:
    problems.append(
      ("lost-data", f"metrics.jsonl lost {len(gone)} logged values (e.g. step {gone[0][0]} {gone[0][1]})")
    )
  return problems


# ---------------------------------------------------------------------------------------------------- the cases


@dataclasses.dataclass
class Case:
  """One fault to inject: what it is, how to provoke it, and what a correct run must do afterwards."""

  id: str
  category: str
  description: str
  expected: str
  run: Callable  # run(c: CaseRun): builds the inputs, runs the commands, records problems


CASES: list[Case] = []


def case(case_id: str, category: str, description: str, expected: str):
  assert category in CATEGORIES, category
  assert all(c.id != case_id for c in CASES), case_id

  def register(fn):
    CASES.append(Case(case_id, category, description, expected, fn))
    return fn

  return register


class CaseRun:
  """One case's folder, commands and findings."""

  def __init__(self, table: Table, spec: Case, directory: str):
    self.table, self.spec, self.dir = table, spec, directory
    self.problems: list[tuple[str, str]] = []
    self.runs: list[Run] = []
    self.notes: list[str] = []

  # -- inputs
  def path(self, *parts) -> str:
    return os.path.join(self.dir, *parts)

  def trained(self, name: str = "run") -> str:
    """A private copy of the reference workdir (20 steps; checkpoints 10, 15, 20)."""
    target = self.path(name)
    shutil.copytree(self.table.reference(), target, symlinks=True)
    return target

  def images(self, name: str = "images") -> str:
    target = self.path(name)
    shutil.copytree(self.table.image_folder(), target, symlinks=True)
    return target

  # -- commands
  def command(
    self,
    module: str,
    *args,
    expect: Expect | None = None,
    signals: tuple = (),
    name: str | None = None,
    env: dict | None = None,
    wrap: list | None = None,
    timeout: float | None = None,
  ) -> Run:
    name = name or f"{module.rsplit('.', 1)[-1]}#{len(self.runs) + 1}"
    argv = [sys.executable, "-m", module, *args]
    if wrap:
      argv = [*wrap, *argv]
    run = execute(
      name,
      argv,
      cwd=self.dir,
      env=child_env(env),
      timeout=timeout or self.table.timeout,
      log_path=self.path(f"{name.replace('#', '-')}.log"),
      signals=signals,
    )
    self.runs.append(run)
    self.problems += classify_run(run, expect)
    return run

  def main(self, workdir: str | None, *overrides, expect: Expect | None = None, base: bool = True, **kw) -> Run:
    args = ([f"--workdir={workdir}"] if workdir is not None else []) + (self.table.base_flags() if base else [])
    return self.command(
      "jaxcls.main", *args, *overrides, expect=expect, name=kw.pop("name", None) or f"main#{len(self.runs) + 1}", **kw
    )

  def folder_main(self, workdir: str, folder: str, *overrides, expect: Expect | None = None, **kw) -> Run:
    return self.command(
      "jaxcls.main",
      f"--workdir={workdir}",
      *self.table.folder_flags(folder),
      *overrides,
      expect=expect,
      name=kw.pop("name", None) or f"main#{len(self.runs) + 1}",
      **kw,
    )

  # -- findings
  def problem(self, label: str, detail: str) -> None:
    self.problems.append((label, detail))

  def note(self, text: str) -> None:
    self.notes.append(text)

  def expect_kept(self, before: Snapshot, workdir: str, **kw) -> None:
    self.problems += lost_data(before, workdir, self.dir, **kw)

  def expect_reference(self, workdir: str, env_extra: dict | None = None) -> None:
    """The workdir's final state, report and logged metrics equal the uninterrupted reference run's."""
    if self.runs and self.runs[-1].rc != 0:
      self.note(f"not compared with the reference: {self.runs[-1].name} exited {self.runs[-1].rc}")
      return
    ref = self.table.reference()
    if workdir.startswith("gs://"):
      metrics_text = (gcs_read(env_extra, workdir + "/metrics.jsonl") or b"").decode("utf-8", "replace")
      report_bytes = gcs_read(env_extra, workdir + "/report.json")
    else:
      metrics_text = _read_text(os.path.join(workdir, "metrics.jsonl"))
      report_bytes = _read_bytes(os.path.join(workdir, "report.json"))
    with open(os.path.join(ref, "metrics.jsonl"), "rb") as f:
      want = read_metrics(f.read().decode())
    got = read_metrics(metrics_text)
    missing = sorted(k for k in want if k not in got)
    if missing:
      self.problem(
        "lost-data",
        f"metrics.jsonl lacks {len(missing)} of the reference's {len(want)} values "
        f"(e.g. step {missing[0][0]} {missing[0][1]})",
      )
    differ = sorted(k for k in want if k in got and got[k] != want[k])
    if differ:
      k = differ[0]
      self.problem(
        "silent-wrong",
        f"{len(differ)} logged values differ from the reference (step {k[0]} {k[1]}: {got[k]!r} vs {want[k]!r})",
      )
    if report_bytes is None:
      self.problem("silent-wrong", "no report.json after the resumed run")
    else:
      with open(os.path.join(ref, "report.json")) as f:
        want_report = json.load(f)
      try:
        got_report = json.loads(report_bytes)
      except ValueError:
        got_report = {}
      for key in ("step", "num_examples", "loss", "accuracy"):
        if got_report.get(key) != want_report.get(key):
          self.problem(
            "silent-wrong", f"report.json {key} = {got_report.get(key)!r}, the reference's {want_report.get(key)!r}"
          )
          break
    steps = checkpoint_steps(workdir, env_extra)
    if not steps or steps[-1] != REFERENCE_STEPS:
      self.problem("silent-wrong", f"the last checkpoint is step {steps[-1] if steps else None}, not {REFERENCE_STEPS}")
      return
    got_hash = state_hash(workdir, self.dir, self.table.timeout, env_extra)
    if got_hash is None:
      self.problem("lost-data", f"checkpoint {steps[-1]} cannot be read back")
    elif got_hash != self.table.reference_hash():
      self.problem("silent-wrong", f"the train state at step {steps[-1]} differs from the reference's")

  def expect_file(self, path: str, what: str, label: str = "silent-wrong") -> None:
    if not os.path.exists(path):
      self.problem(label, f"{what} ({os.path.relpath(path, self.dir)}) does not exist")

  def expect_no_file(self, path: str, what: str, label: str = "silent-wrong") -> None:
    if os.path.lexists(path):
      self.problem(label, f"{what} ({os.path.relpath(path, self.dir)}) exists")


def _read_bytes(path: str) -> bytes | None:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError:
    return None


def _read_text(path: str) -> str:
  return (_read_bytes(path) or b"").decode("utf-8", "replace")


def _garbage(path: str, data: bytes = b"\x00\xffnot json at all{{{") -> None:
  with open(path, "wb") as f:
    f.write(data)


def _largest_file(folder: str) -> str:
  files = [os.path.join(p, n) for p, _, names in os.walk(folder) for n in names]
  return max(files, key=os.path.getsize)


def _truncate(path: str) -> None:
  with open(path, "r+b") as f:
    f.truncate(max(os.path.getsize(path) // 3, 1))


def _data_counts(output: str):
  found = re.search(r"Data: (\d+) train / (\d+) eval", output)
  return (int(found.group(1)), int(found.group(2))) if found else None


# --- config: each is a fresh workdir and one override that must be refused with a one-line error.


def _config_case(case_id: str, overrides: tuple, pattern: str, description: str, base: bool = True):
  @case(case_id, "config", description, error(pattern).describe())
  def run(c: CaseRun):
    workdir = c.path("run")
    c.main(workdir, *overrides, expect=error(pattern), base=base)
    steps = checkpoint_steps(workdir)
    if steps:
      c.problem("silent-wrong", f"a refused config still wrote checkpoints {steps}")


_config_case("cfg-unknown-key", ("--config.no_such_key=1",), "no_such_key", "an override of a key that does not exist")
_config_case(
  "cfg-unknown-nested-key", ("--config.optimizer.lerning_rate=0.1",), "lerning_rate", "a misspelt optimizer key"
)
_config_case("cfg-ema-1.5", ("--config.ema_decay=1.5",), "ema_decay", "ema_decay above 1 (was NaN, exit 0)")
_config_case("cfg-ema-1.0", ("--config.ema_decay=1.0",), "ema_decay", "ema_decay 1 freezes the average at init")
_config_case("cfg-ema-negative", ("--config.ema_decay=-0.1",), "ema_decay", "a negative ema_decay")
_config_case("cfg-ema-nan", ("--config.ema_decay=nan",), "ema_decay", "ema_decay NaN (passes naive range checks)")
_config_case("cfg-log-every-negative", ("--config.log_every_steps=-1",), "log_every_steps", "log_every_steps=-1")
_config_case("cfg-eval-every-negative", ("--config.eval_every_steps=-5",), "eval_every_steps", "eval_every_steps=-5")
_config_case(
  "cfg-ckpt-every-negative",
  ("--config.checkpoint_every_steps=-1",),
  "checkpoint_every_steps",
  "checkpoint_every_steps=-1",
)
_config_case(
  "cfg-keep-0",
  ("--config.keep_checkpoints=0",),
  "keep_checkpoints",
  "keep_checkpoints=0 (deleted every checkpoint, exit 0)",
)
_config_case(
  "cfg-keep-negative", ("--config.keep_checkpoints=-1",), "keep_checkpoints", "keep_checkpoints=-1 (a traceback)"
)
_config_case("cfg-widths-abc", ("--config.model.widths=abc",), "widths", "model.widths=abc (a traceback)")
_config_case("cfg-model-arg-type", ("--config.model.dropout=high",), "dropout", "a model argument of the wrong type")
_config_case(
  "cfg-model-arg-unknown", ("--config.model.no_such_arg=3",), "no_such_arg", "a model argument the model does not take"
)
_config_case("cfg-batch-0", ("--config.batch_size=0",), "batch_size", "batch_size=0")
_config_case(
  "cfg-batch-not-multiple",
  ("--config.batch_size=12",),
  "batch_size",
  "batch_size 12 is not a multiple of the 8 devices",
)
_config_case("cfg-batch-float", ("--config.batch_size=1.5",), "batch_size", "a float batch size")
_config_case("cfg-steps-not-int", ("--config.num_train_steps=abc",), "num_train_steps", "num_train_steps=abc")
_config_case(
  "cfg-no-steps",
  ("--config.num_train_steps=0", "--config.num_epochs=0"),
  "num_epochs|num_train_steps",
  "num_train_steps=0 and num_epochs=0",
)
_config_case("cfg-unknown-optimizer", ("--config.optimizer.name=nope",), "nope|optimizer", "an unknown optimizer")
_config_case("cfg-unknown-model", ("--config.model.name=nope",), "nope|model", "an unknown model")
_config_case("cfg-unknown-task", ("--config.task.type=nope",), "nope|task", "an unknown task type")
_config_case("cfg-unknown-dtype", ("--config.dtype=float7",), "float7|dtype", "an unknown dtype")
_config_case("cfg-unknown-eval-tta", ("--config.eval_tta=nope",), "nope|eval_tta", "an unknown eval_tta")
_config_case("cfg-unknown-augment", ("--config.augment=nope(1)",), "nope|augment", "an unknown augmentation")
_config_case("cfg-unknown-dataset", ("--config.dataset.name=nope",), "nope|dataset", "an unknown dataset source")
_config_case(
  "cfg-unknown-schedule", ("--config.optimizer.schedule=nope",), "nope|schedule", "an unknown learning-rate schedule"
)
_config_case("cfg-negative-lr", ("--config.optimizer.learning_rate=-0.1",), "learning_rate", "a negative learning rate")
_config_case("cfg-nan-lr", ("--config.optimizer.learning_rate=nan",), "learning_rate", "learning rate NaN")
_config_case(
  "cfg-label-smoothing-1.5", ("--config.task.label_smoothing=1.5",), "label_smoothing", "label_smoothing above 1"
)
_config_case("cfg-warmup-negative", ("--config.optimizer.warmup_steps=-1",), "warmup_steps", "warmup_steps=-1")
_config_case("cfg-image-size-zero", ("--config.dataset.image_size=(0, 8)",), "image_size", "an image size of 0")
_config_case("cfg-best-mode-foo", ("--config.best_mode=foo",), "best_mode", "best_mode=foo")
_config_case(
  "cfg-missing-config-file",
  ("--config=/nonexistent/config.py",),
  "nonexistent|exist",
  "--config names a file that does not exist",
  base=False,
)
_config_case(
  "cfg-arrays-missing-path",
  ("--config.dataset.name=arrays", "--config.dataset.path=/nonexistent/d.npz"),
  "nonexistent|d\\.npz",
  "an arrays source whose file does not exist",
)
_config_case(
  "cfg-config-not-a-file",
  ("--config=/dev/null",),
  "null|exist|config",
  "--config names a device, not a config file",
  base=False,
)


@case(
  "cfg-config-syntax-error",
  "config",
  "--config names a Python file with a syntax error",
  error("bad_config|syntax|config").describe(),
)
def _(c: CaseRun):
  path = c.path("bad_config.py")
  _garbage(path, b"def get_config(:\n  return 1\n")
  c.main(c.path("run"), f"--config={path}", expect=error("bad_config|syntax|config"), base=False)


@case(
  "cfg-config-no-get-config",
  "config",
  "--config names a Python file without get_config()",
  error("get_config|config").describe(),
)
def _(c: CaseRun):
  path = c.path("empty_config.py")
  _garbage(path, b"x = 1\n")
  c.main(c.path("run"), f"--config={path}", expect=error("get_config|empty_config"), base=False)


@case("cfg-missing-workdir", "config", "no --workdir", error("workdir").describe())
def _(c: CaseRun):
  c.main(None, expect=error("workdir"))


@case(
  "cfg-log-every-0",
  "config",
  "log_every_steps=0 means once per epoch (was a ZeroDivisionError)",
  "exit 0, train/loss logged, not every step",
)
def _(c: CaseRun):
  workdir = c.path("run")
  run = c.main(workdir, "--config.log_every_steps=0", expect=success())
  if run.rc == 0:
    logged = [s for (s, k) in snapshot(workdir).metrics if k == "train/loss"]
    if not logged or len(logged) >= REFERENCE_STEPS:
      c.problem("silent-wrong", f"train/loss logged at {len(logged)} of {REFERENCE_STEPS} steps")


# --- workdir: where a run writes, and re-runs of an existing workdir.


@case("wd-is-file", "workdir", "--workdir is an existing file", error("file|director").describe())
def _(c: CaseRun):
  path = c.path("file")
  _garbage(path, b"precious\n")
  c.main(path, expect=error("file|director"))
  if _read_bytes(path) != b"precious\n":
    c.problem("lost-data", "the file given as --workdir was changed")


@case("wd-under-file", "workdir", "--workdir is inside a file (file/run)", error("file|director").describe())
def _(c: CaseRun):
  path = c.path("file")
  _garbage(path, b"precious\n")
  c.main(os.path.join(path, "run"), expect=error("file|director"))


@case("wd-dev-null", "workdir", "--workdir=/dev/null (a device)", error("null|director|file").describe())
def _(c: CaseRun):
  c.main("/dev/null", expect=error("null|director|file"))


@case(
  "wd-under-proc",
  "workdir",
  "--workdir under /proc, where even root cannot write",
  error("proc|writ|permission|creat").describe(),
)
def _(c: CaseRun):
  c.main("/proc/jaxcls-fault-table/run", expect=error("proc|writ|permission|creat"))


@case(
  "wd-proc-self",
  "workdir",
  "--workdir=/proc/self (exists, refuses writes)",
  error("proc|writ|permission|creat").describe(),
)
def _(c: CaseRun):
  c.main("/proc/self", expect=error("proc|writ|permission|creat"))


def _size_limited(kib: int) -> list[str]:
  """A wrapper that runs the command with RLIMIT_FSIZE (1 KiB blocks) and SIGXFSZ ignored: a write past the limit
  fails with EFBIG, as a full disk fails with ENOSPC. The limit is set in a subshell whose output goes through a
  pipe to `cat`, outside the limit, so the case's own log is never cut short by it."""
  return ["bash", "-c", f'set -o pipefail; (ulimit -f {kib}; trap "" XFSZ; exec "$@") 2>&1 | cat', "limited"]


def _full_disk(c: CaseRun, kib: int):
  workdir = c.trained()
  before = snapshot(workdir)
  wrap = _size_limited(kib)
  c.main(
    workdir, "--config.num_train_steps=30", expect=error("space|disk|large|writ|full|limit|EFBIG|errno"), wrap=wrap
  )
  c.expect_kept(before, workdir)
  if not checkpoint_steps(workdir):
    c.problem("lost-data", "no checkpoint is left")


@case(
  "wd-full-disk-4k",
  "workdir",
  "files over 4 KiB cannot be written (a full disk) on a resumed run",
  "error, checkpoints 10-20 intact",
)
def _(c: CaseRun):
  _full_disk(c, 4)


@case(
  "wd-full-disk-12k",
  "workdir",
  "files over 12 KiB cannot be written: config and logs fit, checkpoints do not",
  "error, checkpoints 10-20 intact",
)
def _(c: CaseRun):
  _full_disk(c, 12)


@case("wd-full-disk-fresh", "workdir", "a new run where files over 8 KiB cannot be written", "error, no traceback")
def _(c: CaseRun):
  wrap = _size_limited(8)
  c.main(c.path("run"), expect=error("space|disk|large|writ|full|limit|EFBIG|errno"), wrap=wrap)


@case(
  "wd-eval-garbage-config",
  "workdir",
  "evaluate a workdir whose config.json is garbage",
  error("config\\.json").describe(),
)
def _(c: CaseRun):
  workdir = c.trained()
  _garbage(os.path.join(workdir, "config.json"))
  before = snapshot(workdir)
  c.command("jaxcls.evaluate", f"--workdir={workdir}", expect=error("config\\.json"))
  c.expect_kept(before, workdir)


@case("wd-eval-missing-config", "workdir", "evaluate a workdir without config.json", error("config\\.json").describe())
def _(c: CaseRun):
  workdir = c.trained()
  os.remove(os.path.join(workdir, "config.json"))
  c.command("jaxcls.evaluate", f"--workdir={workdir}", expect=error("config\\.json"))


@case(
  "wd-eval-config-is-dir",
  "workdir",
  "evaluate a workdir whose config.json is a folder",
  error("config\\.json").describe(),
)
def _(c: CaseRun):
  workdir = c.trained()
  os.remove(os.path.join(workdir, "config.json"))
  os.mkdir(os.path.join(workdir, "config.json"))
  c.command("jaxcls.evaluate", f"--workdir={workdir}", expect=error("config\\.json"))


@case(
  "wd-predict-garbage-config",
  "workdir",
  "predict with a workdir whose config.json is garbage",
  error("config\\.json").describe(),
)
def _(c: CaseRun):
  workdir = c.trained()
  _garbage(os.path.join(workdir, "config.json"))
  image = c.path("x.png")
  _png(image, 8, 8, 1)
  c.command("jaxcls.predict", f"--workdir={workdir}", image, expect=error("config\\.json"))


@case(
  "wd-resume-garbage-config",
  "workdir",
  "re-run main on a workdir whose config.json is garbage",
  "one-line error naming config.json, or a resume with a warning; checkpoints intact",
)
def _(c: CaseRun):
  workdir = c.trained()
  _garbage(os.path.join(workdir, "config.json"))
  before = snapshot(workdir)
  c.main(workdir, expect=either("config\\.json"))
  c.expect_kept(before, workdir)


@case(
  "wd-resume-missing-config",
  "workdir",
  "re-run main on a workdir whose config.json was deleted",
  "exit 0 (the checkpoint's own fingerprint still guards) or a one-line error; checkpoints intact",
)
def _(c: CaseRun):
  workdir = c.trained()
  os.remove(os.path.join(workdir, "config.json"))
  before = snapshot(workdir)
  c.main(workdir, expect=either("config"))
  c.expect_kept(before, workdir)


def _changed(c: CaseRun, override: str, pattern: str):
  workdir = c.trained()
  before = snapshot(workdir)
  config_before = _read_bytes(os.path.join(workdir, "config.json"))
  c.main(workdir, override, expect=error(pattern))
  c.expect_kept(before, workdir)
  if _read_bytes(os.path.join(workdir, "config.json")) != config_before:
    c.problem("silent-wrong", "the refused re-run rewrote config.json")
  run = c.runs[-1]
  if run.rc and "allow_config_change" not in run.output:
    c.problem("unexpected", "the error does not name --config.allow_config_change=True")


@case("wd-changed-lr", "workdir", "re-run with another learning rate", "error listing old -> new; nothing changed")
def _(c: CaseRun):
  _changed(c, "--config.optimizer.learning_rate=0.01", "learning_rate")


@case("wd-changed-batch", "workdir", "re-run with another batch size", "error listing old -> new; nothing changed")
def _(c: CaseRun):
  _changed(c, "--config.batch_size=32", "batch_size")


@case("wd-changed-augment", "workdir", "re-run with another augmentation", "error listing old -> new")
def _(c: CaseRun):
  _changed(c, "--config.augment=flip_lr", "augment")


@case("wd-changed-seed", "workdir", "re-run with another seed", "error listing old -> new")
def _(c: CaseRun):
  _changed(c, "--config.seed=7", "seed")


@case("wd-shorter-steps", "workdir", "re-run with fewer num_train_steps (not an extension)", "error listing old -> new")
def _(c: CaseRun):
  _changed(c, "--config.num_train_steps=10", "num_train_steps")


@case("wd-incompatible-model", "workdir", "re-run with a wider model", "error naming the model; checkpoints intact")
def _(c: CaseRun):
  workdir = c.trained()
  before = snapshot(workdir)
  c.main(workdir, "--config.model.widths=(16, 32)", expect=error("widths|model"))
  c.expect_kept(before, workdir)


@case(
  "wd-changed-lr-allowed",
  "workdir",
  "another learning rate with --config.allow_config_change=True",
  "exit 0, config_history.jsonl written",
)
def _(c: CaseRun):
  workdir = c.trained()
  before = snapshot(workdir)
  c.main(
    workdir,
    "--config.optimizer.learning_rate=0.01",
    "--config.allow_config_change=True",
    "--config.num_train_steps=25",
    expect=success(),
  )
  c.expect_file(os.path.join(workdir, "config_history.jsonl"), "config_history.jsonl")
  history = _read_text(os.path.join(workdir, "config_history.jsonl"))
  if history and "learning_rate" not in history:
    c.problem("silent-wrong", "config_history.jsonl does not record the learning_rate change")
  c.expect_kept(before, workdir, keep=3)


@case(
  "wd-longer-steps",
  "workdir",
  "re-run with more num_train_steps (an extension, allowed)",
  "exit 0, trains on to step 30, nothing lost",
)
def _(c: CaseRun):
  workdir = c.trained()
  before = snapshot(workdir)
  run = c.main(workdir, "--config.num_train_steps=30", expect=success())
  if run.rc == 0 and (checkpoint_steps(workdir) or [0])[-1] != 30:
    c.problem("silent-wrong", f"the last checkpoint is {checkpoint_steps(workdir)}, not step 30")
  c.expect_kept(before, workdir, keep=3)


@case(
  "wd-changed-cadence", "workdir", "re-run with other log/eval/checkpoint cadences (allowed)", "exit 0, nothing lost"
)
def _(c: CaseRun):
  workdir = c.trained()
  before = snapshot(workdir)
  c.main(
    workdir,
    "--config.log_every_steps=2",
    "--config.eval_every_steps=4",
    "--config.checkpoint_every_steps=3",
    expect=success(),
  )
  c.expect_kept(before, workdir)


@case("wd-rerun-finished", "workdir", "re-run a finished workdir unchanged", "exit 0, same report, nothing lost")
def _(c: CaseRun):
  workdir = c.trained()
  before = snapshot(workdir)
  c.main(workdir, expect=success())
  c.expect_kept(before, workdir)
  with open(os.path.join(c.table.reference(), "report.json")) as f:
    want = json.load(f)
  try:
    got = json.loads(_read_bytes(os.path.join(workdir, "report.json")) or b"{}")
  except ValueError:
    got = {}
  if got.get("accuracy") != want.get("accuracy") or got.get("step") != want.get("step"):
    c.problem("silent-wrong", "the re-run's report differs from the finished run's")


@case(
  "wd-stale-lock",
  "workdir",
  "SIGKILL a run after its first step (its lock stays), then re-run",
  "exit 0 with a stale-lock warning; resume equals the reference",
)
def _(c: CaseRun):
  workdir = c.path("run")
  c.main(workdir, signals=((OnOutput(r"\] \[3\] train/"), signal.SIGKILL),), expect=None, name="killed")
  c.main(workdir, expect=success("stale"))
  c.expect_reference(workdir)


def _write_lock(workdir: str, **record) -> None:
  """DIR/lock.json as a run writes it (host, pid, start, heartbeat, token; see jaxcls/store/workdir.py)."""
  now = time.time()
  holder = {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "started": now,
    "heartbeat": now,
    "token": "fault-table",
    "command": "python -m jaxcls.main (fault table)",
  }
  holder.update(record)
  with open(os.path.join(workdir, "lock.json"), "w") as f:
    json.dump(holder, f)


@case(
  "wd-lock-garbage", "workdir", "lock.json holds garbage; re-run to 25 steps", "exit 0 with a warning about the lock"
)
def _(c: CaseRun):
  workdir = c.trained()
  _garbage(os.path.join(workdir, "lock.json"))
  before = snapshot(workdir)
  c.main(workdir, "--config.num_train_steps=25", expect=success("lock"))
  c.expect_kept(before, workdir, keep=3)


@case(
  "wd-lock-live-pid",
  "workdir",
  "lock.json of a live process on this host; re-run",
  "one-line busy error naming the holder; nothing changed",
)
def _(c: CaseRun):
  workdir = c.trained()
  holder = _started(subprocess.Popen(["sleep", "600"], start_new_session=True))
  try:
    _write_lock(workdir, pid=holder.pid)
    before = snapshot(workdir)
    c.main(workdir, "--config.num_train_steps=25", expect=error("lock|busy|another|running"))
    c.expect_kept(before, workdir)
    if not os.path.isfile(os.path.join(workdir, "lock.json")):
      c.problem("silent-wrong", "the live holder's lock.json was removed")
  finally:
    _kill_group(holder)
    holder.wait()


@case(
  "wd-lock-other-host-fresh",
  "workdir",
  "lock.json of another host with a fresh heartbeat; re-run",
  "one-line busy error",
)
def _(c: CaseRun):
  workdir = c.trained()
  _write_lock(workdir, host="another-host.invalid", pid=1)
  before = snapshot(workdir)
  c.main(workdir, "--config.num_train_steps=25", expect=error("lock|busy|another|running"))
  c.expect_kept(before, workdir)


@case(
  "wd-lock-other-host-stale",
  "workdir",
  "lock.json of another host, last heartbeat 2 hours ago; re-run",
  "exit 0 with a stale-lock warning",
)
def _(c: CaseRun):
  workdir = c.trained()
  old = time.time() - 7200
  _write_lock(workdir, host="another-host.invalid", pid=1, started=old, heartbeat=old)
  c.main(workdir, "--config.num_train_steps=25", expect=success("stale"))


@case("wd-lock-is-dir", "workdir", "lock.json is a folder", error("lock").describe())
def _(c: CaseRun):
  workdir = c.trained()
  os.mkdir(os.path.join(workdir, "lock.json"))
  c.main(workdir, "--config.num_train_steps=25", expect=error("lock"))


@case("wd-checkpoints-is-file", "workdir", "the workdir's checkpoints/ is a file", error("checkpoints").describe())
def _(c: CaseRun):
  workdir = c.path("run")
  os.makedirs(workdir)
  _garbage(os.path.join(workdir, "checkpoints"), b"x")
  c.main(workdir, expect=error("checkpoints|file|director"))


@case(
  "wd-cache-dir-outside",
  "data",
  "evaluate a workdir whose crafted config.json points dataset.cache_dir outside",
  "nothing written outside the workdir, data folder and user cache",
)
def _(c: CaseRun):
  folder = c.images()
  workdir = c.path("run")
  run = c.folder_main(workdir, folder, "--config.dataset.cache=file", expect=success())
  if run.rc != 0:
    return
  outside = c.path("outside")
  path = os.path.join(workdir, "config.json")
  config = json.loads(_read_text(path))
  config["dataset"]["cache_dir"] = outside
  with open(path, "w") as f:
    json.dump(config, f)
  c.command("jaxcls.evaluate", f"--workdir={workdir}", expect=either(""))
  c.expect_no_file(outside, "a folder written outside the workdir through config.json's dataset.cache_dir")


# --- checkpoint: damaged checkpoints, missing steps, exports.


@case(
  "ck-truncated-latest",
  "checkpoint",
  "the latest step's largest array file is truncated; re-run main",
  "warning naming step 20, moved aside, resumes from 15; result equals the reference",
)
def _(c: CaseRun):
  workdir = c.trained()
  _truncate(_largest_file(os.path.join(workdir, "checkpoints", "20", "state")))
  before = snapshot(workdir)
  c.main(workdir, expect=success(r"\b20\b"))
  c.expect_kept(before, workdir)  # step 20's files too: moved aside, never deleted
  c.expect_reference(workdir)


@case(
  "ck-truncated-evaluate",
  "checkpoint",
  "evaluate when the latest step is truncated",
  "an error naming step 20, or a warning and step 15",
)
def _(c: CaseRun):
  workdir = c.trained()
  _truncate(_largest_file(os.path.join(workdir, "checkpoints", "20", "state")))
  before = snapshot(workdir)
  c.command("jaxcls.evaluate", f"--workdir={workdir}", expect=either(r"\b20\b"))
  c.expect_kept(before, workdir)


@case(
  "ck-truncated-predict",
  "checkpoint",
  "predict when the latest step is truncated",
  "an error naming step 20, or a warning and step 15",
)
def _(c: CaseRun):
  workdir = c.trained()
  _truncate(_largest_file(os.path.join(workdir, "checkpoints", "20", "state")))
  image = c.path("x.png")
  _png(image, 8, 8, 1)
  c.command("jaxcls.predict", f"--workdir={workdir}", image, expect=either(r"\b20\b"))


@case(
  "ck-deleted-state",
  "checkpoint",
  "the latest step's state/ item is deleted; re-run main",
  "an error saying what is missing and what to do, or a fallback warning naming step 20",
)
def _(c: CaseRun):
  workdir = c.trained()
  shutil.rmtree(os.path.join(workdir, "checkpoints", "20", "state"))
  before = snapshot(workdir)
  c.main(workdir, expect=either(r"state|\b20\b"))
  c.expect_kept(before, workdir)


@case(
  "ck-deleted-meta",
  "checkpoint",
  "the latest step's meta/ item is deleted; re-run main (was a traceback)",
  "an error saying what is missing, or a fallback warning naming step 20",
)
def _(c: CaseRun):
  workdir = c.trained()
  shutil.rmtree(os.path.join(workdir, "checkpoints", "20", "meta"))
  before = snapshot(workdir)
  c.main(workdir, expect=either(r"meta|\b20\b"))
  c.expect_kept(before, workdir)


@case(
  "ck-garbage-meta",
  "checkpoint",
  "the latest step's meta is garbage; re-run main (was a JSONDecodeError)",
  "an error naming meta, or a fallback warning naming step 20",
)
def _(c: CaseRun):
  workdir = c.trained()
  _garbage(os.path.join(workdir, "checkpoints", "20", "meta", "metadata"))
  before = snapshot(workdir)
  c.main(workdir, expect=either(r"meta|\b20\b"))
  c.expect_kept(before, workdir, skip_steps=(20,))


@case(
  "ck-garbage-meta-evaluate",
  "checkpoint",
  "evaluate when the latest step's meta is garbage",
  "an error naming meta, or a warning naming step 20",
)
def _(c: CaseRun):
  workdir = c.trained()
  _garbage(os.path.join(workdir, "checkpoints", "20", "meta", "metadata"))
  c.command("jaxcls.evaluate", f"--workdir={workdir}", expect=either(r"meta|\b20\b"))


@case(
  "ck-garbage-state-metadata",
  "checkpoint",
  "the latest step's state/_METADATA is garbage; re-run main",
  "a warning naming step 20 and a resume from 15, or an error",
)
def _(c: CaseRun):
  workdir = c.trained()
  _garbage(os.path.join(workdir, "checkpoints", "20", "state", "_METADATA"))
  before = snapshot(workdir)
  c.main(workdir, expect=either(r"\b20\b"))
  c.expect_kept(before, workdir)


@case(
  "ck-all-corrupt",
  "checkpoint",
  "every step's array file is truncated; re-run main",
  "an error or warnings naming the steps; nothing deleted",
)
def _(c: CaseRun):
  workdir = c.trained()
  for step in checkpoint_steps(workdir):
    _truncate(_largest_file(os.path.join(workdir, "checkpoints", str(step), "state")))
  before = snapshot(workdir)
  c.main(workdir, expect=either(r"\b(10|15|20)\b|checkpoint"))
  c.expect_kept(before, workdir)


@case(
  "ck-tmp-leftover",
  "checkpoint",
  "an orbax tmp folder left by a kill during a save; re-run main longer",
  "exit 0, trains on to step 25",
)
def _(c: CaseRun):
  workdir = c.trained()
  shutil.copytree(
    os.path.join(workdir, "checkpoints", "20"), os.path.join(workdir, "checkpoints", "25.orbax-checkpoint-tmp-1234")
  )
  before = snapshot(workdir)
  run = c.main(workdir, "--config.num_train_steps=25", expect=success())
  if run.rc == 0 and (checkpoint_steps(workdir) or [0])[-1] != 25:
    c.problem("silent-wrong", f"checkpoints are {checkpoint_steps(workdir)}, not ending at 25")
  c.expect_kept(before, workdir, keep=3)


@case(
  "ck-empty-checkpoints", "checkpoint", "evaluate a workdir whose checkpoints/ is empty", error("checkpoint").describe()
)
def _(c: CaseRun):
  workdir = c.trained()
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  os.mkdir(os.path.join(workdir, "checkpoints"))
  c.command("jaxcls.evaluate", f"--workdir={workdir}", expect=error("checkpoint"))


@case("ck-evaluate-step-999", "checkpoint", "evaluate --step 999 (no such step)", error("999").describe())
def _(c: CaseRun):
  c.command("jaxcls.evaluate", f"--workdir={c.trained()}", "--step=999", expect=error("999"))


@case("ck-evaluate-step-garbage", "checkpoint", "evaluate --step=abc", error("abc|step").describe())
def _(c: CaseRun):
  c.command("jaxcls.evaluate", f"--workdir={c.trained()}", "--step=abc", expect=error("abc|step"))


@case("ck-predict-step-999", "checkpoint", "predict --step 999 (no such step)", error("999").describe())
def _(c: CaseRun):
  image = c.path("x.png")
  _png(image, 8, 8, 1)
  c.command("jaxcls.predict", f"--workdir={c.trained()}", "--step=999", image, expect=error("999"))


@case("ck-export-step-999", "checkpoint", "export --step 999 (no such step)", error("999").describe())
def _(c: CaseRun):
  c.command(
    "jaxcls.export", f"--workdir={c.trained()}", f"--output={c.path('model')}", "--step=999", expect=error("999")
  )


def _without_best(c: CaseRun) -> str:
  """The reference workdir as a run trained with config.best_metric='' (no best kept) leaves it."""
  workdir = c.trained()
  path = os.path.join(workdir, "config.json")
  config = json.loads(_read_text(path))
  config["best_metric"] = ""
  with open(path, "w") as f:
    json.dump(config, f, indent=1)
  return workdir


@case(
  "ck-step-best-missing",
  "checkpoint",
  "evaluate --step best on a run trained with best_metric=''",
  error("best").describe(),
)
def _(c: CaseRun):
  c.command("jaxcls.evaluate", f"--workdir={_without_best(c)}", "--step=best", expect=error("best"))


@case(
  "ck-export-step-best-missing",
  "checkpoint",
  "export --step best on a run trained with best_metric=''",
  error("best").describe(),
)
def _(c: CaseRun):
  c.command(
    "jaxcls.export", f"--workdir={_without_best(c)}", f"--output={c.path('model')}", "--step=best", expect=error("best")
  )


@case(
  "ck-step-best",
  "checkpoint",
  "best_metric=eval/accuracy with keep_checkpoints=1, then evaluate --step best",
  "exit 0; the evaluated step has the best logged eval/accuracy",
)
def _(c: CaseRun):
  workdir = c.path("run")
  run = c.main(
    workdir,
    "--config.best_metric=eval/accuracy",
    "--config.keep_checkpoints=1",
    "--config.eval_every_steps=5",
    expect=success(),
  )
  if run.rc != 0:
    return
  accuracy = {s: v for (s, k), v in snapshot(workdir).metrics.items() if k == "eval/accuracy"}
  out_dir = c.path("best_eval")
  ev = c.command("jaxcls.evaluate", f"--workdir={workdir}", "--step=best", f"--output_dir={out_dir}", expect=success())
  if ev.rc == 0 and accuracy:
    try:
      step = json.loads(_read_bytes(os.path.join(out_dir, "report.json")) or b"{}").get("step")
    except ValueError:
      step = None
    if step not in accuracy or accuracy[step] != max(accuracy.values()):
      c.problem("silent-wrong", f"--step best evaluated step {step}; eval/accuracy by step: {accuracy}")


@case(
  "ck-export-existing-file",
  "checkpoint",
  "export --output onto an existing file (was a FileExistsError)",
  error("exist|file|director").describe(),
)
def _(c: CaseRun):
  target = c.path("model")
  _garbage(target, b"precious\n")
  c.command("jaxcls.export", f"--workdir={c.trained()}", f"--output={target}", expect=error("exist|file|director"))
  if _read_bytes(target) != b"precious\n":
    c.problem("lost-data", "the existing file was overwritten")


@case(
  "ck-export-twice",
  "checkpoint",
  "export into a folder that already holds an export",
  "one-line error naming --overwrite; the first export unchanged",
)
def _(c: CaseRun):
  workdir, target = c.trained(), c.path("model")
  first = c.command("jaxcls.export", f"--workdir={workdir}", f"--output={target}", "--step=10", expect=success())
  if first.rc != 0:
    return
  kept = _read_bytes(os.path.join(target, "model.json"))
  c.command("jaxcls.export", f"--workdir={workdir}", f"--output={target}", expect=error("overwrite|exist"))
  if _read_bytes(os.path.join(target, "model.json")) != kept:
    c.problem("lost-data", "the first export was replaced without --overwrite")


@case("ck-export-under-file", "checkpoint", "export --output inside a file", error("file|director|exist").describe())
def _(c: CaseRun):
  target = c.path("model")
  _garbage(target, b"precious\n")
  c.command("jaxcls.export", f"--workdir={c.trained()}", f"--output={target}/sub", expect=error("file|director|exist"))


@case(
  "ck-nonfinite",
  "checkpoint",
  "learning rate 1e30: the loss goes non-finite after a checkpoint at step 1",
  "one-line non-finite error; the last checkpoint evaluates to a finite loss",
)
def _(c: CaseRun):
  workdir = c.path("run")
  c.main(
    workdir,
    "--config.optimizer.learning_rate=1e30",
    "--config.checkpoint_every_steps=1",
    "--config.async_checkpointing=False",
    expect=error("finite|nan"),
  )
  if not checkpoint_steps(workdir):
    c.problem("lost-data", "no checkpoint survived")
    return
  ev = c.command("jaxcls.evaluate", f"--workdir={workdir}", f"--output_dir={c.path('eval')}", expect=success())
  if ev.rc == 0:
    loss = json.loads(_read_bytes(c.path("eval", "report.json")) or b"{}").get("loss")
    if not isinstance(loss, float) or loss != loss or loss in (float("inf"), float("-inf")):
      c.problem(
        "silent-wrong",
        f"the kept checkpoint (step {checkpoint_steps(workdir)[-1]}) evaluates to loss "
        f"{'undefined' if loss is None else loss} (non-finite parameters were saved)",
      )


# --- signal: real signals to a running `main`, then a resume that must equal the uninterrupted reference.


def _documented_preempt_codes() -> tuple:
  """0, and the exit code jaxcls documents for a preempted run (EXIT_CODE in jaxcls/training/preemption.py)."""
  try:
    with open(os.path.join(REPO, "jaxcls", "training", "preemption.py")) as f:
      found = re.search(r"^EXIT_CODE = (\d+)", f.read(), re.M)
  except OSError:
    found = None
  return (0, int(found.group(1))) if found else (0,)


PREEMPT_CODES = _documented_preempt_codes()


def _preempted(c: CaseRun, run: Run, workdir: str) -> None:
  """A signalled run's exit: a documented code, one line saying so, and a checkpoint at (or after) that step."""
  if run.rc is not None and run.rc < 0:
    c.problem("unexpected", f"{run.name}: killed by {_signal_name(-run.rc)}, no clean stop")
    return
  if not run.sent:
    c.problem("harness", f"{run.name}: ended before the signal was sent (exit {run.rc})")
    return
  if run.rc not in PREEMPT_CODES:
    c.problem("unexpected", f"{run.name}: exit {run.rc} after {run.sent[0][0]}")
  lines = [
    line for line in run.output.splitlines() if re.search(PREEMPT_LINE, line, re.I) and "checkpoint" in line.lower()
  ]
  steps = checkpoint_steps(workdir)
  at_signal = run.sent[0][2]
  if not lines:
    c.problem("silent-wrong", f"{run.name}: no line says the run stopped on {run.sent[0][0]} with a checkpoint")
  else:
    named = re.search(r"step (\d+)", lines[-1])
    if named and int(named.group(1)) not in steps:
      c.problem("lost-data", f"{run.name}: says step {named.group(1)}, but checkpoints are {steps}")
  if at_signal and (not steps or steps[-1] < at_signal):
    c.problem(
      "lost-data",
      f"{run.name}: step {at_signal} was done at the signal, but the last checkpoint is {steps[-1] if steps else None}",
    )
  c.note(f"signal at step {at_signal}, exit {run.rc}, checkpoints {steps}")


def _signal_case(c: CaseRun, trigger, sig, *, extra: tuple = ()):
  workdir = c.path("run")
  run = c.main(workdir, signals=((trigger, sig), *extra), name="signalled")
  _preempted(c, run, workdir)
  c.main(workdir, expect=success(), name="resumed")
  c.expect_reference(workdir)


@case(
  "sig-term-mid-run",
  "signal",
  "SIGTERM after step 7 is logged, then re-run",
  "checkpoint at that step, one line, exit 0/75; resume equals the reference",
)
def _(c: CaseRun):
  _signal_case(c, OnOutput(r"\] \[7\] train/"), signal.SIGTERM)


@case(
  "sig-int-mid-run",
  "signal",
  "SIGINT (Ctrl-C) after step 7 is logged, then re-run",
  "checkpoint at that step, one line, exit 0/75; resume equals the reference",
)
def _(c: CaseRun):
  _signal_case(c, OnOutput(r"\] \[7\] train/"), signal.SIGINT)


@case(
  "sig-term-twice",
  "signal",
  "two SIGTERMs 0.2 s apart after step 7",
  "checkpoint, one line, clean exit; resume equals the reference",
)
def _(c: CaseRun):
  _signal_case(c, OnOutput(r"\] \[7\] train/"), signal.SIGTERM, extra=((After(0.2), signal.SIGTERM),))


@case(
  "sig-term-eval",
  "signal",
  "SIGTERM while the step-10 evaluation runs",
  "checkpoint at step >= 10, clean exit; resume equals the reference",
)
def _(c: CaseRun):
  _signal_case(c, OnOutput(r"\] \[10\] train/"), signal.SIGTERM)


@case(
  "sig-term-async-save",
  "signal",
  "SIGTERM while an async checkpoint is being written (tmp folder seen)",
  "the save completes, clean exit; resume equals the reference",
)
def _(c: CaseRun):
  workdir = c.path("run")
  trigger = OnPath(os.path.join(workdir, "checkpoints"), r"tmp", or_output=r"\] \[12\] train/")
  run = c.main(workdir, signals=((trigger, signal.SIGTERM),), name="signalled")
  if trigger.fired_by == "fallback":
    c.note("no tmp folder was seen; the signal went at step 12")
  _preempted(c, run, workdir)
  c.main(workdir, expect=success(), name="resumed")
  c.expect_reference(workdir)


@case(
  "sig-term-startup",
  "signal",
  "SIGTERM before the first step (after the data is loaded)",
  "clean exit, no traceback; resume equals the reference",
)
def _(c: CaseRun):
  workdir = c.path("run")
  run = c.main(workdir, signals=((OnOutput(r"Data: \d+ train"), signal.SIGTERM),), name="signalled")
  if run.rc is not None and run.rc < 0:
    c.problem("unexpected", f"killed by {_signal_name(-run.rc)}, no clean stop")
  elif run.rc not in PREEMPT_CODES:
    c.problem("unexpected", f"exit {run.rc} after SIGTERM")
  c.main(workdir, expect=success(), name="resumed")
  c.expect_reference(workdir)


@case(
  "sig-kill-mid-run",
  "signal",
  "SIGKILL after step 12 is logged, then re-run",
  "resume equals the reference, every metrics line present",
)
def _(c: CaseRun):
  workdir = c.path("run")
  c.main(workdir, signals=((OnOutput(r"\] \[12\] train/"), signal.SIGKILL),), name="killed")
  c.main(workdir, expect=success(), name="resumed")
  c.expect_reference(workdir)


@case(
  "sig-kill-during-save",
  "signal",
  "SIGKILL while a checkpoint is being written (tmp folder seen)",
  "resume equals the reference",
)
def _(c: CaseRun):
  workdir = c.path("run")
  trigger = OnPath(os.path.join(workdir, "checkpoints"), r"tmp", or_output=r"\] \[11\] train/")
  c.main(workdir, signals=((trigger, signal.SIGKILL),), name="killed")
  if trigger.fired_by == "fallback":
    c.note("no tmp folder was seen; the kill went at step 11")
  c.main(workdir, expect=success(), name="resumed")
  c.expect_reference(workdir)


@case(
  "sig-kill-twice", "signal", "SIGKILL at step 6, resume, SIGKILL at step 16, resume", "resume equals the reference"
)
def _(c: CaseRun):
  workdir = c.path("run")
  c.main(workdir, signals=((OnOutput(r"\] \[6\] train/"), signal.SIGKILL),), name="killed1")
  c.main(workdir, signals=((OnOutput(r"\] \[16\] train/"), signal.SIGKILL),), name="killed2")
  c.main(workdir, expect=success(), name="resumed")
  c.expect_reference(workdir)


@case("sig-term-evaluate", "signal", "SIGTERM to a running evaluate", "exits promptly, no traceback, no hang")
def _(c: CaseRun):
  workdir = c.trained()
  before = snapshot(workdir)
  c.command(
    "jaxcls.evaluate", f"--workdir={workdir}", signals=((OnOutput(r"Eval step|compiled"), signal.SIGTERM),), timeout=120
  )
  c.expect_kept(before, workdir)


# --- data: hostile image folders (configs/folder.py, 8x8 images, 2 steps).


def _folder_run(c: CaseRun, folder: str, expect: Expect, *, listed: str | None = None, counts=None):
  workdir = c.path("run")
  run = c.folder_main(workdir, folder, expect=expect)
  if run.rc == 0 and listed is not None:
    skipped = _read_bytes(os.path.join(workdir, "skipped_files.txt"))
    if skipped is None:
      c.problem("silent-wrong", f"no skipped_files.txt (expected it to list {listed})")
    elif os.fsencode(listed) not in skipped:
      c.problem("silent-wrong", f"skipped_files.txt does not list {listed}")
  if run.rc == 0 and counts is not None:
    got = _data_counts(run.output)
    if got is None:
      c.note("no 'Data: N train / M eval' line to check the counts")
    elif sum(got) != counts:
      c.problem("silent-wrong", f"{got[0]} train + {got[1]} eval examples, but the folder holds {counts} images")
  return run


@case("data-clean", "data", "a clean 2-class folder of 24 PNGs (the control)", "exit 0, 24 examples")
def _(c: CaseRun):
  _folder_run(c, c.images(), success(), counts=24)


@case(
  "data-symlink-loop",
  "data",
  "a symlink in a class folder pointing back at the root (was 41x listings)",
  "exit 0, every image once",
)
def _(c: CaseRun):
  folder = c.images()
  os.symlink(folder, os.path.join(folder, "cat", "loop"))
  _folder_run(c, folder, success(), counts=24)


@case("data-symlink-self", "data", "a symlink that points at itself (ELOOP)", "exit 0 (skipped), 24 examples")
def _(c: CaseRun):
  folder = c.images()
  os.symlink("self.png", os.path.join(folder, "cat", "self.png"))
  _folder_run(c, folder, success(), counts=24)


@case("data-symlink-dangling", "data", "a dangling symlink named like an image", "exit 0 (skipped), 24 examples")
def _(c: CaseRun):
  folder = c.images()
  os.symlink("/nonexistent/x.png", os.path.join(folder, "cat", "gone.png"))
  _folder_run(c, folder, success(), counts=24)


@case(
  "data-symlink-train-to-test",
  "data",
  "train/cat holds a link to the root (test images reachable from train)",
  "exit 0, no test image counted in train",
)
def _(c: CaseRun):
  base = c.images("flat")
  folder = c.path("split")
  for split, lo, hi in (("train", 0, 8), ("test", 8, 12)):
    for name in ("cat", "dog"):
      os.makedirs(os.path.join(folder, split, name))
      for i in range(lo, hi):
        shutil.copy(os.path.join(base, name, f"{i:02d}.png"), os.path.join(folder, split, name))
  os.symlink(folder, os.path.join(folder, "train", "cat", "loop"))
  run = _folder_run(c, folder, success())
  got = _data_counts(run.output)
  if run.rc == 0 and got is not None and got[0] != 16:
    c.problem("silent-wrong", f"{got[0]} train examples, but train/ holds 16 images (test images leaked?)")


@case(
  "data-fifo",
  "data",
  "a FIFO named like an image in a class folder (was a hang)",
  "exit 0, the FIFO listed in skipped_files.txt",
)
def _(c: CaseRun):
  folder = c.images()
  os.mkfifo(os.path.join(folder, "cat", "pipe.png"))
  _folder_run(c, folder, success(), listed="pipe.png", counts=24)


@case("data-device", "data", "a symlink to /dev/null named like an image", "exit 0, skipped with a reason")
def _(c: CaseRun):
  folder = c.images()
  os.symlink("/dev/null", os.path.join(folder, "cat", "null.png"))
  _folder_run(c, folder, success(), listed="null.png", counts=24)


@case("data-hard-link", "data", "a hard link to an image inside the same class folder", "exit 0, 24 examples")
def _(c: CaseRun):
  folder = c.images()
  os.link(os.path.join(folder, "cat", "00.png"), os.path.join(folder, "cat", "again.png"))
  _folder_run(c, folder, success(), counts=24)


@case("data-socket", "data", "a unix socket named like an image", "exit 0, skipped with a reason")
def _(c: CaseRun):
  folder = c.images()
  sock = socket.socket(socket.AF_UNIX)
  try:
    sock.bind(os.path.join(folder, "cat", "sock.png"))
  except OSError as e:
    raise HarnessError(f"cannot make a socket file: {e}") from e
  finally:
    sock.close()
  _folder_run(c, folder, success(), listed="sock.png", counts=24)


@case(
  "data-non-utf8-name",
  "data",
  "a valid image whose file name is not UTF-8 (was a crash)",
  "exit 0, 25 examples or the file listed",
)
def _(c: CaseRun):
  folder = c.images()
  _png(os.path.join(os.fsencode(folder), b"cat", b"\xff\xfeimg.png"), 8, 8, 999)
  _folder_run(c, folder, success())


@case(
  "data-non-utf8-corrupt",
  "data",
  "a corrupt file with a non-UTF-8 name (crashed writing skipped_files.txt)",
  "exit 0, listed in skipped_files.txt",
)
def _(c: CaseRun):
  folder = c.images()
  _garbage(os.path.join(os.fsencode(folder), b"cat", b"bad\xff.png"))
  run = _folder_run(c, folder, success(), counts=24)
  if run.rc == 0:
    skipped = _read_bytes(os.path.join(c.path("run"), "skipped_files.txt"))
    if not skipped or b"bad" not in skipped:
      c.problem("silent-wrong", "skipped_files.txt does not list the corrupt non-UTF-8 file")


@case("data-corrupt", "data", "a garbage file named .jpg", "exit 0, listed in skipped_files.txt")
def _(c: CaseRun):
  folder = c.images()
  _garbage(os.path.join(folder, "cat", "bad.jpg"))
  _folder_run(c, folder, success(), listed="bad.jpg", counts=24)


@case("data-text-as-jpg", "data", "a text file named .jpg", "exit 0, listed in skipped_files.txt")
def _(c: CaseRun):
  folder = c.images()
  _garbage(os.path.join(folder, "dog", "notes.jpg"), b"this is not a picture\n" * 50)
  _folder_run(c, folder, success(), listed="notes.jpg", counts=24)


@case("data-truncated", "data", "a PNG cut to a third of its bytes", "exit 0, listed in skipped_files.txt")
def _(c: CaseRun):
  folder = c.images()
  path = os.path.join(folder, "dog", "cut.png")
  _png(path, 32, 32, 5)
  _truncate(path)
  _folder_run(c, folder, success(), listed="cut.png", counts=24)


@case("data-zero-byte", "data", "a zero-byte .png", "exit 0, listed in skipped_files.txt")
def _(c: CaseRun):
  folder = c.images()
  open(os.path.join(folder, "dog", "empty.png"), "wb").close()
  _folder_run(c, folder, success(), listed="empty.png", counts=24)


@case(
  "data-bomb",
  "data",
  "a PNG declaring 40000x40000 pixels (a decompression bomb)",
  "exit 0, refused and listed in skipped_files.txt",
)
def _(c: CaseRun):
  folder = c.images()
  bomb_png(os.path.join(folder, "cat", "bomb.png"))
  _folder_run(c, folder, success(), listed="bomb.png", counts=24)


@case("data-dir-named-image", "data", "a folder named x.png inside a class folder", "exit 0, 24 examples")
def _(c: CaseRun):
  folder = c.images()
  os.mkdir(os.path.join(folder, "cat", "x.png"))
  _folder_run(c, folder, success(), counts=24)


@case(
  "data-one-class",
  "data",
  "a folder with one class (was ROC-AUC NaN, no warning)",
  "a warning (or error) about one class; no NaN in report.json",
)
def _(c: CaseRun):
  folder = c.images()
  shutil.rmtree(os.path.join(folder, "dog"))
  run = _folder_run(c, folder, either(r"one class|single class|1 class|only one"))
  if run.rc == 0:
    report = _read_text(os.path.join(c.path("run"), "report.json"))
    if re.search(r"\bNaN\b", report):
      c.problem("silent-wrong", "report.json holds NaN instead of undefined metrics")


@case("data-one-per-class", "data", "a folder with one image per class", "a warning or a one-line error")
def _(c: CaseRun):
  folder = c.path("tiny")
  for k, name in enumerate(("cat", "dog")):
    os.makedirs(os.path.join(folder, name))
    _png(os.path.join(folder, name, "only.png"), 8, 8, k)
  _folder_run(
    c,
    folder,
    either(
      r"one example|1 example|per class|too few|only one|one image|1 image|"
      r"without images|1 in all"
    ),
  )


@case("data-empty-class", "data", "a class folder with no images", "a warning or a one-line error naming it")
def _(c: CaseRun):
  folder = c.images()
  os.mkdir(os.path.join(folder, "bird"))
  _folder_run(c, folder, either(r"bird|empty|no image"))


@case("data-all-corrupt", "data", "every file in the folder is corrupt", error("image|read|no ").describe())
def _(c: CaseRun):
  folder = c.path("bad")
  for name in ("cat", "dog"):
    os.makedirs(os.path.join(folder, name))
    for i in range(4):
      _garbage(os.path.join(folder, name, f"{i}.png"))
  _folder_run(c, folder, error("image|read|no "))


@case("data-empty-folder", "data", "dataset.path is an empty folder", error("image|class|empty|no ").describe())
def _(c: CaseRun):
  os.mkdir(c.path("empty"))
  _folder_run(c, c.path("empty"), error("image|class|empty|no "))


@case("data-missing-folder", "data", "dataset.path does not exist", error("exist|found|nonexistent").describe())
def _(c: CaseRun):
  _folder_run(c, c.path("nonexistent"), error("exist|found|nonexistent"))


@case("data-path-is-file", "data", "dataset.path is a file", error("folder|director|file").describe())
def _(c: CaseRun):
  _garbage(c.path("notes.txt"), b"x")
  _folder_run(c, c.path("notes.txt"), error("folder|director|file"))


# --- predict inputs (on the reference model).


def _predict(c: CaseRun, files: list, expect: Expect, *extra) -> Run:
  return c.command("jaxcls.predict", f"--workdir={c.trained()}", *extra, *files, expect=expect)


def _good_image(c: CaseRun) -> str:
  path = c.path("good.png")
  _png(path, 16, 16, 3, mode="L")
  return path


@case("pr-corrupt-jpeg", "data", "predict on a good image and a corrupt JPEG", "exit 0, an error line for the bad one")
def _(c: CaseRun):
  bad = c.path("bad.jpg")
  _garbage(bad, b"\xff\xd8\xff\xe0" + b"\x00" * 100)
  run = _predict(c, [_good_image(c), bad], success("bad\\.jpg"))
  if run.rc == 0 and "good.png" not in run.output:
    c.problem("silent-wrong", "no prediction line for the good image")


@case("pr-text-as-jpg", "data", "predict on a text file named .jpg (and a good image)", "exit 0, an error line for it")
def _(c: CaseRun):
  bad = c.path("notes.jpg")
  _garbage(bad, b"hello\n" * 10)
  _predict(c, [_good_image(c), bad], success("notes\\.jpg"))


@case("pr-zero-byte", "data", "predict on a zero-byte .png (and a good image)", "exit 0, an error line for it")
def _(c: CaseRun):
  bad = c.path("empty.png")
  open(bad, "wb").close()
  _predict(c, [_good_image(c), bad], success("empty\\.png"))


@case("pr-only-bad", "data", "predict on a single corrupt file", "exit 1 with 'could not be read'")
def _(c: CaseRun):
  bad = c.path("bad.png")
  _garbage(bad)
  _predict(c, [bad], error("could not", codes=(1,), line=r"^jaxcls: "))


@case("pr-missing-file", "data", "predict on a file that does not exist", "non-zero exit, one line naming it")
def _(c: CaseRun):
  _predict(c, [c.path("nope.png")], error("nope\\.png|could not|exist", line=r"^jaxcls: |nope\.png"))


@case(
  "pr-non-utf8-csv",
  "data",
  "predict a non-UTF-8 file name with --output x.csv (was a crash)",
  "exit 0, x.csv written with its row",
)
def _(c: CaseRun):
  name = os.path.join(os.fsencode(c.dir), b"img\xff.png")
  _png(name, 8, 8, 4, mode="L")
  out = c.path("x.csv")
  run = c.command("jaxcls.predict", f"--workdir={c.trained()}", f"--output={out}", os.fsdecode(name), expect=success())
  if run.rc == 0:
    rows = (_read_bytes(out) or b"").splitlines()
    if len(rows) != 2:
      c.problem("silent-wrong", f"x.csv holds {len(rows)} lines, not a header and one row")


@case("pr-non-utf8-json", "data", "predict a non-UTF-8 file name with --output x.json", "exit 0, valid JSON")
def _(c: CaseRun):
  name = os.path.join(os.fsencode(c.dir), b"img\xfe.png")
  _png(name, 8, 8, 4, mode="L")
  out = c.path("x.json")
  run = c.command("jaxcls.predict", f"--workdir={c.trained()}", f"--output={out}", os.fsdecode(name), expect=success())
  if run.rc == 0:
    try:
      json.loads(_read_bytes(out) or b"")
    except ValueError:
      c.problem("silent-wrong", "x.json is not valid JSON")


@case("pr-fifo", "data", "predict on a FIFO named .png (and a good image)", "exit 0, no hang, an error line for it")
def _(c: CaseRun):
  fifo = c.path("pipe.png")
  os.mkfifo(fifo)
  _predict(c, [_good_image(c), fifo], success("pipe\\.png"))


@case("pr-device", "data", "predict on /dev/null (and a good image)", "exit 0, an error line for it")
def _(c: CaseRun):
  _predict(c, [_good_image(c), "/dev/null"], success("/dev/null"))


@case("pr-bomb", "data", "predict on a decompression-bomb PNG (and a good image)", "exit 0, refused with a reason")
def _(c: CaseRun):
  bomb = c.path("bomb.png")
  bomb_png(bomb)
  _predict(c, [_good_image(c), bomb], success("bomb\\.png"))


@case("pr-folder-loop", "data", "predict on a folder with a symlink loop", "exit 0, each image once")
def _(c: CaseRun):
  folder = c.path("pics")
  os.mkdir(folder)
  for i in range(3):
    _png(os.path.join(folder, f"{i}.png"), 8, 8, i, mode="L")
  os.symlink(folder, os.path.join(folder, "loop"))
  out = c.path("x.csv")
  run = _predict(c, [folder], success(), f"--output={out}")
  if run.rc == 0:
    rows = (_read_bytes(out) or b"").splitlines()
    if len(rows) != 4:
      c.problem("silent-wrong", f"x.csv holds {len(rows) - 1} rows for 3 images")


@case("pr-bad-output-ext", "data", "predict --output x.txt", error("output|\\.csv").describe())
def _(c: CaseRun):
  _predict(c, [_good_image(c)], error("output|\\.csv"), f"--output={c.path('x.txt')}")


@case(
  "pr-output-missing-dir",
  "data",
  "predict --output into a folder that does not exist",
  "exit 0 with the folder made, or a one-line error",
)
def _(c: CaseRun):
  _predict(c, [_good_image(c)], either("output|exist|director"), f"--output={c.path('no', 'such', 'x.csv')}")


# --- concurrency.


def _start(c: CaseRun, workdir: str, log_path: str, *overrides):
  """A training run left going in the background (its output in log_path)."""
  with open(log_path, "wb") as log:
    return _started(
      subprocess.Popen(
        [sys.executable, "-m", "jaxcls.main", f"--workdir={workdir}", *c.table.base_flags(), *overrides],
        cwd=c.dir,
        env=child_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
      )
    )


@case(
  "cc-two-runs",
  "concurrency",
  "a second main on a workdir while a first one trains it (was trampling)",
  "the second gets a one-line busy error; the first, then SIGTERMed, stops cleanly with a checkpoint",
)
def _(c: CaseRun):
  workdir = c.path("run")
  first_log = c.path("first.log")
  long_run = ("--config.num_train_steps=5000",)  # far longer than the second run takes to start and stop
  first = _start(c, workdir, first_log, *long_run)
  try:
    deadline = time.monotonic() + c.table.timeout
    while time.monotonic() < deadline and first.poll() is None and "] [2] train/" not in _read_text(first_log):
      time.sleep(0.05)
    if first.poll() is not None:
      raise HarnessError(f"the first run ended (exit {first.returncode}) before the second could start")
    c.main(workdir, *long_run, expect=error("lock|busy|another|running|in use"), name="second")
    if first.poll() is not None:
      c.problem("unexpected", f"the first run ended (exit {first.returncode}) while the second was refused")
      return
    os.kill(first.pid, signal.SIGTERM)
    try:
      first.wait(timeout=max(deadline - time.monotonic(), 30))
    except subprocess.TimeoutExpired:
      c.problem("hang", "the first run did not stop after SIGTERM")
      return
  finally:
    _kill_group(first)
  run = Run("first", first.returncode, _read_text(first_log), sent=[("SIGTERM", 0.0, 0)])
  c.runs.append(run)
  c.problems += classify_run(run, None)
  _preempted(c, run, workdir)
  if os.path.exists(os.path.join(workdir, "lock.json")):
    c.problem("silent-wrong", "lock.json is left behind after both runs ended")


@case(
  "cc-evaluate-while-training",
  "concurrency",
  "evaluate a workdir while main trains it",
  "evaluate exits 0 or with a one-line error; training still equals the reference",
)
def _(c: CaseRun):
  workdir = c.path("run")
  first_log = c.path("first.log")
  first = _start(c, workdir, first_log)
  try:
    deadline = time.monotonic() + c.table.timeout
    while time.monotonic() < deadline and first.poll() is None and not checkpoint_steps(workdir):
      time.sleep(0.05)
    c.command("jaxcls.evaluate", f"--workdir={workdir}", f"--output_dir={c.path('eval')}", expect=either(""))
    try:
      first.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
      c.problem("hang", "the training run did not finish")
      return
  finally:
    _kill_group(first)
  run = Run("training", first.returncode, _read_text(first_log))
  c.runs.append(run)
  c.problems += classify_run(run, success())
  if first.returncode == 0:
    c.expect_reference(workdir)


# --- storage: URL workdirs, and a real GCS API (gcp-storage-emulator on localhost).


@case(
  "st-gs-malformed",
  "storage",
  "--workdir gs:/bucket/run (one slash; made ./gs:/bucket/run before)",
  "one-line error; no local gs: folder",
)
def _(c: CaseRun):
  c.main("gs:/bucket/run", expect=error("gs:"))
  c.expect_no_file(c.path("gs:"), "a local folder named after the URL")


@case("st-s3-no-backend", "storage", "--workdir s3://bucket/run without s3fs", error("s3").describe())
def _(c: CaseRun):
  c.main("s3://bucket/run", expect=error("s3"))
  c.expect_no_file(c.path("s3:"), "a local folder named after the URL")


@case("st-unknown-scheme", "storage", "--workdir foo://bucket/run", error("foo").describe())
def _(c: CaseRun):
  c.main("foo://bucket/run", expect=error("foo"))
  c.expect_no_file(c.path("foo:"), "a local folder named after the URL")


@case("st-gs-no-bucket", "storage", "--workdir gs:// (no bucket)", error("gs|bucket").describe())
def _(c: CaseRun):
  c.main("gs://", expect=error("gs|bucket"))


@case("st-evaluate-gs-malformed", "storage", "evaluate --workdir gs:/bucket/run", error("gs:").describe())
def _(c: CaseRun):
  c.command("jaxcls.evaluate", "--workdir=gs:/bucket/run", expect=error("gs:"))
  c.expect_no_file(c.path("gs:"), "a local folder named after the URL")


@case("st-data-s3", "storage", "dataset.path=s3://bucket/d.npz (arrays source) without s3fs", error("s3").describe())
def _(c: CaseRun):
  c.main(c.path("run"), "--config.dataset.name=arrays", "--config.dataset.path=s3://bucket/d.npz", expect=error("s3"))


@case(
  "st-gcs-kill-resume",
  "storage",
  "train into gs:// on the GCS emulator, SIGKILL after step 12, resume",
  "equals the local reference, every metrics.jsonl line present",
)
def _(c: CaseRun):
  _, env = c.table.emulator()
  workdir = f"gs://{BUCKET}/{os.path.basename(c.dir)}-run"
  c.main(workdir, signals=((OnOutput(r"\] \[12\] train/"), signal.SIGKILL),), name="killed", env=env)
  c.main(workdir, expect=success(), name="resumed", env=env)
  c.expect_reference(workdir, env)


@case(
  "st-gcs-evaluate-missing",
  "storage",
  "evaluate a gs:// workdir that does not exist (emulator)",
  error("config\\.json|exist|gs://").describe(),
)
def _(c: CaseRun):
  _, env = c.table.emulator()
  c.command(
    "jaxcls.evaluate", f"--workdir=gs://{BUCKET}/nothing-here", expect=error("config\\.json|exist|gs://"), env=env
  )


@case(
  "st-gcs-missing-bucket",
  "storage",
  "--workdir into a bucket that does not exist (emulator)",
  error("bucket|exist|gs://|404").describe(),
)
def _(c: CaseRun):
  _, env = c.table.emulator()
  c.main("gs://no-such-bucket-jaxcls/run", expect=error("bucket|exist|gs://|404|not found"), env=env)


# ------------------------------------------------------------------------------------------------------- the table


@dataclasses.dataclass
class Row:
  """One line of the printed fault table: the case, what happened, and whether it passed."""

  id: str
  category: str
  case: str
  expected: str
  observed: str
  seconds: float
  details: list
  notes: list


def run_case(table: Table, spec: Case) -> Row:
  directory = tempfile.mkdtemp(prefix=f"{spec.id}-", dir=table.root)
  c = CaseRun(table, spec, directory)
  start = time.monotonic()
  try:
    spec.run(c)
  except HarnessError as e:
    c.problem("harness", str(e))
  except Exception as e:  # pylint: disable=broad-except
    c.problem("harness", f"{type(e).__name__}: {e} ({traceback.format_exc().splitlines()[-3].strip()})")
  labels = labels_of(c.problems)
  return Row(
    spec.id,
    spec.category,
    spec.description,
    spec.expected,
    "+".join(labels),
    time.monotonic() - start,
    [f"{label}: {detail}" for label, detail in c.problems],
    c.notes,
  )


def format_table(rows: list[Row]) -> str:
  headers = ("id", "category", "case", "expected", "observed", "seconds")
  cells = [(r.id, r.category, _short(r.case, 70), _short(r.expected, 60), r.observed, f"{r.seconds:.1f}") for r in rows]
  widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
  lines = [" | ".join(h.ljust(w) for h, w in zip(headers, widths)), "-+-".join("-" * w for w in widths)]
  lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
  return "\n".join(lines)


def totals(rows: list[Row]) -> list[str]:
  def count(label):
    return sum(1 for r in rows if label in r.observed.split("+"))

  return [
    f"cases: {len(rows)}",
    f"ok: {count('ok')}",
    f"unexpected exits/messages: {count('unexpected')}",
    f"harness failures: {count('harness')}",
    f"tracebacks: {count('traceback')}",
    f"hangs: {count('hang')}",
    f"silent wrong results: {count('silent-wrong')}",
    f"lost data: {count('lost-data')}",
  ]


def parse_args(argv):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--only", action="append", default=[], help="run the cases whose id contains this substring (repeatable)"
  )
  parser.add_argument("--list", action="store_true", help="list the cases and exit")
  parser.add_argument("--jobs", type=int, default=1, help="cases run at the same time (default 1)")
  parser.add_argument("--json", help="also write the rows (with details) to this JSON file")
  parser.add_argument(
    "--timeout", type=float, default=240.0, help="seconds one command may run before it counts as a hang (default 240)"
  )
  parser.add_argument("--keep", action="store_true", help="keep the temporary folders (their path is printed)")
  parser.add_argument(
    "--plots",
    action="store_true",
    help="let the commands draw the report's figures (matplotlib is hidden from them by default)",
  )
  parser.add_argument(
    "--root",
    help="work in this folder and keep it; its reference run and compilation cache "
    "from an earlier table run are reused (for working on the table itself)",
  )
  args = parser.parse_args(argv)
  if args.jobs < 1:
    parser.error(f"--jobs={args.jobs} must be at least 1")
  if args.timeout <= 0:
    parser.error(f"--timeout={args.timeout} must be positive")
  return args


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  selected = [c for c in CASES if not args.only or any(s in c.id for s in args.only)]
  if args.list:
    for c in CASES:
      print(f"{c.id:<28} {c.category:<12} {c.description}")
    print(f"{len(CASES)} cases")
    return 0
  if not selected:
    print(f"no case id contains {' or '.join(args.only)}; see --list", file=sys.stderr)
    return 2
  if args.root:
    root = os.path.abspath(args.root)
    os.makedirs(root, exist_ok=True)
    args.keep = True
  else:
    root = tempfile.mkdtemp(prefix="jaxcls-fault-table-")
  table = Table(root, args.timeout)
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, _kill_all_and_exit)
  if not args.plots:
    hide_matplotlib(root)
  start = time.monotonic()
  rows = []
  try:
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
      futures = [pool.submit(run_case, table, spec) for spec in selected]
      for future in futures:
        row = future.result()
        rows.append(row)
        print(
          f"[{len(rows)}/{len(selected)}] {row.id}: {row.observed} ({row.seconds:.0f} s)"
          + "".join(f"\n    {d}" for d in row.details + row.notes),
          file=sys.stderr,
          flush=True,
        )
  finally:
    table.close()
    if args.keep:
      print(f"case folders kept in {root}", file=sys.stderr)
    else:
      shutil.rmtree(root, ignore_errors=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"seconds": time.monotonic() - start, "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=1)
  print(format_table(rows))
  failing = [r for r in rows if r.observed != "ok"]
  if failing:
    print("\nNot ok:")
    for r in failing:
      print(f"  {r.id}: " + "; ".join(r.details or ["(no detail)"]))
  print(f"\nwall time: {time.monotonic() - start:.0f} s, --jobs {args.jobs}")
  print("\n".join(totals(rows)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
