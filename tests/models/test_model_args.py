"""A model switched on the command line (defect 6): `--config.model.name=resnet18` on configs/default.py once
failed with "Unknown argument 'widths'", an argument the file had set for simple_cnn.

The rule (models.switch_model): arguments the file set for another model family are dropped with one warning
line naming them; within a family they stay where the new model takes them; arguments given on the command line
always stay, so one the new model does not take is still an error.
"""

import json
import logging
import os
import subprocess

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from conftest import REPO, subprocess_env

from jaxcls import models
from jaxcls.core.errors import ConfigError

DEFAULT = os.path.join(REPO, "configs", "default.py")


def _model(**keys):
  return ml_collections.ConfigDict(keys)


def _switched(file_model: dict, name: str, **command_line):
  model = _model(**{**file_model, "name": name, **command_line})
  return model, models.switch_model(model, file_model, set(command_line) | {"name"})


def test_another_family_drops_the_file_arguments_with_one_warning(caplog):
  file_model = {"name": "simple_cnn", "widths": (32, 64, 128), "dropout": 0.3}
  with caplog.at_level(logging.WARNING):
    model, dropped = _switched(file_model, "resnet18")
  assert sorted(dropped) == ["dropout", "widths"] and dict(model) == {"name": "resnet18"}
  lines = [r.getMessage() for r in caplog.records if "replaces the config file's" in r.getMessage()]
  assert len(lines) == 1 and "widths=(32, 64, 128)" in lines[0] and "dropout=0.3" in lines[0]
  module = models.build(model, 10)
  out = jax.eval_shape(lambda: module.init_with_output(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False))
  assert out[0].shape == (1, 10)


def test_the_same_family_keeps_what_the_new_model_takes():
  model, dropped = _switched({"name": "resnet18", "stem": "small", "width": 32}, "resnet50")
  assert dropped == [] and dict(model) == {"name": "resnet50", "stem": "small", "width": 32}
  models.build(model, 10)
  model, dropped = _switched({"name": "vgg11", "hidden": 64, "dropout": 0.1}, "vgg16_bn")  # a subclass: one family
  assert dropped == [] and dict(model) == {"name": "vgg16_bn", "hidden": 64, "dropout": 0.1}
  model, dropped = _switched({"name": "convnext_tiny", "stochastic_depth": 0.2}, "convnext_small")
  assert dropped == [] and model.stochastic_depth == 0.2


def test_command_line_arguments_stay_and_an_unknown_one_is_still_an_error():
  model, dropped = _switched({"name": "simple_cnn", "widths": (32, 64), "dropout": 0.3}, "resnet18", dropout=0.1)
  assert dropped == ["widths"] and dict(model) == {"name": "resnet18", "dropout": 0.1}
  model, dropped = _switched({"name": "simple_cnn", "widths": (32, 64)}, "resnet18", widths=(8, 16))
  assert dropped == []
  with pytest.raises(ConfigError, match="Unknown argument 'widths' for model 'resnet18'"):
    models.build(model, 10)
  model, dropped = _switched({"name": "simple_cnn", "widths": (32, 64)}, "simple_cnn")  # no switch: nothing drops
  assert dropped == [] and dict(model) == {"name": "simple_cnn", "widths": (32, 64)}
  model, dropped = _switched({"name": "simple_cnn", "widths": (32, 64)}, "resnet19")  # refused by build, by name
  assert dropped == []
  with pytest.raises(ConfigError, match="Unknown model 'resnet19'"):
    models.build(model, 10)


def test_resnet18_from_the_command_line_on_the_default_config_trains(python, tmp_path):
  workdir = str(tmp_path / "run")
  args = [
    "-m",
    "jaxcls.main",
    "--config",
    DEFAULT,
    "--workdir",
    workdir,
    "--config.model.name=resnet18",
    "--config.model.width=8",
    "--config.num_train_steps=3",
    "--config.batch_size=32",
    "--config.optimizer.warmup_steps=1",
    "--config.evaluators=()",
  ]
  proc = subprocess.run([python, *args], env=subprocess_env(2), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = [line for line in proc.stderr.splitlines() if "replaces the config file's simple_cnn" in line]
  assert len(warnings) == 1 and "widths=(32, 64, 128)" in warnings[0] and "dropout=0.3" in warnings[0]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"] == {"name": "resnet18", "width": 8}
  bad = subprocess.run(
    [
      python,
      *args[:5],
      "--workdir",
      str(tmp_path / "bad"),
      "--config.model.name=resnet18",
      "--config.model.widths=(8, 16)",
    ],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert bad.returncode == 2 and "Unknown argument 'widths' for model 'resnet18'" in bad.stderr.splitlines()[-1]
