"""`dataset.decode_processes`: a config key users can set (base config, ranges, the command line) that decodes a
folder's images in worker processes with the very batches that threads give, cached or streamed, and across a
resume that changes it."""

import os
import subprocess

import jax
import numpy as np
import pytest
from conftest import REPO, Interrupted, InterruptedAt, folder_config, logged_losses, saved_state, subprocess_env
from PIL import Image

from jaxcls import data
from jaxcls.config import check
from jaxcls.config.base import get_base_config
from jaxcls.core.errors import ConfigError, DataError
from jaxcls.data.sources import folder


def write_images(root, count=24, classes=3):
  """Real files of varied sizes: PNGs and JPEGs, one truncated JPEG (skipped, as threads skip it)."""
  rng = np.random.default_rng(0)
  for i in range(count):
    folder = root / f"c{i % classes}"
    os.makedirs(folder, exist_ok=True)
    h, w = rng.integers(12, 60, 2)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pixels[: h // 2] //= 1 + i % classes  # something a CNN can learn
    if i % 2:
      Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    else:
      Image.fromarray(pixels).save(folder / f"{i:02d}.jpg", quality=90)
  raw = (root / "c0" / "00.jpg").read_bytes()
  (root / "c0" / "00.jpg").write_bytes(raw[: len(raw) // 3])
  return root


def test_the_base_config_declares_it_and_the_range_check_refuses_bad_values():
  config = get_base_config()
  assert config.dataset.decode_processes == 0  # threads by default
  config.dataset.name = "folder"
  config.dataset.decode_processes = 4
  check.validate(config)
  # A ConfigDict refuses a float or a string for this int key by itself; a plain mapping (a config.json read back)
  # does not, so the range check covers those too.
  for bad, words in [(-1, "must be >= 0"), (1.5, "must be an integer"), ("4", "must be an integer")]:
    config = {"dataset": {"name": "folder", "decode_processes": bad}} if isinstance(bad, str | float) else None
    if config is None:
      config = get_base_config()
      config.dataset.name = "folder"
      config.dataset.decode_processes = bad
    with pytest.raises(ConfigError, match="^config.dataset.decode_processes=") as error:
      check.check_ranges(config)
    assert words in str(error.value) and "0 = decode in threads" in str(error.value), str(error.value)
    assert "\n" not in str(error.value)


def test_a_source_that_would_ignore_it_refuses_it():
  config = get_base_config()  # dataset.name='digits': arrays in memory, nothing to decode
  config.dataset.decode_processes = 2
  with pytest.raises(ConfigError, match=r"decode_processes=2 decodes .*'digits' source .* set decode_processes=0"):
    check.validate(config)
  config.dataset.decode_processes = 0
  check.validate(config)


def _build(config, processes):
  config = config.copy_and_resolve_references()
  config.dataset.decode_processes = processes
  return data.build(config, process_index=0, process_count=1)


@pytest.mark.slow  # spawns worker processes
def test_the_memory_cache_decodes_in_worker_processes_to_the_same_arrays(tmp_path):
  """cache='memory' (what 'auto' picks for a small folder) decodes every file once: in processes, the same arrays,
  the same skipped file, so the same batches."""
  config = folder_config(write_images(tmp_path / "images"), cache="memory", test_fraction=0.25)
  threads, processes = _build(config, 0), _build(config, 2)
  assert threads.skipped_files == processes.skipped_files and threads.skipped_files[0][0].endswith("00.jpg")
  a = next(threads.train_batches(8, start_step=0, seed=3))
  b = next(processes.train_batches(8, start_step=0, seed=3))
  for key in ("image", "label", "mask"):
    np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(threads.eval_batches(8), processes.eval_batches(8)):
    np.testing.assert_array_equal(a["image"], b["image"])


def _train_config(root, processes, **overrides):
  config = folder_config(
    root, cache="none", image_size=(16, 16), train_crop="random_resized", eval_crop="center", test_fraction=0.25
  )
  config.dataset.decode_processes = processes
  config.model.name = "simple_cnn"
  config.model.widths = (8, 16)
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 0.01
  config.augment = "flip_lr"
  for key, value in {
    "batch_size": 8,
    "num_train_steps": 9,
    "log_every_steps": 1,
    "eval_every_steps": -1,
    "checkpoint_every_steps": 3,
    "async_checkpointing": False,
    "compilation_cache_dir": "",
    "writers": ("jsonl",),
    **overrides,
  }.items():
    config[key] = value
  return config


@pytest.mark.slow  # three short trainings, two of them with worker processes
def test_training_with_worker_processes_sees_the_batches_of_threads_and_resumes_exactly(tmp_path):
  """Through the config only: a streamed random-resized-crop run with decode_processes=2 logs the very losses of
  one with threads, step by step, and a run stopped after a checkpoint and resumed with another decode_processes
  ends with the same parameters."""
  from jaxcls.training import loop as train  # pylint: disable=g-import-not-at-top

  root = write_images(tmp_path / "images", count=36)
  train.train_and_evaluate(_train_config(root, 0), str(tmp_path / "threads"))
  train.train_and_evaluate(_train_config(root, 2), str(tmp_path / "processes"))
  threads = logged_losses(tmp_path / "threads")
  assert sorted(threads) == list(range(1, 10))
  assert logged_losses(tmp_path / "processes") == threads  # the same batches: the same losses, bit for bit

  # Stopped right after the step-6 checkpoint with processes, resumed in threads.
  stopped = _train_config(root, 2)
  dataset = data.build(stopped)
  try:
    with pytest.raises(Interrupted):
      train.train_and_evaluate(stopped, str(tmp_path / "resumed"), dataset=InterruptedAt(dataset, 7))
  finally:
    dataset.close()  # its worker processes
  # The workdir check lets decode_processes change on resume (store/workdir.NON_TRAINING_KEYS): no override.
  train.train_and_evaluate(_train_config(root, 0), str(tmp_path / "resumed"))
  assert logged_losses(tmp_path / "resumed") == threads
  a, b = saved_state(str(tmp_path / "threads"), 9), saved_state(str(tmp_path / "resumed"), 9)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_the_command_line_takes_it(python, tmp_path):
  """`--config.dataset.decode_processes=2` through the real flag parser: show_data decodes the folder with it; a
  negative value is one line and exit status 2 from main (before any data loads) and from show_data (the source's
  own check)."""
  root = write_images(tmp_path / "images")
  folder_py = os.path.join(REPO, "configs", "folder.py")
  run = lambda *args: subprocess.run(
    [python, "-m", *args], env=subprocess_env(1), cwd=tmp_path, capture_output=True, text=True, timeout=600
  )
  show = (
    "jaxcls.show_data",
    "--config",
    folder_py,
    f"--config.dataset.path={root}",
    "--config.dataset.image_size=(16, 16)",
  )
  ok = run(*show, "--num", "4", "--output", str(tmp_path / "grid.png"), "--config.dataset.decode_processes=2")
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert Image.open(tmp_path / "grid.png").size[0] > 16
  bad = run(*show, "--config.dataset.decode_processes=-1")
  assert bad.returncode == 2, bad.stderr[-3000:]
  assert "dataset.decode_processes=-1 is not valid" in bad.stderr and "Traceback" not in bad.stderr
  main = ("jaxcls.main", "--config", folder_py, f"--config.dataset.path={root}", "--workdir", str(tmp_path / "w"))
  bad = run(*main, "--config.dataset.decode_processes=-1")
  assert bad.returncode == 2, bad.stderr[-3000:]
  assert "config.dataset.decode_processes=-1 is not valid; it must be >= 0" in bad.stderr
  assert "Traceback" not in bad.stderr and not os.path.exists(tmp_path / "w" / "config.json")


def test_a_worker_process_that_dies_is_one_data_error_naming_both_fixes():
  """A real worker killed mid-job (os.abort in the spawned process): BrokenProcessPool becomes one DataError."""
  with pytest.raises(DataError) as error:
    with folder.decode_pool(1, processes=1) as pool:
      pool.submit(os.abort).result()
  message = str(error.value)
  assert "decode worker process died" in message and "decode_processes=0" in message and "fewer processes" in message
  assert "\n" not in message


UNGUARDED = """
import sys

from jaxcls import data
from jaxcls.config.base import get_base_config
from jaxcls.core.errors import DataError

config = get_base_config()
config.dataset.update(dict(name="folder", path=sys.argv[1], image_size=(16, 16), cache="none", decode_processes=2))
dataset = data.build(config, process_index=0, process_count=1)
try:
  next(dataset.train_batches(4, start_step=0, seed=0))
except DataError as e:
  print("ERROR:", e)
finally:
  dataset.close()
"""


def test_a_script_without_a_main_guard_is_told_to_add_one(python, tmp_path):
  """A user's script that starts decoding at import: every spawned worker re-imports it and dies at start-up, and
  the one error line says what to put under `if __name__ == "__main__":`."""
  root = write_images(tmp_path / "images")
  script = tmp_path / "my_run.py"
  script.write_text(UNGUARDED)
  proc = subprocess.run(
    [python, str(script), str(root)], env=subprocess_env(1), cwd=tmp_path, capture_output=True, text=True, timeout=600
  )
  (line,) = [line for line in proc.stdout.splitlines() if line.startswith("ERROR:")]
  assert "decode worker process died" in line and "decode_processes=0" in line
  assert 'if my_run.py starts the run at import, put that under `if __name__ == "__main__":`' in line


def test_a_command_run_with_dash_m_is_not_told_about_main_guards():
  with pytest.raises(DataError) as error:
    with folder.decode_pool(1, processes=1) as pool:
      pool.submit(os.abort).result()
  assert "__main__" not in str(error.value)  # pytest runs as `python -m pytest`: nothing to guard
