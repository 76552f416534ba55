"""Training metrics summed on the device between log points, with the first non-finite step, fetched in one go.

The loop never waits for a step's result between steps: each step adds its scalars (loss, gradient norm, learning
rate, the task's train metrics) into a small replicated accumulator inside the same jitted program, so no extra
dispatch and no host transfer happen per step. At a log, eval, checkpoint or stop point the loop fetches the
accumulator once (`jax.device_get`), which is also the only place a non-finite loss is noticed.

The window records the first step whose loss or gradient norm is non-finite (later ones, which follow from it, are
left out of the sums), and `Window.check` also takes the whole state's finiteness (`steps.make_state_check`), so
the loop stops at the check point after the first bad step and never writes a checkpoint of a state that holds a
NaN or an infinity.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.core import parallel
from jaxcls.core.errors import NonFiniteLossError

BASE_NAMES = ("loss", "grad_norm", "learning_rate")


def metric_names(task, num_outputs: int, label_shape: Sequence[int], label_dtype) -> tuple[str, ...]:
  """The scalar names one train step reports: the base ones and the task's, found by shape alone (no model)."""
  batch = max(int(label_shape[0]), 1) if label_shape else 1
  logits = jax.ShapeDtypeStruct((batch, num_outputs), jnp.float32)
  labels = jax.ShapeDtypeStruct((batch,) + tuple(label_shape[1:]), label_dtype)
  task_names = tuple(jax.eval_shape(task.train_metrics, logits, labels))
  return BASE_NAMES + tuple(n for n in task_names if n not in BASE_NAMES)


def zeros(names: Sequence[str]) -> dict[str, Any]:
  """An empty window, as host values (place it on the devices once with `parallel.replicate`)."""
  return {
    "sum": {name: np.float32(0.0) for name in names},
    "steps": np.int32(0),  # finite steps summed into `sum`
    "bad_step": np.int32(-1),  # the first non-finite step's number (1-based, as logged), -1 = none
    "bad_loss": np.float32(0.0),  # that step's loss and gradient norm, for the error message
    "bad_grad_norm": np.float32(0.0),
  }


def add(acc: dict[str, Any], metrics: dict[str, jax.Array], finite: jax.Array, step_number: jax.Array) -> dict:
  """The window with one more step (traced inside the train step). A non-finite step is recorded, not summed, and
  no step after it is summed."""
  if set(metrics) != set(acc["sum"]):
    raise ValueError(f"The train step's metrics {sorted(metrics)} differ from the accumulator's {sorted(acc['sum'])}.")
  first_bad = (acc["bad_step"] < 0) & ~finite
  finite = finite & (acc["bad_step"] < 0)  # the steps after a bad one follow from it: not summed either
  return {
    "sum": {k: acc["sum"][k] + jnp.where(finite, metrics[k].astype(jnp.float32), 0.0) for k in acc["sum"]},
    "steps": acc["steps"] + finite.astype(jnp.int32),
    "bad_step": jnp.where(first_bad, step_number.astype(jnp.int32), acc["bad_step"]),
    "bad_loss": jnp.where(first_bad, metrics["loss"].astype(jnp.float32), acc["bad_loss"]),
    "bad_grad_norm": jnp.where(first_bad, metrics["grad_norm"].astype(jnp.float32), acc["bad_grad_norm"]),
  }


class Window:
  """The loop's handle on the accumulator: the device value, and what its last fetch said.

  `fetch()` is the one blocking transfer between log points; `means()` and `check()` read the fetched values.
  """

  def __init__(self, names: Sequence[str], mesh, start_step: int):
    self._empty = parallel.replicate(zeros(names), mesh)  # reused at every reset (the step does not donate it)
    self.value = self._empty
    self.first_step = start_step + 1  # the first step number the current window covers
    self._host = None

  def fetch(self) -> dict[str, Any]:
    """The window's sums on the host (one device_get of a few scalars)."""
    self._host = parallel.to_host(self.value)
    return self._host

  def means(self) -> dict[str, float]:
    """Per-step means of the finite steps of the fetched window (empty when none were finite)."""
    host = self._host if self._host is not None else self.fetch()
    count = int(host["steps"])
    return {k: float(v) / count for k, v in host["sum"].items()} if count else {}

  def reset(self, next_step: int) -> None:
    """Starts a new window whose first step is `next_step`."""
    self.value, self._host, self.first_step = self._empty, None, next_step

  def check(self, done: int, last_checkpoint: int | None, ckpt=None, state_finite=None) -> None:
    """Raises NonFiniteLossError when a step of the window up to step `done` was not finite, or when
    `state_finite` (the device boolean of `steps.make_state_check` for the state after step `done`, fetched
    with the window) is false: then the update of a step whose loss was finite overflowed, and step `done` is
    named (an earlier overflow would have made a later loss non-finite).

    A checkpoint written right after the step before holds the very parameters whose loss was non-finite (finite
    numbers can still overflow in the next forward pass): it is moved aside, so that a re-run with a lower learning
    rate resumes from a state whose loss was finite.
    """
    if state_finite is None:
      host = self.fetch()
    else:
      self._host, state_ok = parallel.to_host((self.value, state_finite))  # one transfer for both
      host = self._host
    bad = int(host["bad_step"])
    if bad < 0 and (state_finite is None or bool(state_ok)):
      return
    overflowed = bad < 0
    if overflowed:
      bad = done
    if ckpt is not None and last_checkpoint is not None and last_checkpoint == bad - 1:
      last_checkpoint = ckpt.set_aside_diverged(last_checkpoint, bad)
    kept = (
      f"the last checkpoint (step {last_checkpoint}) is intact"
      if last_checkpoint is not None
      else "no usable checkpoint had been written yet"
    )
    checked = "" if bad == done and not overflowed else f"steps {self.first_step}-{done} checked together; "
    found = (
      "the update overflowed: the loss and gradient were finite"
      if overflowed
      else f"loss={float(host['bad_loss'])}, grad_norm={float(host['bad_grad_norm'])}"
    )
    raise NonFiniteLossError(
      f"The loss, gradient or updated parameters became non-finite at step {bad} ({checked}{found}); training "
      f"stopped and {kept}. Lower optimizer.learning_rate, set optimizer.grad_clip_norm, or check the data for "
      "bad values."
    )
