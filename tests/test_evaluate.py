"""`python -m jaxcls.evaluate`: restore a workdir's model and config, evaluate a split exactly, write the report."""

import json
import os
import subprocess

import pytest

from conftest import REPO, subprocess_env
from jaxcls import evaluate, train
from jaxcls.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from conftest import tiny_config
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(**{"dataset.name": "digits"}, num_train_steps=8, checkpoint_every_steps=4, eval_batch_size=48)
  train.train_and_evaluate(config, workdir)
  return workdir


def test_latest_checkpoint_reproduces_the_training_report(trained, tmp_path):
  with open(os.path.join(trained, "report.json")) as f:
    at_end_of_training = json.load(f)
  final = evaluate.evaluate_workdir(trained, output_dir=str(tmp_path))
  assert final["step"] == 8 and final["split"] == "test" and final["num_examples"] == 360
  assert final["accuracy"] == at_end_of_training["accuracy"]
  assert final["loss"] == pytest.approx(at_end_of_training["loss"], rel=1e-6)
  assert final["confusion_matrix"] == at_end_of_training["confusion_matrix"]
  assert os.path.isfile(tmp_path / "report.md") and os.path.isfile(tmp_path / "plots" / "confusion.png")


def test_other_split_and_step(trained, tmp_path):
  final = evaluate.evaluate_workdir(trained, split="train", step=4, output_dir=str(tmp_path))
  assert final["step"] == 4 and final["split"] == "train" and final["num_examples"] == 1437
  with pytest.raises(CheckpointError, match="No checkpoint at step 5.*available: 4, 8"):
    evaluate.evaluate_workdir(trained, step=5, output_dir=str(tmp_path))
  with pytest.raises(ConfigError, match="config.json does not exist"):
    evaluate.evaluate_workdir(str(tmp_path / "nothing"))


def test_command_prints_a_summary(trained, tmp_path, python):
  proc = subprocess.run([python, "-m", "jaxcls.evaluate", "--workdir", trained, "--output_dir", str(tmp_path)],
                        env=subprocess_env(2), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "simple_cnn at step 8 on the test split: num_examples 360" in proc.stdout
  assert json.loads((tmp_path / "report.json").read_text())["num_examples"] == 360
