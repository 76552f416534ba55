"""The progress display: a bar on a terminal (a real pty), steady plain lines elsewhere, the ETA on a fake clock."""

import errno
import logging
import os
import pty
import re
import subprocess
import tty

import pytest
from conftest import REPO, subprocess_env

from jaxcls.training import progress as progress_lib
from jaxcls.training import writers


class Clock:
  """A clock the test moves by hand: no sleeps."""

  def __init__(self, t=1000.0):
    self.t = t

  def __call__(self):
    return self.t


def _plain(num_steps, **kwargs):
  clock = Clock()
  shown = progress_lib.Progress(num_steps, interactive=False, clock=clock, **kwargs)
  return shown, clock


def test_eta_is_the_remaining_steps_at_the_mean_rate():
  shown, clock = _plain(1000, batch_size=32, steps_per_epoch=100)
  shown(1)  # the first step (compilation) only starts the clock
  for step in range(2, 102):
    clock.t += 0.02  # 50 steps/s
    shown(step)
  assert shown.eta(101, clock.t) == pytest.approx(899 / 50)
  line = shown.line(101, clock.t)
  assert line == ("Progress: step 101/1000 (10.1%), epoch 2/10, 1,600 img/s, 0m02s elapsed, ETA 0m18s")


def test_eta_is_right_with_eval_pauses_in_the_run():
  """A run at 10 steps/s with a 5 s evaluation every 100 steps: the ETA at any step, the pauses counted, equals
  the time that is really left (after the first pause, when its cost has been seen)."""
  shown, clock = _plain(1000)
  times = {1: clock.t}
  shown(1)
  for step in range(2, 1001):
    clock.t += 0.1
    if (step - 1) % 100 == 0:
      clock.t += 5.0  # the evaluation after the previous step
    times[step] = clock.t
    shown(step, t=clock.t)
  for step in (251, 551, 751):
    assert shown.eta(step, times[step]) == pytest.approx(times[1000] - times[step], rel=0.05)


def test_plain_lines_come_on_a_steady_grid_the_first_within_10s(caplog):
  caplog.set_level(logging.INFO)
  shown, clock = _plain(400, batch_size=8)
  start = clock.t
  reported = []
  shown(1)
  for step in range(2, 401):
    clock.t += 0.25  # 4 steps/s: 100 s in all
    if step == 200:
      clock.t += 7.0  # an evaluation pause does not move the later lines off their grid
    if shown(step):
      reported.append(clock.t - start)
  assert reported[0] <= 10
  # 55 s falls in the pause: that line comes with the first step after it, and the next one at 65 s again
  assert [round(t) for t in reported] == [5, 15, 25, 35, 45, 57, 65, 75, 85, 95, 105]
  shown.note(400, {"train/loss": 0.25})  # the last step's line waits for the loss logged at that step
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Progress:")]
  assert lines == shown.lines and len(lines) == len(reported) + 1
  assert lines[-1] == "Progress: step 400/400 (100.0%), loss 0.25, 32 img/s, 1m47s elapsed, ETA 0m00s"
  shown.close()
  assert len(shown.lines) == len(lines)


def test_the_last_line_comes_at_close_without_a_loss():
  shown, clock = _plain(3)
  for step in (1, 2, 3):
    clock.t += 1.0
    shown(step)
  assert not shown.lines
  shown.close()
  assert shown.lines == ["Progress: step 3/3 (100.0%), 1.0 steps/s, 0m02s elapsed, ETA 0m00s"]


def test_the_loss_the_loop_logs_reaches_the_line(tmp_path):
  clock = Clock()
  with writers.create_writer(str(tmp_path), is_main=True, names=("jsonl",)) as writer:
    shown = writers.create_progress(
      100, writer, is_main=True, batch_size=4, steps_per_epoch=25, interactive=False, clock=clock
    )
    shown(1)
    clock.t += 6.0
    writer.write_scalars(10, {"train/loss": 0.3125, "train/accuracy": 0.5})
    assert shown(10)
    assert shown.lines[-1].startswith("Progress: step 10/100 (10.0%), epoch 1/4, loss 0.3125, 6 img/s")


def _read_all(fd):
  out = b""
  while True:
    try:
      chunk = os.read(fd, 65536)
    except OSError as e:  # EIO: the other end closed; EAGAIN: nothing more for now
      if e.errno in (errno.EIO, errno.EAGAIN):
        return out
      raise
    if not chunk:
      return out
    out += chunk


