"""predict's start-up: images decode while jax imports, in batches of the requested size that are regrouped to the
device-rounded size, with the same lines as before."""

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest
from conftest import REPO, subprocess_env, write_image_files

from jaxcls.data import preprocess
from jaxcls.inference import predictor as predict
from jaxcls.store import restore


@pytest.fixture
def workdir(digits_workdir) -> str:
  return digits_workdir


def write_files(folder: pathlib.Path, count: int = 13) -> list[str]:
  """`count` grayscale PNGs of varied sizes, with an unreadable file at positions 3 and 9 (errors inside and
  across the regrouped batches)."""
  return write_image_files(folder, count, unreadable=(3, 9))


@pytest.mark.parametrize("requested, size", [(1, 4), (3, 4), (5, 8), (4, 4), (6, 13)])
def test_regrouped_batches_are_the_batches_of_the_larger_size(workdir, tmp_path, requested, size):
  files = write_files(tmp_path / "images")
  prep = preprocess.from_config(restore.load_config(workdir))
  with preprocess.stream(files, prep, requested, workers=2) as small, preprocess.stream(files, prep, size, 2) as big:
    got, want = list(predict.regroup(small, size)), list(big)
  assert len(got) == len(want)
  for (paths, images, errors), (want_paths, want_images, want_errors) in zip(got, want, strict=True):
    assert paths == want_paths and errors == want_errors
    assert images.dtype == np.uint8 and images.shape == want_images.shape
    np.testing.assert_array_equal(images, want_images)


def test_a_batch_size_that_is_not_a_multiple_of_the_devices_prints_the_same_lines(workdir, tmp_path, capsys):
  """On 8 devices --batch_size 5 decodes batches of 5 (before jax says how many devices there are) and predicts
  batches of 8: the lines are those of --batch_size 8 and of predict_files."""
  files = write_files(tmp_path / "images")
  outputs = {}
  for batch_size in (5, 8, 1):
    assert predict.run(workdir, files, top_k=3, batch_size=batch_size) == 0
    outputs[batch_size] = capsys.readouterr().out.splitlines()
  assert outputs[5] == outputs[8] == outputs[1] and len(outputs[8]) == len(files)
  records = predict.predict_files(restore.restore(workdir), files, top_k=3, batch_size=8)
  assert [predict.format_line(r) for r in records] == outputs[8]
  assert [": error: " in line for line in outputs[8]] == [i in (3, 9) for i in range(len(files))]


STARTUP = r"""
import json, os, sys, time

events = []
images = sys.argv[1]
# Opens are written to a file: predict decodes in forked worker processes, whose own copy of `events` is lost
# (CLOCK_MONOTONIC, behind perf_counter, is one clock for all of them).
opens = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def hook(event, args):
  if event == "open" and isinstance(args[0], str) and args[0].startswith(images):
    os.write(opens, f"{time.perf_counter()} {os.getpid()}\n".encode())
  elif event == "import" and args[0] in ("jax", "jax._src.api", "flax", "orbax.checkpoint"):
    events.append(("import", args[0], time.perf_counter()))


sys.addaudithook(hook)
from jaxcls.inference import predictor

assert "jax" not in sys.modules
status = predictor.run(sys.argv[3], sys.argv[4:], top_k=2, batch_size=4, workers=2)
print(json.dumps({"status": status, "events": events, "pid": os.getpid()}), file=sys.stderr)
"""


def test_images_are_decoded_while_jax_is_still_importing(workdir, tmp_path, python):
  """An audit hook records, in a fresh process and its forked decode workers, when predict opens each image file
  and when jax's import gets to jax._src.api (about halfway: after its dtypes and core): the first image is opened
  before that, by a worker process."""
  files = write_files(tmp_path / "images", 40)
  script = tmp_path / "startup.py"
  script.write_text(STARTUP)
  proc = subprocess.run(
    [python, str(script), str(tmp_path / "images"), str(tmp_path / "opens.txt"), workdir, *files],
    capture_output=True,
    text=True,
    env=subprocess_env(),
    cwd=REPO,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert len(proc.stdout.splitlines()) == len(files)
  result = json.loads(proc.stderr.strip().splitlines()[-1])
  events = result["events"]
  opens = [line.split() for line in (tmp_path / "opens.txt").read_text().splitlines()]
  opened = [float(t) for t, _ in opens]
  assert {int(pid) for _, pid in opens} - {result["pid"]}, "decoded in forked worker processes"
  imports = {}
  for kind, name, t in events:
    if kind == "import":
      imports.setdefault(name, t)  # its first import
  assert len(opened) >= len(files) - 2 and {"jax", "jax._src.api"} <= set(imports), events
  assert min(opened) < imports["jax._src.api"], events


def test_ctrl_c_ends_predict_at_once_with_one_line_and_no_worker_left(workdir, tmp_path, python):
  """SIGINT to a real predict, during jax's import and later: exit status 130, one stderr line and no traceback,
  and none of its forked decode workers outlives it (they die with their parent)."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  files = write_image_files(tmp_path / "images", 300)
  interrupted = 0
  for delay in (1.0, 4.0):
    proc = subprocess.Popen(
      [python, "-m", "jaxcls.predict", "--workdir", workdir, "--batch_size", "4", *files],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=subprocess_env(),
      cwd=REPO,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # it finished first: nothing to interrupt
      continue
    assert proc.returncode == 130, err[-3000:]
    interrupted += 1
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
      "jaxcls: predict interrupted (Ctrl-C); the lines printed above are whole, --output is not written."
    )
    assert all(": " in line for line in out.splitlines())  # whole lines only
    time.sleep(1.0)  # a worker's death signal is sent at its parent's exit
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
      try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
          if workdir.encode() in f.read():
            alive.append(pid)
      except OSError:
        pass
    assert not alive, f"decode workers left: {alive}"
  assert interrupted, "predict finished before it could be interrupted"
