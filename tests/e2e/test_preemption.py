"""Preemption: a real SIGTERM/SIGINT makes training finish its step, save it, stop, and resume exactly."""

import os
import re
import signal
import socket
import subprocess
import threading

import jax
import numpy as np
import pytest
from conftest import REPO, logged_losses, saved_state, subprocess_env, tiny_config

from jaxcls import data
from jaxcls.store import checkpoint
from jaxcls.training import loop as train
from jaxcls.training import preemption

LINE = re.compile(
  r"^jaxcls: preempted at step (\d+); checkpoint saved to (\S+); re-run the same command to "
  r"resume\.$",
  re.M,
)


def _assert_same_state(workdir_a, workdir_b, rtol: float = 0.0):
  """Bit-identical by default (one process on CPU); `rtol` for runs whose cross-process sums gloo may reorder."""
  a, b = saved_state(workdir_a), saved_state(workdir_b)
  assert int(a["step"]) == int(b["step"])
  for name in ("params", "batch_stats", "opt_state", "ema_params"):
    leaves_a, leaves_b = jax.tree.leaves(a.get(name, {})), jax.tree.leaves(b.get(name, {}))
    assert len(leaves_a) == len(leaves_b), name
    for x, y in zip(leaves_a, leaves_b):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=0, err_msg=name)


def _steps(workdir):
  ckpt = checkpoint.Checkpointer(str(workdir), keep=10, async_save=False, fingerprint={})
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


# --- the signal flag, in process -------------------------------------------------------------------------------


def test_flag_is_set_by_a_real_sigterm_and_the_previous_handlers_come_back():
  calls = []
  previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
  previous_int = signal.getsignal(signal.SIGINT)
  try:
    mine = signal.getsignal(signal.SIGTERM)
    watcher = preemption.Watcher()
    assert not watcher.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.reached(2) and watcher.signal_name == "SIGTERM"
    os.kill(os.getpid(), signal.SIGINT)  # a second signal while stopping: noted, ignored, no KeyboardInterrupt
    assert watcher.reached(3) and watcher.signal_name == "SIGTERM"
    watcher.close()
    assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is previous_int
    assert calls == []  # the user's handler did not see the signals the watcher took
    os.kill(os.getpid(), signal.SIGTERM)  # after close, the user's own handler runs again
    assert calls == [signal.SIGTERM]
  finally:
    signal.signal(signal.SIGTERM, previous_term)


def test_sigint_sets_the_flag_too():
  watcher = preemption.Watcher()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    assert watcher.reached(1) and watcher.signal_name == "SIGINT"
  finally:
    watcher.close()


def test_outside_the_main_thread_handlers_are_left_alone():
  before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  seen = {}

  def run():
    watcher = preemption.Watcher()
    seen["during"] = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    seen["reached"] = watcher.reached(1)
    watcher.close()

  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert seen["during"] == before and seen["reached"] is False
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# --- the training loop, in process (real signals sent to this process) -------------------------------------------


class SignalDuringEval:
  """A dataset that sends SIGTERM to this process after the first batch of its first evaluation."""

  def __init__(self, dataset):
    self._dataset, self.sent = dataset, False

  def __getattr__(self, name):
    return getattr(self._dataset, name)

  def eval_batches(self, batch_size):
    for i, batch in enumerate(self._dataset.eval_batches(batch_size)):
      yield batch
      if i == 0 and not self.sent:
        self.sent = True
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  report = train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir, report


def test_sigterm_during_evaluation_finishes_it_saves_that_step_and_resumes_exactly(tmp_path, uninterrupted):
  full, full_report = uninterrupted
  config = tiny_config()  # 12 steps, eval every 6, checkpoint every 4
  dataset = SignalDuringEval(data.build(config))
  handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  with pytest.raises(preemption.Preempted) as stopped:
    train.train_and_evaluate(config, str(tmp_path), dataset=dataset)
  assert dataset.sent and stopped.value.step == 6  # the eval at step 6 ran to its end, then step 6 was saved
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
  assert _steps(tmp_path) == [4, 6]  # 6 is off the checkpoint cadence: the preemption save
  assert not (tmp_path / "report.json").exists()

  report = train.train_and_evaluate(tiny_config(), str(tmp_path))  # re-run: resumes at 6
  _assert_same_state(full, tmp_path)
  assert report["accuracy"] == full_report["accuracy"] and report["loss"] == full_report["loss"]
  assert logged_losses(tmp_path) == logged_losses(full)


