"""Checkpoints with orbax: save every N steps (async), keep the last N plus the best, resume from the newest intact.

Each checkpoint holds two items: `state` (the TrainState pytree) and `meta` (JSON: the fingerprint of the config
that shaped the state, and the data position), and, when `config.best_metric` is set, orbax's `metrics` item (the
scalars of the evaluation at that step). The fingerprint is compared before the state is restored, so a workdir
reused with another model or class count fails with the differing keys instead of a shape error.

Retention: the newest `keep_checkpoints` steps, plus the step whose `best_metric` is best (`best_mode` 'max' or
'min'; ties go to the later step). An evaluation that beats every kept checkpoint is saved at once, even off the
checkpoint cadence. The metric values live in the checkpoints themselves, so a resumed run knows the best so far.

Damage: a resumed run checks each step's files (cheap structural checks), then restores the newest one; a step
that is incomplete or unreadable is moved aside to `DIR/corrupt_checkpoints/<step>-<time>` (never deleted) with a
warning, and the run resumes from the newest intact step. When no step is intact nothing is moved and a
CheckpointError says what is missing.
"""

import contextlib
import datetime
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jaxcls.core import paths
from jaxcls.core.errors import CheckpointError, ConfigError
from jaxcls.store import workdir as workdir_lib
from jaxcls.store.step_folder import pick_best, read_json, score, step_problems

BEST_MODES = ("max", "min")
CORRUPT_DIR = workdir_lib.CORRUPT_CHECKPOINTS_NAME  # beside DIR/checkpoints: orbax never lists or cleans it
# tensorstore reports a truncated, missing or garbled array file as a ValueError starting with one of these codes
_DAMAGE_CODES = re.compile(r"^\s*(DATA_LOSS|OUT_OF_RANGE|NOT_FOUND|UNKNOWN|INTERNAL|FAILED_PRECONDITION):")


def fingerprint(config, num_classes: int, image_shape) -> dict[str, Any]:
  """The config values that decide the shapes and tree structure of the state."""
  return {
    "model": _plain(config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)),
    "num_classes": int(num_classes),
    "image_shape": [int(d) for d in image_shape],
    "task": str(config.task.type),
    "optimizer": str(config.optimizer.name),
    "ema": bool(config.ema_decay > 0),
  }


def _plain(value):
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in sorted(value.items())}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
  return out


def check_keep(keep) -> int:
  """`keep_checkpoints` as an int >= 1; a ConfigError otherwise (0 would delete even the final checkpoint)."""
  if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
    raise ConfigError(
      f"config.keep_checkpoints={keep!r} is not valid; keep at least the newest checkpoint (an integer >= 1, e.g. 3)."
    )
  return keep


def check_best(metric: str, mode: str) -> None:
  """Refuses a best_metric that names no logged scalar (no '/') or a mode other than max / min, at start-up."""
  if not isinstance(metric, str) or (metric and "/" not in metric):
    raise ConfigError(
      f"config.best_metric={metric!r} is not valid; name a logged evaluation scalar such as "
      "'eval/accuracy' or 'eval/loss', or '' to keep no best checkpoint."
    )
  if mode not in BEST_MODES:
    raise ConfigError(
      f"config.best_mode={mode!r} is not valid; use 'max' (higher is better, e.g. accuracy) or 'min' (e.g. loss)."
    )


class _LastNAndBest:
  """orbax preservation policy: the newest `keep` checkpoints, and the one whose metric is best."""

  def __init__(self, keep: int, metric: str, mode: str):
    self.keep, self.metric, self.mode = keep, metric, mode

  def should_preserve(self, checkpoints, *, context=None) -> list[bool]:
    del context
    steps = [info.step for info in checkpoints]
    kept = set(sorted(steps)[-self.keep :])
    best = pick_best([(info.step, score(info.metrics, self.metric)) for info in checkpoints], self.mode)
    if best is not None:
      kept.add(best)
    return [s in kept for s in steps]


def _is_damage(error: Exception) -> bool:
  """Whether a restore failed because files are missing or damaged (not because the state does not fit)."""
  if isinstance(error, (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError)):
    return True
  if isinstance(error, KeyError):
    return "was not found in the checkpoint" in str(error)
  if isinstance(error, ValueError):
    text = str(error)
    return bool(_DAMAGE_CODES.match(text)) or "Error reading" in text or "Error decoding" in text
  return isinstance(error, OSError)


