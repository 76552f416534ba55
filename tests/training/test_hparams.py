"""The hyper-parameters that apply: what the log summary and the trackers' params hold."""

import pytest
from conftest import tiny_config

from jaxcls.training import hparams


@pytest.mark.parametrize(
  "name, present, absent",
  [
    ("sgd", {"optimizer.momentum", "optimizer.nesterov"}, {"optimizer.b1", "optimizer.muon_momentum"}),
    ("adamw", {"optimizer.b1", "optimizer.b2", "optimizer.eps"}, {"optimizer.momentum", "optimizer.muon_ns_steps"}),
    (
      "muon",
      {"optimizer.muon_momentum", "optimizer.muon_ns_steps", "optimizer.muon_fallback", "optimizer.b1"},
      {"optimizer.momentum"},
    ),
  ],
)
def test_each_optimizer_brings_only_its_own_keys(name, present, absent):
  keys = hparams.applicable(tiny_config(**{"optimizer.name": name}))
  assert present <= set(keys) and not absent & set(keys)


def test_schedule_task_and_run_keys_that_apply():
  config = tiny_config(**{"optimizer.schedule": "step", "task.type": "multilabel", "task.loss_type": "focal"})
  keys = hparams.applicable(config)
  assert {"optimizer.step_boundaries", "optimizer.step_factor", "task.focal_gamma", "task.thresholds"} <= set(keys)
  assert not {"optimizer.end_learning_rate_factor", "task.asl_clip", "task.label_smoothing"} & set(keys)
  assert "num_epochs" not in keys and keys["num_train_steps"] == 12  # the step count wins
  assert "ema_decay" not in keys and "init_from" not in keys  # off
  assert "dataset.sampling" not in keys  # 'uniform', the default way
  keys = hparams.applicable(tiny_config(ema_decay=0.99, **{"dataset.sampling": "balanced"}))
  assert keys["ema_decay"] == 0.99 and keys["dataset.sampling"] == "balanced"


def test_the_summary_is_at_most_ten_short_lines_even_with_many_classes():
  config = tiny_config(**{"task.class_weights": tuple(0.5 + k / 1000 for k in range(1000))})
  text = hparams.summary(config)
  lines = text.splitlines()
  assert len(lines) <= 10 and all(len(line) <= hparams.MAX_LINE for line in lines)
  assert lines[0] == "Hyper-parameters (every key: config.json):"
  assert [line.split(":")[0].strip() for line in lines[1:]] == ["model", "data", "task", "optimizer", "schedule", "run"]
  assert (
    hparams.summary(config.to_dict()) == text == hparams.summary({k: v for k, v in hparams._flat(config).items()})
  )  # nested or flat, the same summary
