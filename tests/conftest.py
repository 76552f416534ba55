"""Test setup: 8 virtual CPU devices (so sharding bugs show up) and small configs that train in seconds."""

import os
import pathlib
import shutil
import sys

# XLA's CPU collectives end the process ("Termination timeout ... Exiting to ensure a consistent program state")
# when one virtual device's thread reaches a rendezvous 40 s after the others. Eight virtual devices on a loaded
# 2-core CI machine can lag that much; the tests wait 15 minutes instead (pyproject's per-test limit comes first).
PATIENT_COLLECTIVES = (
  "--xla_cpu_collective_call_warn_stuck_timeout_seconds=300 --xla_cpu_collective_call_terminate_timeout_seconds=900"
)


def xla_flags(device_count: int = 8, flags: str = "") -> str:
  """XLA_FLAGS for a test process: `device_count` virtual CPU devices, patient collectives, then `flags`."""
  if "xla_force_host_platform_device_count" not in flags:
    flags = f"--xla_force_host_platform_device_count={device_count} {flags}"
  if "xla_cpu_collective_call_terminate_timeout_seconds" not in flags:
    flags = f"{flags} {PATIENT_COLLECTIVES}"
  return " ".join(flags.split())


os.environ["XLA_FLAGS"] = xla_flags(8, os.environ.get("XLA_FLAGS", ""))
# XLA's CPU client pool for 8 virtual devices on 2 cores: 16 threads, not 8, or a collective step can hang (the
# module's docstring has the mechanism). `import jaxcls` does the same; here it also covers the tests' subprocesses.
from jaxcls.core import cpu_threads  # noqa: E402

cpu_threads.ensure_client_threads()
# etils.epath decides once per process, at the first gs:// path, whether TensorFlow's GCS client serves it; TF's
# endpoint cannot be pointed at the tests' GCS emulator, so every test process uses gcsfs from the start.
os.environ.setdefault("EPATH_USE_TF", "false")
# One compilation cache for every test process of a run (config.compilation_cache_dir='auto' reads it): the many
# runs of the same tiny configs compile once. Tests of the cache itself name their own folders.
os.environ.setdefault(
  "JAXCLS_CACHE_DIR",
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jaxcls-xla"),
)

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# XLA options that compile a test's tiny programs several times faster (the numbers do not change).
CHEAP_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def tiny_config(**overrides):
  """A synthetic-data config with a small CNN: a few seconds per run on 2 CPU cores."""
  from jaxcls.config import base as config_base

  config = config_base.get_base_config()
  config.dataset.name = "synthetic"
  config.dataset.image_size = (8, 8)
  config.dataset.channels = 3
  config.dataset.num_classes = 4
  config.dataset.num_train_examples = 128
  config.dataset.num_eval_examples = 100
  config.model.name = "simple_cnn"
  config.model.widths = (8, 16)
  config.model.dropout = 0.1
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.05
  config.optimizer.warmup_steps = 2
  config.augment = "random_crop(padding=1)|flip_lr"
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_train_steps = 12
  config.log_every_steps = 1
  config.eval_every_steps = 6
  config.checkpoint_every_steps = 4
  config.async_checkpointing = False
  return set_keys(config, overrides)


def folder_config(path, **dataset):
  """A base config reading the image folder at `path` (8x8, 2 decode threads), with `dataset.*` overrides."""
  from jaxcls.config.base import get_base_config  # pylint: disable=g-import-not-at-top

  config = get_base_config()
  config.dataset.name = "folder"
  config.dataset.path = str(path)
  config.dataset.image_size = (8, 8)
  config.dataset.workers = 2
  for key, value in dataset.items():
    config.dataset[key] = value
  return config


def set_keys(config, values: dict):
  """Sets dotted keys ('dataset.name') of a ConfigDict; returns it."""
  for key, value in values.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


DIGITS_WORKDIR = pathlib.Path(REPO) / "tests" / "fixtures" / "workdir_0_1"  # digits 16x16 grey, AdamW, step 300


@pytest.fixture
def digits_workdir(tmp_path) -> str:
  """A copy (that the test may change) of a real trained workdir: digits, jaxcls 0.1.0's format, step 300."""
  target = tmp_path / "digits"
  shutil.copytree(DIGITS_WORKDIR, target)
  return str(target)


@pytest.fixture
def make_config():
  return tiny_config


def subprocess_env(device_count: int = 8) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = xla_flags(device_count)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


@pytest.fixture
def python():
  """The interpreter for tests that run jaxcls commands in subprocesses: using it marks a test `slow`."""
  return sys.executable


def pytest_collection_modifyitems(config, items):
  """Marks as `slow` every test under tests/e2e/ and every test that starts a jaxcls subprocess (it asks for the
  `python` fixture).

  `pytest -m "not slow"` is then the quick inner loop: library-level tests only. CI runs both kinds.
  """
  del config
  e2e = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e") + os.sep
  for item in items:
    if "python" in getattr(item, "fixturenames", ()) or str(item.path).startswith(e2e):
      item.add_marker(pytest.mark.slow)


class Interrupted(Exception):
  """A simulated preemption, raised by `InterruptedAt`."""