def _damage_cause(error: BaseException | None) -> Exception | None:
  """The first error in `error`'s chain of causes that `_is_damage` recognises: orbax wraps a damaged chunk's
  tensorstore error (FAILED_PRECONDITION: Error reading ...) in a plain Exception when it reads into jax arrays,
  so the outer error alone does not tell a garbled chunk from a state that does not fit."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, Exception) and _is_damage(error):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def _first_line(error: Exception, limit: int = 240) -> str:
  text = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return text if len(text) <= limit else text[:limit] + "..."


def _drop_closed_loop_callbacks() -> None:
  """Installs (once) a filter for the one message a failed read leaves behind.

  When a damaged array file makes orbax give up, tensorstore's reads still in flight complete later and call back
  into orbax's event loop, which is closed by then: Python reports each as an unraisable RuntimeError('Event loop is
  closed') traceback on stderr, although nothing is wrong any more. Only those are dropped; every other unraisable
  exception goes to the hook that was there before.
  """
  previous = sys.unraisablehook
  if getattr(previous, "jaxcls_filter", False):
    return

  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
      return
    previous(unraisable)

  hook.jaxcls_filter = True
  sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_failed_reads():
  _drop_closed_loop_callbacks()
  yield


class Checkpointer:
  """Owns `workdir/checkpoints`: one orbax CheckpointManager, written collectively by all processes."""

  def __init__(
    self, workdir: str, *, keep: int, async_save: bool, fingerprint: dict, best_metric: str = "", best_mode: str = "max"
  ):
    self.directory = os.fspath(workdir_lib.checkpoints_path(workdir))  # local, or a gs:// URL orbax opens itself
    self.fingerprint = _plain(fingerprint)
    self.keep = check_keep(keep)
    check_best(best_metric, best_mode)
    self.best_metric, self.best_mode = best_metric, best_mode
    self._async = async_save
    self._noted: tuple[int, dict] | None = None  # (step, scalars) of the latest evaluation
    self._best: tuple[int, float] | None = None  # (step, value) of the best kept checkpoint, loaded on first use
    self._best_loaded = False
    self._manager_ = None  # created on first use: a damaged step must be moved aside before orbax lists it

  @property
  def _manager(self) -> ocp.CheckpointManager:
    if self._manager_ is None:
      if self.best_metric:
        metric, mode = self.best_metric, self.best_mode
        worst = -math.inf if mode == "max" else math.inf
        options = ocp.CheckpointManagerOptions(
          create=True,
          enable_async_checkpointing=self._async,
          cleanup_tmp_directories=True,
          best_fn=lambda m: score(m, metric) if score(m, metric) is not None else worst,
          best_mode=mode,
          preservation_policy=_LastNAndBest(self.keep, metric, mode),
        )
      else:
        options = ocp.CheckpointManagerOptions(
          max_to_keep=self.keep, create=True, enable_async_checkpointing=self._async, cleanup_tmp_directories=True
        )
      self._manager_ = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
    return self._manager_

  def latest_step(self) -> int | None:
    """The newest saved step, or None before the first checkpoint."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every kept step, as orbax lists them."""
    return list(self._manager.all_steps())

  # --- the best checkpoint -------------------------------------------------------------------------------------

  def best_step(self) -> int | None:
    """The kept step whose `best_metric` is best (None when the metric is off or no kept step has it)."""
    self._load_best()
    return None if self._best is None else self._best[0]

  def _load_best(self) -> None:
    if self._best_loaded or not self.best_metric:
      return
    scores = [(s, score(self._manager.metrics(s), self.best_metric)) for s in self.all_steps()]
    best = pick_best(scores, self.best_mode)
    self._best = None if best is None else (best, dict(scores)[best])
    self._best_loaded = True

  def note_evaluation(self, step: int, scalars: dict[str, float]) -> None:
    """Records an evaluation's scalars for the checkpoint of `step` (merged with others of the same step)."""
    if self._noted is not None and self._noted[0] == step:
      self._noted[1].update(scalars)
    else:
      self._noted = (int(step), dict(scalars))
    if (
      self.best_metric.startswith("eval/")
      and any(k.startswith("eval/") for k in scalars)
      and self.best_metric not in self._noted[1]
    ):
      names = sorted(k for k in self._noted[1] if k.startswith("eval/"))
      raise ConfigError(
        f"config.best_metric={self.best_metric!r} is not among the evaluation's scalars; use one "
        f"of {', '.join(names)}, or '' to keep no best checkpoint."
      )

  def is_new_best(self, step: int) -> bool:
    """Whether the evaluation noted for `step` beats every kept checkpoint (so `step` must be saved)."""
    if not self.best_metric or self._noted is None or self._noted[0] != step:
      return False
    value = score(self._noted[1], self.best_metric)
    if value is None:
      return False
    self._load_best()
    if self._best is None:
      return True
    return value > self._best[1] if self.best_mode == "max" else value < self._best[1]

  # --- saving and reading --------------------------------------------------------------------------------------

  def save(self, step: int, state: Any, data_position: dict, *, force: bool = False) -> None:
    """Saves state, data position and fingerprint at `step`; with `best_metric`, its noted evaluation too."""
    meta = {"fingerprint": self.fingerprint, "data": data_position, "step": int(step)}
    metrics = None
    if self.best_metric:
      metrics = dict(self._noted[1]) if self._noted is not None and self._noted[0] == step else {}
      self._load_best()
    self._manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=force,
      metrics=metrics,
    )
    if self.best_metric:
      value = score(metrics, self.best_metric)
      if value is not None and (self._best is None or pick_best([self._best, (step, value)], self.best_mode) == step):
        self._best = (int(step), value)

  def _step_dir(self, step: int) -> epath.Path:
    return paths.path(self.directory) / str(step)

  def _damaged(self, step: int, what: str) -> CheckpointError:
    return CheckpointError(
      f"Checkpoint step {step} in {self.directory} is damaged ({what}); use another step, or re-run training "
      f"on the workdir, which moves damaged steps aside to {CORRUPT_DIR}/ and resumes from the newest intact one."
    )

  def _raise_if_unreadable(self, step: int, error: Exception, also: tuple[type[Exception], ...] = ()) -> None:
    """Raises the one-line CheckpointError naming `step` when a read of its arrays failed on missing or damaged
    files (anywhere in `error`'s chain of causes), or with an error of the types `also`; returns otherwise."""
    cause = _damage_cause(error)
    if cause is not None or isinstance(error, also):
      raise self._damaged(step, f"its arrays cannot be read: {_first_line(cause or error)}") from error

  def check_step(self, step: int) -> None:
    """A CheckpointError naming what is missing when checkpoint `step` is incomplete or damaged."""
    problems = step_problems(self._step_dir(step))
    if problems:
      raise self._damaged(step, "; ".join(problems))

  def read_meta(self, step: int) -> dict:
    """The `meta` item of checkpoint `step` (fingerprint, data position); a CheckpointError when damaged."""
    path = self._step_dir(step) / "meta" / "metadata"
    if not path.exists():
      raise self._damaged(step, "meta/metadata is missing")
    meta = read_json(path)
    if not isinstance(meta, dict) or "fingerprint" not in meta:
      raise self._damaged(step, "meta/metadata is not the JSON that jaxcls writes (fingerprint and data position)")
    return meta

  def read_state(self, step: int, sharding=None) -> Any:
    """The saved state as a nested dict of arrays, without a target structure (for inspection and tools).

    Shapes and dtypes come from the checkpoint's own metadata, so any optimizer's state reads back, on any
    device count; every array lands whole on `sharding` (default: this process's first device).
    """
    path = self._step_dir(step)
    if not (path / "state").is_dir():
      raise self._damaged(step, "the state item (state/) is missing")
    reader = _step_reader()
    try:
      with _quiet_failed_reads():
        tree = reader.metadata(path).item_metadata["state"]
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)
        return reader.restore(path, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    except Exception as e:  # pylint: disable=broad-exception-caught
      self._raise_if_unreadable(step, e, also=(ValueError, KeyError))
      raise
    finally:
      reader.close()

  def state_layout(self, step: int) -> dict[str, Any]:
    """The saved state's top-level items ('params', 'opt_state', ...) and their array metadata (shapes, dtypes),
    read from the step's small metadata files only, so a reader can choose what to read before reading it."""
    path = self._step_dir(step)
    if not (path / "state").is_dir():
      raise self._damaged(step, "the state item (state/) is missing")
    reader = _partial_reader()
    try:
      with _quiet_failed_reads():
        return dict(reader.metadata(path).item_metadata["state"])
    except Exception as e:  # pylint: disable=broad-exception-caught
      self._raise_if_unreadable(step, e, also=(ValueError, KeyError, TypeError))
      raise
    finally:
      reader.close()

  def read_subtrees(self, step: int, names: Sequence[str], layout: dict[str, Any] | None = None) -> dict[str, Any]:
    """Only the top-level items `names` of the saved state (e.g. 'params', 'batch_stats'), as numpy arrays.

    A model needs its parameters, not the optimizer state (for AdamW twice the parameters again), so those bytes
    are never read: orbax's partial restore reads the named items' arrays alone. Names the checkpoint lacks are
    left out of the result. `layout` is `state_layout(step)` when the caller already has it. Damaged arrays
    among those read give the same one-line CheckpointError naming the step as `read_state`.
    """
    layout = self.state_layout(step) if layout is None else layout
    target = {name: layout[name] for name in names if name in layout}
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=m.dtype), target)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), target)  # the structure to read
    path = self._step_dir(step)
    reader = _partial_reader()
    try:
      with _quiet_failed_reads():
        args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        return dict(reader.restore(path, args=ocp.args.Composite(state=args))["state"])
    except Exception as e:  # pylint: disable=broad-exception-caught
      self._raise_if_unreadable(step, e, also=(ValueError, KeyError))
      raise
    finally:
      reader.close()

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """The state at `step`, placed as `abstract_state` says, and its meta; CheckpointError on a mismatch."""
    meta = self.read_meta(step)
    diffs = _differences(meta.get("fingerprint", {}), self.fingerprint)
    if diffs:
      raise CheckpointError(
        f"The checkpoint at {self.directory} (step {step}) was written by a different config "
        f"({'; '.join(diffs)}); use a new --workdir, or restore the original settings to resume."
      )
    path = self._step_dir(step)
    if not (path / "state").is_dir():
      raise self._damaged(step, "the state item (state/) is missing")
    reader = _step_reader()  # one step alone: orbax's manager need not list the steps (some may be damaged) yet
    try:
      with _quiet_failed_reads():
        state = reader.restore(path, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]
    except Exception as e:  # pylint: disable=broad-exception-caught
      self._raise_if_unreadable(step, e)
      if isinstance(e, (ValueError, KeyError, TypeError)):
        raise CheckpointError(
          f"The checkpoint at {self.directory} (step {step}) does not fit the configured model and optimizer "
          f"({_first_line(e, 300)}); use a new --workdir."
        ) from e
      raise
    finally:
      reader.close()
    logging.info("Restored step %d from %s", step, self.directory)
    return state, meta

  # --- resuming past damaged steps -----------------------------------------------------------------------------

  def restore_latest(self, abstract_state: Callable[[], Any] | Any) -> tuple[Any, dict] | None:
    """(state, meta) of the newest intact step, or None when the workdir has no checkpoint.

    Damaged steps (see `step_problems`, or a restore that fails on missing or unreadable files) are moved aside
    to DIR/corrupt_checkpoints/ with a warning, but only once an intact step is found: when none is, nothing is
    moved and a CheckpointError lists what is wrong with each step. `abstract_state` may be a callable, called
    only when there is something to restore.
    """
    root = paths.path(self.directory)
    candidates = (
      sorted((int(c.name) for c in root.iterdir() if c.name.isdigit()), reverse=True) if root.is_dir() else []
    )
    if not candidates:
      return None
    damaged = {s: "; ".join(p) for s in candidates if (p := step_problems(root / str(s)))}
    abstract = None
    for step in [s for s in candidates if s not in damaged]:
      if abstract is None:
        abstract = abstract_state() if callable(abstract_state) else abstract_state
      try:
        restored = self.restore(step, abstract)
      except CheckpointError as e:
        cause = _damage_cause(e.__cause__)
        if cause is None:
          raise  # a fingerprint or shape mismatch is not damage: the user must decide
        damaged[step] = f"its arrays cannot be read: {_first_line(cause)}"
        continue
      self._move_aside(damaged)  # an intact step exists: every damaged one goes (orbax must not list them)
      return restored
    if all(not (root / str(s) / "commit_success.txt").exists() for s in damaged):
      # Only saves that never committed (on gs:// orbax writes the step folder in place, so a run killed during
      # its first save leaves one): no checkpoint ever existed, so nothing is lost by starting again.
      self._move_aside(damaged)
      logging.warning(
        "No checkpoint in %s was ever completed (the run was stopped during its first save); "
        "training starts from step 0.",
        self.directory,
      )
      return None
    raise self._nothing_intact(damaged)

  def set_aside_diverged(self, step: int, failed_step: int) -> int | None:
    """Moves checkpoint `step` aside because its parameters gave a non-finite loss at `failed_step`.

    Returns the newest step left (None when none is). The step is finite and readable, so it is kept in
    DIR/corrupt_checkpoints/ for inspection, but a resume must not start from it.
    """
    self.wait()
    if step in self.all_steps():
      self._move_aside({step: f"its parameters gave a non-finite loss at step {failed_step}"})
    return self.latest_step()

  def _nothing_intact(self, damaged: dict[int, str]) -> CheckpointError:
    listed = "; ".join(f"step {s}: {p}" for s, p in sorted(damaged.items(), reverse=True))
    return CheckpointError(
      f"No intact checkpoint is left in {self.directory} ({listed}); nothing was moved or deleted: restore the "
      f"missing files from a copy, move the damaged steps out of {self.directory} to train from scratch, or use "
      "a new --workdir."
    )

  def _move_aside(self, damaged: dict[int, str]) -> None:
    """Moves each damaged step folder to DIR/corrupt_checkpoints/<step>-<UTC time> (process 0; all wait)."""
    if not damaged:
      return
    root = paths.path(self.directory)
    aside = root.parent / CORRUPT_DIR
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      for step, problem in sorted(damaged.items(), reverse=True):
        target = aside / f"{step}-{stamp}"
        n = 1
        while target.exists():
          target, n = aside / f"{step}-{stamp}-{n}", n + 1
        _move_folder(root / str(step), target)
        logging.warning(
          "Checkpoint step %d in %s is damaged (%s); moved it to %s.", step, self.directory, problem, target
        )
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes("jaxcls:checkpoint:move_aside")
    if self._manager_ is not None:  # its list of steps still holds the moved ones
      self._manager_.close()
      self._manager_ = None
    self._best_loaded = False

  def wait(self) -> None:
    """Blocks until pending (asynchronous) saves have finished."""
    if self._manager_ is not None:
      self._manager_.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then closes the checkpoint manager (if one was opened)."""
    if self._manager_ is not None:
      self._manager_.wait_until_finished()
      self._manager_.close()


def _step_reader() -> ocp.Checkpointer:
  """Reads one step folder's items as the manager wrote them (without a manager, so without listing the steps)."""
  return ocp.Checkpointer(
    ocp.CompositeCheckpointHandler(
      state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler(), metrics=ocp.JsonCheckpointHandler()
    )
  )  # known: no warning


def _partial_reader() -> ocp.Checkpointer:
  """Reads some items of one step's state: the state through orbax's PyTree handler (the format StandardSave
  writes), whose restore takes `partial_restore`; the Standard handler's does not."""
  return ocp.Checkpointer(
    ocp.CompositeCheckpointHandler(
      state=ocp.PyTreeCheckpointHandler(), meta=ocp.JsonCheckpointHandler(), metrics=ocp.JsonCheckpointHandler()
    )
  )


def _move_folder(source: epath.Path, target: epath.Path) -> None:
  """A rename on a local disk; on an object store (no rename) a copy of every object, then the source removed."""
  if not paths.is_remote(source):
    os.rename(source, target)
    return
  _copy_tree(source, target)
  source.rmtree()


def _copy_tree(source: epath.Path, target: epath.Path) -> None:
  target.mkdir(parents=True, exist_ok=True)
  for item in source.iterdir():  # one listing per folder (epath refuses '**' on object stores)
    if item.is_dir():
      _copy_tree(item, target / item.name)
    else:
      item.copy(target / item.name)


def abstract_with_shardings(abstract_state: Any, sharding) -> Any:
  """ShapeDtypeStructs carrying the sharding to restore into (replicated state)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_state)
