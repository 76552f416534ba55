"""Issue 16 defect 10: balanced class weights on balanced batches correct the imbalance twice, so they are refused."""

import pytest
from conftest import tiny_config

from jaxcls import data
from jaxcls.core.errors import ConfigError
from jaxcls.store import build
from jaxcls.training import loop as train


def _both_balanced():
  return tiny_config(**{"task.class_weights": "balanced", "dataset.sampling": "balanced"})


def test_training_refuses_balanced_weights_with_balanced_sampling(tmp_path):
  with pytest.raises(ConfigError) as error:
    train.train_and_evaluate(_both_balanced(), str(tmp_path))
  message = str(error.value)
  assert "config.task.class_weights='balanced'" in message and "config.dataset.sampling='balanced'" in message
  assert "--config.task.class_weights=none" in message and "--config.dataset.sampling=uniform" in message
  assert not (tmp_path / "checkpoints").exists()


def test_one_correction_or_explicit_weights_stay_allowed_and_saved_runs_still_build():
  info = data.build(tiny_config()).info
  for overrides in (
    {"task.class_weights": "balanced"},
    {"dataset.sampling": "balanced"},
    {"dataset.sampling": "balanced", "task.class_weights": (1.0, 2.0, 1.0, 1.0)},
  ):
    task, _, _ = build.build_task_and_model(tiny_config(**overrides), info)
    assert task.num_classes == 4
  # A saved run's config.json (evaluate on a split) is rebuilt as it trained, and restore never weights.
  build.build_task_and_model(_both_balanced(), info, new_run=False)
  build.build_task_and_model(_both_balanced(), info, weighted=False)
  with pytest.raises(ConfigError, match="corrects the class imbalance twice"):
    build.build_task_and_model(_both_balanced(), info)