def write_image_files(folder, count: int, *, unreadable=(), missing=(), rgb: bool = False, jpeg: bool = False):
  """`count` image files of varied sizes in `folder` (PNG, or JPEG at odd positions with `jpeg`), the paths in order:
  the positions in `unreadable` hold bytes that are no image, those in `missing` are named but never written."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  folder.mkdir(parents=True, exist_ok=True)
  files = []
  for i in range(count):
    path = folder / f"{i:02d}.{'jpg' if jpeg and i % 2 else 'png'}"
    if i in unreadable:
      path.write_bytes(b"not an image")
    elif i not in missing:
      shape = (20 + 3 * i, 30, 3) if rgb else (10 + i, 14)
      Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    files.append(str(path))
  return files


class InterruptedAt:
  """A dataset whose train stream raises Interrupted when global batch `batch` is requested.

  The loop asks for batch k only after finishing step k, so with a checkpoint at step k this stops a run right
  after that checkpoint, as a preemption would.
  """

  def __init__(self, dataset, batch: int):
    self._dataset, self._batch = dataset, batch

  def __getattr__(self, name):
    return getattr(self._dataset, name)

  def with_sampling(self, sampling):
    return InterruptedAt(self._dataset.with_sampling(sampling), self._batch)

  def train_batches(self, batch_size, *, start_step, seed):
    stream = self._dataset.train_batches(batch_size, start_step=start_step, seed=seed)
    for step, batch in enumerate(stream, start=start_step):
      if step == self._batch:
        raise Interrupted()
      yield batch


def eval_step_outputs(workdir: str, batch_size: int, tta: str = "none") -> dict:
  """Every eval example's outputs (probabilities, labels, ...) as training's eval step computes them for the
  latest checkpoint of `workdir`: the reference that predict and export are held to."""
  from jaxcls import data  # pylint: disable=g-import-not-at-top
  from jaxcls.core import parallel
  from jaxcls.evaluation import loop as eval_loop
  from jaxcls.store import restore
  from jaxcls.store.build import build_task_and_model

  config = restore.load_config(workdir)
  dataset = data.build(config)
  task, model, _ = build_task_and_model(config, dataset.info)
  variables = restore.read_variables(workdir, restore.resolve_step(workdir, None))
  mesh = parallel.make_mesh()
  variables = parallel.replicate({"params": variables["params"], "batch_stats": variables["batch_stats"]}, mesh)
  eval_step = eval_loop.make_eval_step(
    model, task, mean=dataset.info.mean, std=dataset.info.std, dtype=config.dtype, mesh=mesh, tta=tta
  )
  return eval_loop.evaluate(eval_step, variables, dataset, task, batch_size, mesh)[1]


def logged_losses(workdir) -> dict:
  """{step: train/loss} from a workdir's metrics.jsonl: what a resumed or re-sharded run is compared on."""
  import json  # pylint: disable=g-import-not-at-top

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def saved_state(workdir, step: int | None = None):
  """The full train state a workdir's checkpoint `step` (default: the latest) holds, read on this process."""
  from jaxcls.store import checkpoint  # pylint: disable=g-import-not-at-top

  ckpt = checkpoint.Checkpointer(str(workdir), keep=3, async_save=False, fingerprint={})
  try:
    return ckpt.read_state(ckpt.latest_step() if step is None else step)
  finally:
    ckpt.close()


def destroy_chunks(workdir, step: int, prefix: str) -> int:
  """Overwrites with zeros, in the data files, the stored bytes of every array chunk whose key starts with
  `prefix` (e.g. 'opt_state.'); returns how many chunks were destroyed.

  The state is an OCDBT database: small chunks are kept inside its b-tree node (left alone: they share the node
  with every other item's), larger ones at an (offset, length) of a data file, which tensorstore's `ocdbt.dump`
  gives. Zeros there are no valid zstd frame, so reading such a chunk fails.
  """
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  root = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  base = ts.KvStore.open(f"file://{root}/").result()
  manifest = ts.ocdbt.dump(base).result()
  version = manifest["versions"][-1]
  assert version["root_height"] == 0, "a one-node b-tree is expected for these small states"
  node = ts.ocdbt.dump(base, version["root"]["location"]).result()
  destroyed = 0
  for entry in node["entries"]:
    if entry["key"].decode().startswith(prefix) and "indirect_value" in entry:
      # 'value:ocdbt.process_0/:d/<file>:<offset>:<length>' (the folder, then the file inside it)
      _, folder, rest = entry["indirect_value"].split(":", 2)
      name, offset, length = rest.rsplit(":", 2)
      with open(root / folder / name, "r+b") as f:
        f.seek(int(offset))
        f.write(b"\0" * int(length))
      destroyed += 1
  return destroyed


def clean_python(folder, requirements, *, without=()) -> str:
  """A `python -m venv --without-pip` interpreter in `folder` that sees only the distributions `requirements`
  names (`name==version` lines, as an export's requirements.txt holds) and their own dependencies, linked from this
  venv (no download), minus the distributions in `without`; returns its python. What a user's fresh venv holds
  after `pip install -r requirements.txt`, nothing of jaxcls, flax or the test's venv."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top

  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top

  subprocess.run(
    [getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(folder)],
    check=True,
    capture_output=True,
  )
  site = subprocess.run(
    [os.path.join(folder, "bin", "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
    check=True,
    capture_output=True,
    text=True,
  ).stdout.strip()
  skip = {re.sub(r"[-_.]+", "-", name).lower() for name in without}
  wanted, seen = [re.split(r"[=<>!~;\[ ]", line.strip(), maxsplit=1)[0] for line in requirements], set()
  while wanted:
    name = re.sub(r"[-_.]+", "-", wanted.pop()).lower()
    if name in seen or name in skip:
      continue
    seen.add(name)
    dist = importlib.metadata.distribution(name)
    for requirement in map(Requirement, dist.requires or ()):
      if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
        wanted.append(requirement.name)
    tops = {str(f).split("/")[0] for f in dist.files if not str(f).startswith("..")} - {"__pycache__"}
    for top in sorted(tops):
      source = os.path.join(str(dist.locate_file("")), top)
      if os.path.exists(source) and not os.path.exists(os.path.join(site, top)):
        os.symlink(source, os.path.join(site, top))
  return os.path.join(folder, "bin", "python")