def test_a_signal_during_the_final_save_lets_it_finish_and_stops_before_the_report(
  tmp_path, uninterrupted, monkeypatch
):
  """After the last step the loop still owns SIGTERM/SIGINT until its checkpoints are closed: a signal while the
  final asynchronous save is written lets it finish and stops with Preempted (exit 75 from main), never abandoning
  it or being ignored; the re-run of the finished workdir trains nothing and writes the report."""
  full, full_report = uninterrupted
  original_close, seen = checkpoint.Checkpointer.close, {}

  def signal_then_close(self):
    if not seen:
      seen["in_progress"] = self._manager.is_saving_in_progress()  # pylint: disable=protected-access
      os.kill(os.getpid(), signal.SIGTERM)
    original_close(self)

  outside = []

  def mine(signum, frame):  # what the loop must put back
    del signum, frame
    outside.append(True)

  previous = signal.signal(signal.SIGTERM, mine)
  try:
    monkeypatch.setattr(checkpoint.Checkpointer, "close", signal_then_close)
    with pytest.raises(preemption.Preempted) as stopped:
      train.train_and_evaluate(tiny_config(async_checkpointing=True), str(tmp_path))
    monkeypatch.undo()
    assert seen["in_progress"], "the final save had finished before the signal: the test tested nothing"
    assert not outside and signal.getsignal(signal.SIGTERM) is mine  # the loop took the signal, then put it back
    assert stopped.value.step == 12 and stopped.value.signal_name == "SIGTERM"
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert max(_steps(tmp_path)) == 12 and not (tmp_path / "report.json").exists()
  _assert_same_state(full, tmp_path)  # the final save is complete

  report = train.train_and_evaluate(tiny_config(async_checkpointing=True), str(tmp_path))
  assert report["accuracy"] == full_report["accuracy"] and (tmp_path / "report.json").exists()


def test_sigterm_during_an_async_save_keeps_it_intact_and_resumes_exactly(tmp_path, uninterrupted, monkeypatch):
  full, full_report = uninterrupted
  original_save, seen = checkpoint.Checkpointer.save, {}

  def save_then_signal(self, step, *args, **kwargs):
    original_save(self, step, *args, **kwargs)
    if step == 4 and not seen:
      seen["in_progress"] = self._manager.is_saving_in_progress()  # pylint: disable=protected-access
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_signal)
  with pytest.raises(preemption.Preempted) as stopped:
    train.train_and_evaluate(tiny_config(async_checkpointing=True), str(tmp_path))
  assert seen["in_progress"], "the signal came after the async save had finished: the test tested nothing"
  assert stopped.value.step == 4 and _steps(tmp_path) == [4]
  monkeypatch.undo()

  report = train.train_and_evaluate(tiny_config(async_checkpointing=True), str(tmp_path))
  _assert_same_state(full, tmp_path)
  assert report["accuracy"] == full_report["accuracy"]
  assert logged_losses(tmp_path) == logged_losses(full)


# --- the command line, in subprocesses: a real SIGTERM from outside ----------------------------------------------

MAIN = [
  "-m",
  "jaxcls.main",
  "--config",
  os.path.join(REPO, "configs", "default.py"),
  "--config.num_train_steps=60",
  "--config.eval_every_steps=30",
  "--config.checkpoint_every_steps=30",
  "--config.log_every_steps=1",
  "--config.model.widths=(8, 16)",
  "--config.async_checkpointing=True",
  "--config.optimizer.warmup_steps=5",
]
FIRST_STEP = "First step (compilation included)"


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(python, workdir, devices, extra=(), log=None):
  """The training command; its log goes to a pipe, or to the file `log` (a peer's undrained pipe would fill up
  and stall the collective steps of both)."""
  out = open(log, "w") if log else subprocess.PIPE  # pylint: disable=consider-using-with
  return subprocess.Popen(
    [python, *MAIN, "--workdir", str(workdir), *extra],
    env=subprocess_env(devices),
    cwd=REPO,
    stdout=out,
    stderr=out,
    text=True,
  )


