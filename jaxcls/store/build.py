"""The task and model a config describes: one builder for training, evaluation, restore and fine-tuning.

It lives in store/, the lowest layer that sees both tasks/ and models/, so that training (which builds a new
model) and restore (which rebuilds a trained one from config.json) cannot drift apart: the head size comes from
the task in both, and both check the classes the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from jaxcls import data


def build_task_and_model(
  config, info: data.DatasetInfo, *, weighted: bool = True, new_run: bool = True
) -> tuple[Any, Any, dict]:
  """(task, model, resolved task config) for the classes of `info`; the model's head size comes from the task.

  Args:
    config: a run's config (or a workdir's resolved config.json).
    info: the dataset's DatasetInfo (class names, and the training class counts when known).
    weighted: resolve `config.task.class_weights` ('balanced' needs `info.train_class_counts`). False leaves the
      loss unweighted: class weights only shape the loss, so a restored model for evaluation or inference
      without its training data needs none.
    new_run: the config of a run about to train, whose class-imbalance keys are checked (False: a saved run's
      config.json, evaluated as it was trained even if it predates the check).
  """
  from jaxcls import models  # pylint: disable=g-import-not-at-top  (restore.load_config stays cheap)

  if weighted and new_run:
    check_one_imbalance_correction(config)
  task, task_config = _task(config, info, weighted)
  return task, models.build(config.model, task.num_outputs, config.dtype), task_config


def build_task(config, info: data.DatasetInfo, *, weighted: bool = True):
  """The task alone (no model, so no flax): what a command that only reads a model's outputs needs."""
  return _task(config, info, weighted)[0]


def _task(config, info: data.DatasetInfo, weighted: bool):
  from jaxcls import tasks  # pylint: disable=g-import-not-at-top
  from jaxcls.tasks.multiclass import resolve_class_weights  # pylint: disable=g-import-not-at-top

  tasks.check_classes(config.task.type, info.class_names, info.train_class_counts)  # one class: DataError
  task_config = dict(config.task, class_names=info.class_names)
  task_config["class_weights"] = (
    resolve_class_weights(config.task.class_weights, info.train_class_counts, info.num_classes) if weighted else "none"
  )
  return tasks.build(task_config, info.num_classes), task_config


def check_one_imbalance_correction(config) -> None:
  """Refuses balanced class weights on balanced batches: each corrects the class imbalance on its own.

  Together a class of n_k examples is drawn n/(K n_k) times more often and its loss is weighted n/(K n_k) again,
  so rare classes end up over-weighted by the square of the imbalance. Explicit weights stay allowed with balanced
  sampling: they can encode costs, not frequencies.
  """
  from jaxcls.core.errors import ConfigError  # pylint: disable=g-import-not-at-top

  if config.task.get("class_weights") == "balanced" and config.dataset.get("sampling") == "balanced":
    raise ConfigError(
      "config.task.class_weights='balanced' with config.dataset.sampling='balanced' corrects the "
      "class imbalance twice; keep one: --config.task.class_weights=none (balanced batches) or "
      "--config.dataset.sampling=uniform (a balanced loss)."
    )
