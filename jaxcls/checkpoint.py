"""Checkpoints with orbax: save every N steps (async, keep the last N), resume from the latest, refuse a mismatch.

Each checkpoint holds two items: `state` (the TrainState pytree) and `meta` (JSON: the fingerprint of the config
that shaped the state, and the data position). The fingerprint is compared before the state is restored, so a
workdir reused with another model or class count fails with the differing keys instead of a shape error.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from jaxcls.errors import CheckpointError


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


class Checkpointer:
  """Owns `workdir/checkpoints`: one orbax CheckpointManager, written collectively by all processes."""

  def __init__(self, workdir: str, *, keep: int, async_save: bool, fingerprint: dict):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.fingerprint = _plain(fingerprint)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_position: dict, *, force: bool = False) -> None:
    meta = {"fingerprint": self.fingerprint, "data": data_position, "step": int(step)}
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)), force=force)

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def read_state(self, step: int, sharding=None) -> Any:
    """The saved state as a nested dict of arrays, without a target structure (for inspection and tools).

    Shapes and dtypes come from the checkpoint's own metadata, so any optimizer's state reads back, on any
    device count; every array lands whole on `sharding` (default: this process's first device).
    """
    path = os.path.join(self.directory, str(step), "state")
    reader = ocp.StandardCheckpointer()
    try:
      tree = reader.metadata(path).item_metadata
      sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)
      return reader.restore(path, target)
    except (FileNotFoundError, ValueError, KeyError) as e:
      raise CheckpointError(f"Cannot read the checkpoint at {path} ({str(e).splitlines()[0][:300]}).") from e
    finally:
      reader.close()

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """The state at `step`, placed as `abstract_state` says, and its meta; CheckpointError on a mismatch."""
    meta = self.read_meta(step)
    diffs = _differences(meta.get("fingerprint", {}), self.fingerprint)
    if diffs:
      raise CheckpointError(
          f"The checkpoint at {self.directory} (step {step}) was written by a different config "
          f"({'; '.join(diffs)}); use a new --workdir, or restore the original settings to resume.")
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
          f"The checkpoint at {self.directory} (step {step}) does not fit the configured model and optimizer "
          f"({str(e).splitlines()[0][:300]}); use a new --workdir.") from e
    logging.info("Restored step %d from %s", step, self.directory)
    return restored["state"], meta

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(abstract_state: Any, sharding) -> Any:
  """ShapeDtypeStructs carrying the sharding to restore into (replicated state)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_state)
