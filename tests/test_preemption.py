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
from jaxcls import checkpoint, data, preemption, train

LINE = re.compile(r"^jaxcls: preempted at step (\d+); checkpoint saved to (\S+); re-run the same command to "
                  r"resume\.$", re.M)


def _assert_same_state(workdir_a, workdir_b):
  a, b = saved_state(workdir_a), saved_state(workdir_b)
  assert int(a["step"]) == int(b["step"])
  for name in ("params", "batch_stats", "opt_state", "ema_params"):
    leaves_a, leaves_b = jax.tree.leaves(a.get(name, {})), jax.tree.leaves(b.get(name, {}))
    assert len(leaves_a) == len(leaves_b), name
    for x, y in zip(leaves_a, leaves_b):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)  # bit-identical on CPU


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
