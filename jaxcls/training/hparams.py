"""The hyper-parameters that apply to a run, as a short summary for the log and flat params for trackers.

The resolved config (config.json, TensorBoard's HParams tab) holds every key, including the many that a run
never reads (`muon_*` in an AdamW run, focal-loss keys in a multiclass run). A person reading the log, or
comparing runs in MLflow or W&B, needs only those that change what was trained: `applicable` picks them and
`summary` lays them out in at most 10 lines.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

# The optimizer keys each optimizer reads (config/base.py says which); muon adds its fallback's keys.
OPTIMIZER_KEYS = {
  "sgd": ("learning_rate", "momentum", "nesterov", "weight_decay"),
  "adamw": ("learning_rate", "b1", "b2", "eps", "weight_decay"),
  "muon": (
    "learning_rate",
    "muon_momentum",
    "muon_ns_steps",
    "nesterov",
    "muon_normalize_weights",
    "muon_fallback",
    "muon_fallback_learning_rate",
    "weight_decay",
  ),
}
SCHEDULE_KEYS = {
  "cosine": ("warmup_steps", "end_learning_rate_factor"),
  "linear": ("warmup_steps", "end_learning_rate_factor"),
  "step": ("warmup_steps", "step_boundaries", "step_factor"),
  "constant": ("warmup_steps",),
}
# Dataset keys shown when they hold a value (the source's name is always shown).
DATA_KEYS = ("path", "tfds_name", "labels_file", "image_size", "sampling", "class_depth")
# Keys outside the sections, shown when they differ from the value that means "off".
RUN_KEYS = {
  "batch_size": None,
  "num_train_steps": None,
  "num_epochs": None,
  "dtype": None,
  "seed": None,
  "augment": "",
  "ema_decay": 0.0,
  "eval_tta": "none",
  "init_from": "",
}
MAX_LINES = 10


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
  """{'a.b': value} from a ConfigDict, a nested mapping or an already flat mapping."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  flat = {}
  for key, value in config.items():
    if hasattr(value, "to_dict") or isinstance(value, Mapping):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _task_keys(task_type: str, values: Mapping[str, Any]) -> list[str]:
  """The `task.*` keys the task type reads: its dataclass fields (docs/architecture.md), narrowed for the
  multilabel losses, whose gammas apply only to their own loss."""
  from jaxcls import tasks  # pylint: disable=g-import-not-at-top

  try:
    names = [f.name for f in dataclasses.fields(tasks.task_class(task_type)) if f.name != "num_classes"]
  except Exception:  # an unknown or non-dataclass task: every key it was given
    names = [k for k in values if k != "type"]
  loss = values.get("loss_type")
  if loss != "focal":
    names = [n for n in names if n != "focal_gamma"]
  if loss != "asymmetric":
    names = [n for n in names if not n.startswith("asl_")]
  if "class_names" in names:
    names.remove("class_names")  # the class list is in classes.json, not a hyper-parameter
  return names


def applicable(config: Any) -> dict[str, Any]:
  """The keys that apply to this run, flat ('optimizer.learning_rate': 0.1), in the order the summary shows them:
  model, data, task, optimizer, schedule, then the run's own keys (batch size, length, dtype, ...)."""
  flat = _flat(config)
  out: dict[str, Any] = {}

  def take(key: str) -> None:
    if key in flat:
      out[key] = flat[key]

  for key in flat:
    if key.startswith("model."):
      take(key)
  take("dataset.name")
  for key in DATA_KEYS:
    value = flat.get(f"dataset.{key}")
    if (
      value not in (None, "", ())
      and not (key == "sampling" and value == "uniform")
      and not (key == "class_depth" and value == 1)
    ):
      take(f"dataset.{key}")
  task = {k[len("task.") :]: v for k, v in flat.items() if k.startswith("task.")}
  take("task.type")
  for key in _task_keys(str(task.get("type", "multiclass")), task):
    take(f"task.{key}")
  name = flat.get("optimizer.name", "sgd")
  take("optimizer.name")
  keys = list(OPTIMIZER_KEYS.get(name, ()))
  if name == "muon":
    keys += list(OPTIMIZER_KEYS["adamw" if flat.get("optimizer.muon_fallback", "adamw") == "adamw" else "sgd"])
  for key in dict.fromkeys(keys):
    take(f"optimizer.{key}")
  if flat.get("optimizer.grad_clip_norm", 0.0):
    take("optimizer.grad_clip_norm")
  if flat.get("optimizer.backbone_lr_factor", 1.0) != 1.0:
    take("optimizer.backbone_lr_factor")
  schedule = flat.get("optimizer.schedule", "cosine")
  take("optimizer.schedule")
  for key in SCHEDULE_KEYS.get(schedule, ()):
    take(f"optimizer.{key}")
  for key, off in RUN_KEYS.items():
    if key in flat and (off is None or flat[key] != off):
      out[key] = flat[key]
  if flat.get("num_train_steps", -1) and flat.get("num_train_steps", -1) > 0:
    out.pop("num_epochs", None)  # the step count wins (config/base.py)
  return out


def _short(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, (list, tuple)):
    return "(" + ", ".join(_short(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


MAX_LINE = 130  # characters of one summary line (a per-class weight tuple is cut, config.json has it whole)


def _cut(line: str) -> str:
  return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


def _section(title: str, head: Any, rest: Mapping[str, Any]) -> str:
  """'optimizer: adamw (learning_rate=0.001, b1=0.9, ...)'."""
  args = ", ".join(f"{k}={_short(v)}" for k, v in rest.items())
  return _cut(f"  {title}: {head}" + (f" ({args})" if args else ""))


def summary(config: Any, where: str = "config.json") -> str:
  """At most 10 lines: the model, data, task, optimizer, schedule and run keys that apply (see `applicable`)."""
  keys = applicable(config)

  def part(prefix: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in keys.items() if k.startswith(prefix) and k[len(prefix) :] not in exclude}

  model = part("model.")
  data = part("dataset.")
  task = part("task.")
  schedule_keys = {"schedule", *(k for ks in SCHEDULE_KEYS.values() for k in ks)}
  optimizer = {k: v for k, v in part("optimizer.").items() if k not in schedule_keys}
  schedule = {k: v for k, v in part("optimizer.").items() if k in schedule_keys}
  run = {k: v for k, v in keys.items() if "." not in k}
  lines = [
    f"Hyper-parameters (every key: {where}):",
    _section("model", model.pop("name", "?"), model),
    _section("data", data.pop("name", "?"), data),
    _section("task", task.pop("type", "?"), task),
    _section("optimizer", optimizer.pop("name", "?"), optimizer),
    _section("schedule", schedule.pop("schedule", "?"), schedule),
    _cut("  run: " + ", ".join(f"{k}={_short(v)}" for k, v in run.items())),
  ]
  return "\n".join(lines[:MAX_LINES])