def _signal_after_first_step(proc, signum=signal.SIGTERM, when=FIRST_STEP):
  """Reads the child's log until it logs `when` (default: its first step is done), sends `signum`, returns all of
  its log."""
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if when in line:
      proc.send_signal(signum)
      break
  _, rest = proc.communicate(timeout=300)
  return "".join(lines) + rest


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, python):
  """The same run never interrupted: 1 process, 4 devices."""
  workdir = tmp_path_factory.mktemp("cli_full")
  proc = subprocess.run(
    [python, *MAIN, "--workdir", str(workdir)],
    env=subprocess_env(4),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.fixture(scope="module")
def python():
  import sys  # pylint: disable=g-import-not-at-top

  return sys.executable


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_one_process_run_stops_on_a_signal_with_one_line_and_resumes_exactly(python, tmp_path, full_run, signum):
  proc = _start(python, tmp_path, 4)
  err = _signal_after_first_step(proc, signum)
  assert proc.returncode == preemption.EXIT_CODE == 75, err[-3000:]
  assert "Traceback" not in err
  lines = LINE.findall(err)
  assert len(lines) == 1, err[-3000:]
  step = int(lines[0][0])
  assert 1 <= step < 60 and lines[0][1] == str(tmp_path / "checkpoints")
  assert step in _steps(tmp_path) and not (tmp_path / "report.json").exists()

  proc = subprocess.run(
    [python, *MAIN, "--workdir", str(tmp_path)],
    env=subprocess_env(4),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Resuming from step {step} of 60" in proc.stderr
  _assert_same_state(full_run, tmp_path)
  assert logged_losses(tmp_path) == logged_losses(full_run)


@pytest.mark.slow
def test_a_signal_to_one_process_of_two_stops_both_at_one_step_and_resumes_exactly(python, tmp_path, full_run):
  def start_pair(name):
    port = _free_port()
    return [
      _start(
        python,
        tmp_path,
        2,
        [
          f"--coordinator_address=localhost:{port}",
          "--num_processes=2",
          f"--process_id={i}",
          "--distributed_timeout=60",
        ],
        log=None if i == 1 else tmp_path / f"{name}0.log",
      )
      for i in range(2)
    ]

  procs = start_pair("preempted")
  err1 = _signal_after_first_step(procs[1], signal.SIGINT)  # Ctrl-C to process 1 only: passed on as SIGTERM
  procs[0].wait(timeout=300)
  err0 = (tmp_path / "preempted0.log").read_text()
  for p, err in zip(procs, (err0, err1)):
    assert p.returncode == 75, err[-3000:]
    assert "Traceback" not in err
  lines = LINE.findall(err0)
  assert len(lines) == 1 and not LINE.search(err1), (err0[-2000:], err1[-2000:])  # process 0 says it, once
  step = int(lines[0][0])
  assert 1 <= step < 60 and step in _steps(tmp_path) and max(_steps(tmp_path)) == step

  # Preempted again before the resumed run's first step (while it restores and compiles): the notice predates the
  # loop's first sync-point check, and both processes still stop together, after one step.
  procs = start_pair("again")
  err1 = _signal_after_first_step(procs[1], when=f"Resuming from step {step} of 60")
  procs[0].wait(timeout=300)
  err0 = (tmp_path / "again0.log").read_text()
  assert procs[0].returncode == procs[1].returncode == 75, (err0[-2000:], err1[-2000:])
  again = int(LINE.findall(err0)[0][0])
  assert step < again <= step + 3 and max(_steps(tmp_path)) == again
  step = again

  procs = start_pair("resumed")
  err1 = procs[1].communicate(timeout=600)[1]
  procs[0].wait(timeout=300)
  for p, err in zip(procs, ((tmp_path / "resumed0.log").read_text(), err1)):
    assert p.returncode == 0, err[-3000:]
  assert f"Resuming from step {step} of 60" in err1 + (tmp_path / "resumed0.log").read_text()
  # The same 2-process run never interrupted: bit for bit equal. (1 process x 4 devices differs from 2 x 2 in the
  # last bit: the cross-process all-reduce adds in another order.)
  resumed, tmp_path = tmp_path, tmp_path.parent / f"{tmp_path.name}_uninterrupted"  # start_pair's workdir now
  tmp_path.mkdir()
  procs = start_pair("full")
  err1 = procs[1].communicate(timeout=600)[1]
  procs[0].wait(timeout=300)
  assert procs[0].returncode == procs[1].returncode == 0, err1[-3000:]
  # Two processes: gloo may add the cross-process sums in another order from run to run (seen: 3.7e-8 apart).
  _assert_same_state(tmp_path, resumed, rtol=1e-5)
  a, b = saved_state(full_run), saved_state(resumed)
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ctrl_c_before_the_loop_is_one_line_and_exit_130(python, tmp_path):
  """Before the loop the handlers are not installed yet: Ctrl-C is a KeyboardInterrupt, which main reports."""
  proc = _start(python, tmp_path, 2, [f"--config.compilation_cache_dir={tmp_path / 'cache'}"])
  err = _signal_after_first_step(proc, signal.SIGINT, when="Persistent compilation cache:")
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err
  assert err.strip().splitlines()[-1] == (
    "jaxcls: error: interrupted before training started or after it ended; the checkpoints written so far are kept."
  )
