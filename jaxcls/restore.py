"""Restore a trained model from a workdir without its training data: config, classes, task, model, variables.

Every command that uses a trained model (evaluate, predict, export, explain, few-shot, fine-tuning) starts here.
The resolved `config.json` a run writes holds what the model needs (image size, normalisation, class names), so
the training data need not be present. Only the parameters and batch statistics are read, never the optimizer
state, so a model trained with any optimizer (or a frozen backbone) restores the same way.
"""

import dataclasses
import os
from typing import Any

import jax
import ml_collections

from jaxcls import checkpoint, data, models, paths, tasks
from jaxcls import workdir as workdir_lib
from jaxcls.errors import CheckpointError, ConfigError


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run saved, as a ConfigDict (lists where the original had tuples)."""
  return ml_collections.ConfigDict(workdir_lib.read_config(workdir))  # one-line ConfigError if missing or damaged


def info_from_config(config) -> data.DatasetInfo:
  """The DatasetInfo a trained model needs (no counts of examples), from a resolved config."""
  names = tuple(config.dataset.class_names or ())
  size = tuple(config.dataset.image_size or ())
  if not names or len(size) != 2 or not config.dataset.mean or not config.dataset.std:
    raise ConfigError("The workdir's config.json lacks the resolved class names, image size or normalisation; "
                      "it was not written by `python -m jaxcls.main` (train into a new workdir).")
  channels = len(config.dataset.mean)
  return data.DatasetInfo(num_classes=len(names), class_names=names, image_shape=(size[0], size[1], channels),
                          num_train=0, num_eval=0, mean=tuple(config.dataset.mean), std=tuple(config.dataset.std))


def build_task_and_model(config, info: data.DatasetInfo):
  """The task the run trained and its model (class weights only shape the loss, so they are left uniform here)."""
  task = tasks.build(dict(config.task, class_names=info.class_names, class_weights="none"), info.num_classes)
  return task, models.build(config.model, task.num_outputs, config.dtype)


@dataclasses.dataclass
class Restored:
  """A trained model ready to apply: `model.apply(variables, images, train=False)` on normalised images."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  info: data.DatasetInfo
  task: Any
  model: Any
  variables: dict  # {'params': ..., 'batch_stats': ...} (batch_stats empty for models without batch norm)


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the finished checkpoints under workdir/checkpoints (local or gs://; orbax's unfinished
  `<step>.orbax-checkpoint-tmp-*` folders are not digits, so they are left out)."""
  return sorted(int(name) for name in _listdir(paths.join(workdir, "checkpoints")) if name.isdigit())


def _listdir(folder) -> list[str]:
  return [child.name for child in folder.iterdir()] if folder.is_dir() else []


def resolve_step(workdir: str, step: int | None) -> int:
  """`step`, or the latest checkpoint's; a CheckpointError names the steps that exist."""
  available = checkpoint_steps(workdir)
  if not available:
    raise CheckpointError(f"{os.path.join(workdir, 'checkpoints')} holds no checkpoint; train first with "
                          "python -m jaxcls.main.")
  if step is None or step < 0:
    return available[-1]
  if step not in available:
    raise CheckpointError(f"No checkpoint at step {step} in {os.path.join(workdir, 'checkpoints')}; available: "
                          f"{', '.join(map(str, available))}.")
  return step


def read_variables(workdir: str, step: int, *, use_ema: bool = True) -> dict:
  """{'params', 'batch_stats'} of checkpoint `step` as host arrays (the moving average when one was kept)."""
  ckpt = checkpoint.Checkpointer(workdir, keep=1_000_000, async_save=False, fingerprint={})
  try:
    state = ckpt.read_state(step)
  finally:
    ckpt.close()
  params = state.get("ema_params") if use_ema and state.get("ema_params") else state["params"]
  return {"params": jax.device_get(params), "batch_stats": jax.device_get(state.get("batch_stats") or {})}


def restore(workdir: str, step: int | None = None, *, use_ema: bool = True) -> Restored:
  """Everything needed to apply the model that `workdir` trained, at checkpoint `step` (default: latest)."""
  workdir = os.fspath(paths.path(workdir, "workdir"))
  config = load_config(workdir)
  info = info_from_config(config)
  task, model = build_task_and_model(config, info)
  step = resolve_step(workdir, step)
  variables = read_variables(workdir, step, use_ema=use_ema)
  return Restored(workdir=workdir, step=step, config=config, info=info, task=task, model=model,
                  variables=variables)
