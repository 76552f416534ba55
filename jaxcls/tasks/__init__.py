"""Task types: each defines the head size, the loss, and the metric sums accumulated during evaluation.

A task is a small frozen dataclass registered by name; `config.task.type` picks it and the other
`config.task.*` keys are its fields.
"""

import dataclasses
from typing import Any, Mapping

from jaxcls.errors import ConfigError
from jaxcls.registry import Registry, did_you_mean

TASKS = Registry("task type")


def build(task_config: Mapping[str, Any], num_classes: int):
  """The task named by `task_config['type']`, configured by the other keys that it declares."""
  cls = TASKS.get(task_config["type"])
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


def check_field(name: str, value: Any, valid: Any) -> None:
  if value not in valid:
    raise ConfigError(f"config.task.{name}={value!r} is not valid.{did_you_mean(str(value), map(str, valid))}"
                      f" Valid: {', '.join(map(str, valid))}.")


from jaxcls.tasks import multiclass  # noqa: E402,F401  (registers the task)
from jaxcls.tasks import binary  # noqa: E402,F401  (registers the task)
from jaxcls.tasks import multilabel  # noqa: E402,F401  (registers the task)
from jaxcls.tasks import hierarchical  # noqa: E402,F401  (registers the task)
