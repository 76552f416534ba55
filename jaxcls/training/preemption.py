"""Preemption: SIGTERM or SIGINT makes training finish its step, save a checkpoint at that step, and stop.

The training loop asks `Watcher.reached(step)` after every step; when it answers True the loop saves a
checkpoint at that step, waits for it, and raises `Preempted`, which `jaxcls.main` turns into one line
and exit code `EXIT_CODE` (75). Re-running the same command resumes from that checkpoint, exactly.

- One process (no `jax.distributed`): a Python signal handler sets a flag; `reached` reads it (no host or device
  sync). A second signal while stopping is logged and ignored, so the save in progress is never cut short;
  SIGKILL stops at once and leaves the last complete checkpoint intact (orbax commits a step atomically).
- Several processes (`jax.distributed` initialised): every process must stop at the same step. JAX's preemption
  sync manager catches SIGTERM in C++, tells the coordination service, and all processes agree on the step after
  the fastest one's; `reached` is `multihost_utils.reached_preemption_sync_point`, a local mutex-and-compare (the
  agreement runs on a background thread), so no per-step sync is added either. SIGINT is turned into a SIGTERM to
  this process, so Ctrl-C takes the same path. A second signal is ignored by that C++ handler. A notice that came
  before the loop's first check (while data loads or the state restores) is looked up once at the first step and
  agreed on by an all-gather, so a resumed run stops after its first step.

The handlers this module installs are put back when the loop ends (`close`), so `train_and_evaluate` can be
called from tests and notebooks.
"""

import os
import signal
import threading

from absl import logging

# EX_TEMPFAIL (sysexits.h): "temporary failure, try again". launch/slurm.sbatch requeues the job on it.
EXIT_CODE = 75

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"  # where JAX's preemption sync manager posts a notice (coordination KV)


class Preempted(Exception):
  """Training stopped on SIGTERM/SIGINT after saving a checkpoint at `step` (not an error: re-run to resume)."""

  def __init__(self, step: int, directory: str, signal_name: str | None = None):
    self.step, self.directory, self.signal_name = int(step), str(directory), signal_name
    super().__init__(
      f"preempted at step {self.step}; checkpoint saved to {self.directory}; re-run the same command to resume."
    )


def _distributed_client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top

  return distributed.global_state.client


class Watcher:
  """Turns SIGTERM/SIGINT into a stop request the training loop reads after each step."""

  def __init__(self, ckpt=None):
    self.signal_name: str | None = None
    self._previous: dict[int, object] = {}
    self._first_check = True
    self._sync = _distributed_client() is not None
    if self._sync:
      from jax._src import distributed  # pylint: disable=g-import-not-at-top

      if distributed.global_state.preemption_sync_manager is None:
        import jax  # pylint: disable=g-import-not-at-top

        if jax.process_count() > 1:
          logging.warning(
            "The JAX preemption service is off (jax_enable_preemption_service), so SIGTERM stops "
            "this multi-process run without saving; only periodic checkpoints are kept."
          )
          self._sync = None
          return
        self._sync = False  # one process: the flag is enough
    if self._sync and ckpt is not None and hasattr(getattr(ckpt, "_manager", None), "reached_preemption"):
      # orbax's CheckpointManager calls the sync point too, with the checkpoint's step, also from its async
      # finalize thread after the loop has moved on; the sync protocol could then pick a step already passed.
      # Its own use is bookkeeping only (we save with force=True), so this loop is the one caller.
      ckpt._manager.reached_preemption = lambda step: False  # pylint: disable=protected-access
    handler = self._on_sigint_to_sigterm if self._sync else self._on_signal
    installed = SIGNALS[1:] if self._sync else SIGNALS  # SIGTERM stays with JAX's C++ handler
    if threading.current_thread() is not threading.main_thread():
      logging.warning(
        "train_and_evaluate runs outside the main thread, so SIGTERM/SIGINT keep their handlers and "
        "do not save a checkpoint."
      )
      return
    for signum in installed:
      self._previous[signum] = signal.signal(signum, handler)

  def _on_signal(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signal_name is None:
      self.signal_name = name
      logging.warning("%s received: finishing the current step, then saving a checkpoint and stopping.", name)
    else:
      logging.warning(
        "%s received again: already stopping, the checkpoint save goes on (SIGKILL stops at once "
        "and keeps the last complete checkpoint).",
        name,
      )

  def _on_sigint_to_sigterm(self, signum, frame):
    del frame
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name
      logging.warning(
        "%s received: passing it on as SIGTERM, so every process stops at the same step and saves a checkpoint.",
        self.signal_name,
      )
      os.kill(os.getpid(), signal.SIGTERM)

  def reached(self, step: int) -> bool:
    """True when the loop should save at `step` (the step just finished) and stop.

    Every process calls it after every step with the same step, as JAX's sync point requires.
    """
    if not self._sync:
      return self.signal_name is not None
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    stop = multihost_utils.reached_preemption_sync_point(step)
    if self._first_check:
      # A notice that came before this first call was synchronised against a step counter of 0, a step a resumed
      # run never reaches; look for it once, and agree (one tiny all-gather, in the first step's compile wait).
      self._first_check = False
      stop = stop or self._agree(self._notice_posted())
    if stop:
      self.signal_name = self.signal_name or "SIGTERM"
    return stop

  @staticmethod
  def _notice_posted() -> bool:
    try:
      _distributed_client().key_value_try_get(_NOTICE_KEY)
      return True
    except Exception:  # pylint: disable=broad-except  (NOT_FOUND: no notice)
      return False

  @staticmethod
  def _agree(flag: bool) -> bool:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    return bool(np.any(multihost_utils.process_allgather(np.array(flag))))

  def close(self) -> None:
    """Puts back the signal handlers that were there before."""
    for signum, previous in self._previous.items():
      signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    self._previous = {}

  def save_and_raise(self, ckpt, step: int, state, data_position: dict, *, already_saved: bool) -> None:
    """Saves `state` at `step` (unless that step is already saved), waits for it, raises Preempted."""
    if not already_saved:
      ckpt.save(step, state, data_position, force=True)
    ckpt.wait()
    logging.warning("Preemption checkpoint at step %d is complete.", step)
    raise Preempted(step, ckpt.directory, self.signal_name)
