"""`python -m jaxcls.evaluate`: restore a workdir's model and config, evaluate a split exactly, write the report."""

import json
import os
import subprocess

import pytest
from conftest import REPO, subprocess_env

from jaxcls.core.errors import CheckpointError, ConfigError
from jaxcls.evaluation import workdir_eval as evaluate
from jaxcls.store import workdir as workdir_lib
from jaxcls.training import loop as train


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
  # 4 and 8 on the cadence, 6 as the best so far (its evaluation was the first: config.best_metric is on by default)
  with pytest.raises(CheckpointError, match="No checkpoint at step 5.*available: 4, 6, 8"):
    evaluate.evaluate_workdir(trained, step=5, output_dir=str(tmp_path))
  with pytest.raises(ConfigError, match="config.json does not exist"):
    evaluate.evaluate_workdir(str(tmp_path / "nothing"))


def test_command_prints_a_summary(trained, tmp_path, python):
  proc = subprocess.run(
    [python, "-m", "jaxcls.evaluate", "--workdir", trained, "--output_dir", str(tmp_path)],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "simple_cnn at step 8 on the test split: num_examples 360" in proc.stdout
  assert (proc.stdout + proc.stderr).count(" on the test split: ") == 1  # not repeated by the log on stderr
  assert json.loads((tmp_path / "report.json").read_text())["num_examples"] == 360
  # User errors: one line on stderr and exit 2 (cli.run), before anything is restored.
  for args, message in (
    (["--workdir", str(tmp_path / "nothing")], "config.json does not exist"),
    (["--workdir", trained, "--labels_file", "x.csv"], "--labels_file needs --data"),
    ([], "--workdir is required"),
  ):
    proc = subprocess.run(
      [python, "-m", "jaxcls.evaluate", *args],
      env=subprocess_env(1),
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith("jaxcls: error: ") and message in proc.stderr


@pytest.fixture(scope="module")
def folder_trained(tmp_path_factory):
  """A model trained on a train/ + test/ folder of 8x8 PNGs whose gray level gives the class."""
  import numpy as np
  from conftest import tiny_config
  from PIL import Image

  root = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for split, count in (("train", 12), ("test", 5)):
    for k, name in enumerate(("ant", "bee", "cow")):
      os.makedirs(root / split / name)
      for i in range(count):
        pixels = np.clip(60 * (k + 1) + rng.normal(0, 10, (8, 8, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / split / name / f"{i}.png")
  workdir = str(tmp_path_factory.mktemp("folder_run"))
  config = tiny_config(
    **{"dataset.name": "folder", "dataset.path": str(root), "dataset.workers": 2},
    num_train_steps=6,
    checkpoint_every_steps=6,
    eval_every_steps=6,
    augment="",
  )
  train.train_and_evaluate(config, workdir)
  return workdir, root


def test_a_folder_of_new_labelled_images(folder_trained, tmp_path):
  import shutil

  workdir, root = folder_trained
  with open(os.path.join(workdir, "report.json")) as f:
    at_end_of_training = json.load(f)
  # The training test split, given as a new folder, reproduces the training report exactly.
  final = evaluate.evaluate_workdir(workdir, data_dir=str(root / "test"))
  assert final["num_examples"] == 15 and final["confusion_matrix"] == at_end_of_training["confusion_matrix"]
  test_report = workdir_lib.eval_folder(workdir, str(root / "test")) / "report.json"
  assert test_report.parent.name.startswith("eval_") and (test_report.parent / "report.md").is_file()
  with open(os.path.join(workdir, "report.json")) as f:
    assert json.load(f)["split"] == "test"  # the training report is kept
  # Another folder of the same name gets its own report folder, so the first report is kept (issue 16 defect 2).
  shutil.copytree(root / "test" / "ant", tmp_path / "elsewhere" / "test" / "ant")
  assert evaluate.evaluate_workdir(workdir, data_dir=str(tmp_path / "elsewhere" / "test"))["num_examples"] == 5
  assert json.loads(test_report.read_text())["num_examples"] == 15
  assert len([p for p in os.listdir(workdir) if p.startswith("eval_")]) == 2

  # A subset of the classes, a corrupt file, and per-image groups from a label file.
  new = tmp_path / "new"
  shutil.copytree(root / "test" / "bee", new / "bee")
  (new / "bee" / "broken.png").write_bytes(b"not a png")
  final = evaluate.evaluate_workdir(workdir, data_dir=str(new), output_dir=str(tmp_path / "out"))
  assert final["num_examples"] == 5 and sum(final["confusion_matrix"][1]) == 5
  # Macro averages are over the one class present (issue 16 defect 1), as balanced accuracy is.
  assert final["macro_classes"] == 1 and final["macro_recall"] == final["balanced_accuracy"]
  assert final["macro_f1"] == final["f1"][1]
  assert "over the 1 of 3 classes present" in (tmp_path / "out" / "report.md").read_text()
  assert "broken.png" in (tmp_path / "out" / "skipped_files.txt").read_text()
  rows = [f"bee/{i}.png,bee,,{'day' if i < 2 else 'night'}" for i in range(5)]
  (tmp_path / "labels.csv").write_text("path,labels,split,group\n" + "\n".join(rows) + "\n")
  final = evaluate.evaluate_workdir(
    workdir, data_dir=str(new), labels_file=str(tmp_path / "labels.csv"), output_dir=str(tmp_path / "out2")
  )
  assert {k: v["num_examples"] for k, v in final["per_group"]["groups"].items()} == {"day": 2, "night": 3}

  os.makedirs(new / "yak")
  shutil.copy(root / "test" / "ant" / "0.png", new / "yak" / "0.png")
  with pytest.raises(Exception, match="class folders \\['yak'\\] that the model was not trained on"):
    evaluate.evaluate_workdir(workdir, data_dir=str(new), output_dir=str(tmp_path / "out3"))
