"""Restore a trained model from a workdir without its training data: config, classes, task, model, variables.

Every command that uses a trained model (evaluate, predict, export, explain, few-shot, fine-tuning) starts here.
The resolved `config.json` a run writes holds what the model needs (image size, normalisation, class names), so
the training data need not be present. Only the parameters and batch statistics are read, never the optimizer
state (orbax's partial restore: its bytes are not even read), so a model trained with any optimizer (or a frozen
backbone) restores the same way, at the cost of the model's size.

Importing this module is cheap (no jax, orbax or flax): `load_config` and `parse_step` need none of them, so a
command can read the config and start on its input while `restore` imports what the model needs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import TYPE_CHECKING, Any

import ml_collections

from jaxcls.core import extensions, paths
from jaxcls.core.errors import CheckpointError, ConfigError
from jaxcls.store import build, step_folder
from jaxcls.store import workdir as workdir_lib

if TYPE_CHECKING:
  from jaxcls import data


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run saved, as a ConfigDict (lists where the original had tuples)."""
  config = ml_collections.ConfigDict(workdir_lib.read_config(workdir))  # one-line ConfigError if missing or damaged
  extensions.import_extensions(config)  # the run's own modules (config.imports), before anything is built from it
  return config


def info_from_config(config) -> data.DatasetInfo:
  """The DatasetInfo a trained model needs (no counts of examples), from a resolved config."""
  from jaxcls import data  # pylint: disable=g-import-not-at-top

  names = tuple(config.dataset.class_names or ())
  size = tuple(config.dataset.image_size or ())
  if not names or len(size) != 2 or not config.dataset.mean or not config.dataset.std:
    raise ConfigError(
      "The workdir's config.json lacks the resolved class names, image size or normalisation; "
      "it was not written by `python -m jaxcls.main` (train into a new workdir)."
    )
  channels = len(config.dataset.mean)
  return data.DatasetInfo(
    num_classes=len(names),
    class_names=names,
    image_shape=(size[0], size[1], channels),
    num_train=0,
    num_eval=0,
    mean=tuple(config.dataset.mean),
    std=tuple(config.dataset.std),
  )


@dataclasses.dataclass
class Described:
  """A trained run at one checkpoint step, without its model or weights: what the task and config say (class
  names, decisions, preprocessing). Built without flax, optax or orbax (`describe`)."""

  workdir: str
  step: int
  config: ml_collections.ConfigDict
  info: data.DatasetInfo
  task: Any


@dataclasses.dataclass
class Restored(Described):
  """A trained model ready to apply: `model.apply(variables, images, train=False)` on normalised images."""

  model: Any
  variables: dict  # {'params': ..., 'batch_stats': ...} (batch_stats empty for models without batch norm)


checkpoint_steps = workdir_lib.checkpoint_steps  # the one listing of DIR/checkpoints


StepChoice = int | str | None  # a step, None / -1 / 'latest' for the newest, or 'best'


def parse_step(value: StepChoice, what: str = "--step") -> int | str | None:
  """`--step` / `config.init_from_step` as None (the latest), 'best' or a step >= 0; a ConfigError otherwise.

  The one parser of every command's `--step` flag: an integer, 'latest' (or -1, or empty) or 'best'.
  """
  if value is None or isinstance(value, bool):
    return None if value is None else _bad_step(value, what)
  if isinstance(value, str):
    text = value.strip().lower()
    if text in ("", "latest", "-1"):
      return None
    if text == "best":
      return "best"
    if not re.fullmatch(r"\d+", text):
      _bad_step(value, what)
    return int(text)
  if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
    if int(value) == -1:
      return None
    if int(value) >= 0:
      return int(value)
  return _bad_step(value, what)


def _bad_step(value, what: str):
  raise ConfigError(
    f"{what}={value!r} is not valid; give a checkpoint step (an integer >= 0), 'latest' (or -1) or 'best'."
  )


def best_step(workdir: str, steps: list[int] | None = None) -> int:
  """The checkpoint whose `config.best_metric` is best, by the metric and mode the run was trained with."""
  config = load_config(workdir)
  metric, mode = str(config.get("best_metric", "") or ""), str(config.get("best_mode", "max") or "max")
  folder = workdir_lib.checkpoints_path(workdir)
  if not metric:
    raise CheckpointError(
      f"{folder} has no best checkpoint: the run was trained with config.best_metric='' (no "
      "best is kept); pick a step or 'latest' instead."
    )
  steps = checkpoint_steps(workdir) if steps is None else steps
  best = step_folder.pick_best([(s, step_folder.score(_metrics(folder / str(s)), metric)) for s in steps], mode)
  if best is None:
    raise CheckpointError(
      f"{folder} has no best checkpoint: no checkpoint holds an evaluation of {metric} (steps: "
      f"{', '.join(map(str, steps)) or 'none'}); pick a step or 'latest' instead."
    )
  return best


