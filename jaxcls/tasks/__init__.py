"""Task types: each defines the head size, the loss, its outputs and decisions, and its evaluation metrics.

A task is a small frozen dataclass that subclasses `Task` (jaxcls/tasks/base.py, the contract the rest of jaxcls
calls) and is registered by name with `@TASKS.register(name)`; `config.task.type` picks it and the other
`config.task.*` keys are its fields.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from jaxcls.core.errors import ConfigError, DataError
from jaxcls.core.registry import Registry, did_you_mean
from jaxcls.tasks.base import Task

TASKS = Registry("task type")


def build(task_config: Mapping[str, Any], num_classes: int) -> Task:
  """The task named by `task_config['type']`, configured by the other keys that it declares."""
  cls = task_class(task_config["type"])
  fields = {f.name for f in dataclasses.fields(cls)} - {"num_classes"}
  kwargs = {}
  for key, value in task_config.items():
    if key == "type":
      continue
    if key not in fields:
      # Keys of other task types may sit in a shared base config; only this task's own are passed.
      continue
    kwargs[key] = value
  return cls(num_classes=num_classes, **kwargs)


def task_class(task_type: str) -> type[Task]:
  """The registered class of `task_type`; a ConfigError names the known types, or says what a class lacks."""
  cls = TASKS.get(task_type)
  if not (isinstance(cls, type) and issubclass(cls, Task) and dataclasses.is_dataclass(cls)):
    raise ConfigError(
      f"config.task.type={task_type!r} is registered as {cls!r}, which is not a dataclass "
      "subclassing jaxcls.tasks.Task (jaxcls/tasks/base.py); make it one to use it as a task."
    )
  return cls


def check_classes(task_type: str, class_names, train_class_counts=None) -> None:
  """Refuses one-class data for a single-label task; warns about classes with one or no training example.

  One class is refused rather than warned about: its softmax is 1 whatever the image, so the loss is 0 from the
  first step, nothing is learned, accuracy reads 1.0 and ROC-AUC is undefined: a silently meaningless result.
  (Multi-label keeps one label: a sigmoid present/absent detector is a real model.)
  """
  names = [str(n) for n in class_names]
  if task_class(task_type).single_label and len(names) < 2:
    raise DataError(
      f"The dataset has {len(names)} class ({', '.join(repr(n) for n in names) or 'none'}); a "
      f"{task_type} classifier needs at least 2 (with one, every prediction is that class and "
      "nothing is learned): add images of another class, e.g. another class folder."
    )
  if train_class_counts is None:
    return
  from absl import logging  # pylint: disable=g-import-not-at-top

  counts = list(train_class_counts)
  for count, words in (
    (0, "no training example (the model never sees them)"),
    (1, "a single training example (too few to learn from or to split for evaluation)"),
  ):
    few = [names[k] if k < len(names) else str(k) for k, n in enumerate(counts) if n == count]
    if few:
      shown = ", ".join(repr(n) for n in few[:5]) + (f" and {len(few) - 5} more" if len(few) > 5 else "")
      logging.warning("%d class(es) have %s: %s; add images to them.", len(few), words, shown)


def check_field(name: str, value: Any, valid: Any) -> None:
  """A ConfigError for a task field whose value is not one of `valid` (with the closest valid value)."""
  if value not in valid:
    raise ConfigError(
      f"config.task.{name}={value!r} is not valid.{did_you_mean(str(value), map(str, valid))}"
      f" Valid: {', '.join(map(str, valid))}."
    )


# The built-in task types register themselves on import (after TASKS exists, hence at the end).
from jaxcls.tasks import binary, hierarchical, multiclass, multilabel  # noqa: E402,F401,I001