def test_a_terminal_gets_a_live_bar():
  master, slave = pty.openpty()
  tty.setraw(slave)  # no line discipline: a bar redrawn with \r is one endless "line" to a cooked tty
  os.set_blocking(master, False)
  stream = os.fdopen(slave, "w")
  clock = Clock()
  try:
    shown = progress_lib.Progress(200, batch_size=16, steps_per_epoch=50, stream=stream, clock=clock)
    assert shown.interactive
    shown(1)
    shown.note(1, {"train/loss": 1.25})
    drawn = 0
    for step in range(2, 201):
      clock.t += 0.01  # 100 steps/s: the bar is drawn at most every 0.1 s
      drawn += shown(step)
    stream.flush()
    text = _read_all(master).decode("utf-8", "replace")
  finally:
    stream.close()
    os.close(master)
  assert 19 <= drawn <= 21
  frames = [f for f in re.split(r"[\r\n]", text) if "step" in f]
  assert "100%|" in frames[-1] and "step 200/200" in frames[-1] and "epoch 4/4" in frames[-1]
  assert "loss 1.25" in frames[-1] and "1,600 img/s" in frames[-1]
  middle = next(f for f in frames if int(re.search(r"step (\d+)/", f).group(1)) >= 100)
  step = int(re.search(r"step (\d+)/", middle).group(1))
  assert 100 <= step <= 111 and f"{100 * step / 200:3.0f}%|" in middle
  assert "ETA 0m01s" in middle  # about 100 steps left at 100 steps/s


def test_a_pipe_is_not_a_terminal(tmp_path):
  with open(tmp_path / "out.txt", "w") as f:
    assert not progress_lib.Progress(10, stream=f).interactive


def test_non_main_progress_shows_nothing():
  shown = writers.create_progress(10, writers.Writer(), is_main=False)
  assert not any(shown(step) for step in range(1, 11))


ABSL = re.compile(r"^[IWEF]\d{4} (\d\d):(\d\d):(\d\d\.\d+) +\d+ [\w.]+:\d+\] (.*)$")


def test_the_default_run_reads_well_in_a_log_file(python, tmp_path):
  """configs/default.py from the command line, its stderr a file (not a terminal), read as a user would."""
  result = subprocess.run(
    [
      python,
      "-m",
      "jaxcls.main",
      "--config",
      "configs/default.py",
      "--workdir",
      str(tmp_path / "run"),
      "--config.num_train_steps=400",
    ],
    cwd=REPO,
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stderr.splitlines()
  assert all(len(line) <= 200 for line in lines), max(lines, key=len)
  assert "muon" not in result.stderr and "orbax" not in result.stderr.lower()
  start = next(i for i, line in enumerate(lines) if "Hyper-parameters" in line)
  end = next(i for i in range(start + 1, len(lines)) if ABSL.match(lines[i]))  # the next log record
  assert end - start <= 10 and any(line.startswith("  optimizer: adamw (") for line in lines[start:end])
  evals = [ABSL.match(line).group(4) for line in lines if "] [" in line and " eval: " in line]
  assert evals and all("accuracy=" in e for e in evals)

  def secs(line):
    h, m, s = ABSL.match(line).groups()[:3]
    return int(h) * 3600 + int(m) * 60 + float(s)

  first_step = secs(next(line for line in lines if "First step" in line))
  shown = [line for line in lines if "Progress: step" in line]
  assert secs(shown[0]) - first_step <= 10
  assert re.search(r"Progress: step 400/400 \(100\.0%\), epoch (\d+)/\1, loss [\d.]+, [\d,]+ img/s, ", shown[-1])


def test_the_default_run_on_a_terminal_shows_a_bar(python, tmp_path):
  """configs/default.py with stderr on a pty of unknown size (as under `script`): the bar is drawn, with log
  lines on their own lines between its frames, and its last frame at 100%."""
  master, slave = pty.openpty()
  tty.setraw(slave)
  process = subprocess.Popen(
    [
      python,
      "-m",
      "jaxcls.main",
      "--config",
      "configs/default.py",
      "--workdir",
      str(tmp_path / "run"),
      "--config.num_train_steps=150",
    ],
    cwd=REPO,
    env=subprocess_env(1),
    stdout=subprocess.DEVNULL,
    stderr=slave,
  )
  os.close(slave)
  out = b""
  while True:  # read as it comes, so the pty never fills
    try:
      chunk = os.read(master, 65536)
    except OSError:  # EIO: the process closed its end
      break
    if not chunk:
      break
    out += chunk
  os.close(master)
  assert process.wait(timeout=600) == 0, out.decode("utf-8", "replace")[-3000:]
  text = out.decode("utf-8", "replace")
  frames = [f for f in re.split(r"[\r\n]", text) if "%|" in f]
  assert len(frames) >= 3, text[-3000:]
  later = [f for f in frames if not re.search(r"step 1/", f)]  # step 1 only starts the clock: no rate yet
  assert later and all("img/s" in f and "ETA" in f and "epoch" in f for f in later), frames
  assert "100%|" in frames[-1] and "step 150/150" in frames[-1]
  lines = [line for line in re.split(r"[\r\n]", text) if " eval: " in line]
  glued = [line for line in lines if not line.startswith("I") or "%|" in line]
  assert lines and not glued, glued  # a log line never shares a line with a frame