def _metrics(step_dir) -> dict | None:
  path = step_dir / step_folder.METRICS_ITEM / step_folder.METRICS_ITEM
  try:
    return json.loads(path.read_text()) if path.exists() else None
  except (ValueError, UnicodeDecodeError):
    return None


def resolve_step(workdir: str, step: StepChoice) -> int:
  """`step` ('best', a step, or None / 'latest' for the newest) as a checkpoint step that exists and is intact.

  A CheckpointError names the steps that exist, or what is missing in a damaged step.
  """
  step = parse_step(step)
  available = checkpoint_steps(workdir)
  folder = workdir_lib.checkpoints_path(workdir)
  if not available:
    raise CheckpointError(f"{folder} holds no checkpoint; train first with python -m jaxcls.main.")
  if step is None:
    step = available[-1]
  elif step == "best":
    step = best_step(workdir, available)
  elif step not in available:
    raise CheckpointError(f"No checkpoint at step {step} in {folder}; available: {', '.join(map(str, available))}.")
  problems = step_folder.step_problems(folder / str(step))
  if problems:
    intact = [s for s in available if s != step and not step_folder.step_problems(folder / str(s))]
    hint = f"pass --step {intact[-1]} (the newest intact step)" if intact else "no other step is intact"
    raise CheckpointError(
      f"Checkpoint step {step} in {folder} is damaged ({'; '.join(problems)}); {hint}, or "
      f"re-run training on the workdir, which moves damaged steps aside to "
      f"{workdir_lib.CORRUPT_CHECKPOINTS_NAME}/."
    )
  return step


def read_variables(workdir: str, step: int, *, use_ema: bool = True) -> dict:
  """{'params', 'batch_stats'} of checkpoint `step` as host arrays (the moving average when one was kept).

  Only those items are read (`Checkpointer.read_subtrees`): never the optimizer state, and not the raw params
  when the moving average replaces them, so restoring costs the model's size, not the train state's.
  """
  from jaxcls.store import checkpoint  # pylint: disable=g-import-not-at-top

  ckpt = checkpoint.Checkpointer(workdir, keep=1, async_save=False, fingerprint={})  # reads only; prunes nothing
  try:
    layout = ckpt.state_layout(step)  # a one-line CheckpointError naming the step when its arrays are unreadable
    ema = use_ema and bool(layout.get("ema_params"))
    names = ("ema_params" if ema else "params", "batch_stats")
    state = ckpt.read_subtrees(step, names, layout)
  finally:
    ckpt.close()
  return {"params": state["ema_params" if ema else "params"], "batch_stats": state.get("batch_stats") or {}}


def describe(workdir: str, step: StepChoice = None) -> Described:
  """The config, classes and task of `workdir` at checkpoint `step` (default: latest; 'best': the best by the
  run's `config.best_metric`), the step checked to exist and be intact; neither the model nor its weights."""
  workdir = os.fspath(paths.path(workdir, "workdir"))
  config = load_config(workdir)
  info = info_from_config(config)
  task = build.build_task(config, info, weighted=False)  # class weights shape only the loss
  return Described(workdir=workdir, step=resolve_step(workdir, step), config=config, info=info, task=task)


def complete(described: Described, *, use_ema: bool = True) -> Restored:
  """`described` with its model built and its weights read from the checkpoint."""
  from jaxcls import models  # pylint: disable=g-import-not-at-top  (flax: only where a model is built)

  model = models.build(described.config.model, described.task.num_outputs, described.config.dtype)
  variables = read_variables(described.workdir, described.step, use_ema=use_ema)
  fields = {field.name: getattr(described, field.name) for field in dataclasses.fields(Described)}  # no copies
  return Restored(**fields, model=model, variables=variables)


def restore(workdir: str, step: StepChoice = None, *, use_ema: bool = True) -> Restored:
  """Everything needed to apply the model that `workdir` trained, at checkpoint `step` (default: latest;
  'best': the best by the run's `config.best_metric`)."""
  return complete(describe(workdir, step), use_ema=use_ema)
