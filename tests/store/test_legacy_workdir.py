"""A workdir trained before the package move (tests/fixtures/workdir_0_1, jaxcls 0.1.0 at 6823232) still
evaluates to the same accuracy, predicts, exports and fine-tunes with today's code (issue 15 part 8)."""

import importlib.util
import json
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest
from conftest import REPO, subprocess_env, tiny_config
from PIL import Image

FIXTURE = os.path.join(REPO, "tests", "fixtures", "workdir_0_1")
ACCURACY = 0.2861111111111111  # the fixture's report.json, written by the old code


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
  """A copy of the fixture (commands write into a workdir; the committed one stays as it was)."""
  workdir = tmp_path_factory.mktemp("legacy") / "workdir_0_1"
  shutil.copytree(FIXTURE, workdir)
  return str(workdir)


@pytest.fixture(scope="module")
def digit_pngs(legacy, tmp_path_factory):
  """The test split's 360 digits as 8x8 grayscale PNGs, as a user would have them on disk, and their labels."""
  from jaxcls.data import split  # pylint: disable=g-import-not-at-top
  from jaxcls.data.sources import digits  # pylint: disable=g-import-not-at-top
  from jaxcls.store import restore  # pylint: disable=g-import-not-at-top

  pixels, target = digits.read_digits()
  images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
  _, _, test_images, test_labels = split.select(restore.load_config(legacy).dataset, images, target)
  folder = tmp_path_factory.mktemp("digits")
  files = []
  for i, image in enumerate(test_images):
    files.append(str(folder / f"{i:03d}.png"))
    Image.fromarray(image).save(files[-1])
  return files, np.asarray(test_labels)


def test_the_old_fixture_is_what_the_test_expects():
  with open(os.path.join(FIXTURE, "report.json")) as f:
    report = json.load(f)
  with open(os.path.join(FIXTURE, "config.json")) as f:
    config = json.load(f)
  assert report["accuracy"] == ACCURACY and report["step"] == 300 and report["num_examples"] == 360
  assert "imports" not in config and config["model"] == {"name": "simple_cnn", "widths": [4, 8], "dropout": 0.0}


def test_evaluate_gives_the_same_accuracy(legacy, tmp_path):
  from jaxcls.evaluation import workdir_eval  # pylint: disable=g-import-not-at-top

  with open(os.path.join(FIXTURE, "report.json")) as f:
    old = json.load(f)
  final = workdir_eval.evaluate_workdir(legacy, output_dir=str(tmp_path))
  assert final["step"] == 300 and final["split"] == "test" and final["num_examples"] == 360
  assert final["accuracy"] == ACCURACY
  assert final["confusion_matrix"] == old["confusion_matrix"]
  assert final["loss"] == pytest.approx(old["loss"], rel=1e-5)


def test_predict_and_export_agree_on_image_files(legacy, digit_pngs, tmp_path):
  """predict on PNG files classifies the test digits as evaluation did, and the exported function (run without
  jaxcls, by examples/serve_exported.py) gives the same probabilities."""
  from jaxcls.inference import exporter, predictor  # pylint: disable=g-import-not-at-top
  from jaxcls.store import restore  # pylint: disable=g-import-not-at-top

  files, labels = digit_pngs
  restored = restore.restore(legacy)
  records = predictor.predict_files(restored, files, top_k=3)
  assert [r["error"] for r in records] == [None] * len(files)
  predicted = np.array([int(r["prediction"]) for r in records])
  assert np.mean(predicted == labels) == ACCURACY  # files are decoded and resized as training resized the arrays

  exporter.export_workdir(legacy, str(tmp_path / "model"), platforms=("cpu",))
  spec = importlib.util.spec_from_file_location("serve_exported", os.path.join(REPO, "examples", "serve_exported.py"))
  loader = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(loader)
  model, meta = loader.load_model(str(tmp_path / "model"))
  assert meta["class_names"] == [str(k) for k in range(10)]
  some = files[:16]
  probs = model(np.stack([loader.load_image(path, meta["preprocessing"]) for path in some]))
  assert probs.shape == (16, 10)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  for record, row in zip(records[:16], probs):
    assert record["prediction"] == meta["class_names"][int(np.argmax(row))]
    assert record["probability"] == pytest.approx(float(row.max()), abs=1e-5)


def test_fine_tuning_starts_from_the_old_weights(legacy, tmp_path):
  """init_from the old workdir: a few steps at learning rate 0 keep its parameters exactly, so they were loaded."""
  from jaxcls.store import restore  # pylint: disable=g-import-not-at-top
  from jaxcls.training import loop  # pylint: disable=g-import-not-at-top

  config = tiny_config(
    **{
      "dataset.name": "digits",
      "dataset.image_size": (16, 16),
      "model.widths": (4, 8),
      "model.dropout": 0.0,
      "optimizer.learning_rate": 0.0,
      "optimizer.warmup_steps": 0,
    },
    init_from=legacy,
    augment="",
    num_train_steps=3,
    eval_every_steps=-1,
    checkpoint_every_steps=-1,
    eval_batch_size=72,
  )
  report = loop.train_and_evaluate(config, str(tmp_path / "tuned"))
  assert report["step"] == 3 and report["num_examples"] == 360
  old, new = restore.restore(legacy).variables["params"], restore.restore(str(tmp_path / "tuned")).variables["params"]
  assert jax.tree_util.tree_structure(old) == jax.tree_util.tree_structure(new)
  for a, b in zip(jax.tree_util.tree_leaves(old), jax.tree_util.tree_leaves(new)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluate_command_on_the_old_workdir(legacy, tmp_path, python):
  proc = subprocess.run(
    [python, "-m", "jaxcls.evaluate", "--workdir", legacy, "--output_dir", str(tmp_path)],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "simple_cnn at step 300 on the test split: num_examples 360, loss" in proc.stdout
  assert json.loads((tmp_path / "report.json").read_text())["accuracy"] == ACCURACY
