"""The classical baseline: hand-crafted features, the linear SVM against scikit-learn, the command end to end."""

import importlib.util
import json
import os
import subprocess

import numpy as np
import pytest
from conftest import REPO, subprocess_env

from jaxcls.classical import handcrafted, run, settings, svm
from jaxcls.core.errors import ConfigError

DIGITS_CONFIG = os.path.join(REPO, "configs", "classical_digits.py")


def _digits_config(classifier="svm"):
  spec = importlib.util.spec_from_file_location("classical_digits", DIGITS_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(classifier)


@pytest.fixture(scope="module")
def digits_svm(tmp_path_factory):
  """One SVM run of configs/classical_digits.py: (config, workdir, report)."""
  config = _digits_config()
  workdir = str(tmp_path_factory.mktemp("classical_digits"))
  return config, workdir, run.run(config, workdir)


# ---- features ----


@pytest.mark.parametrize("shape, cell, block, orientations", [((3, 28, 28, 1), 4, 2, 9), ((2, 30, 26, 3), 5, 3, 8)])
def test_hog_length_follows_the_cell_and_block_formula(shape, cell, block, orientations):
  images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  features = handcrafted.hog(images, orientations=orientations, cell_size=cell, block_size=block)
  cells_r, cells_c = shape[1] // cell, shape[2] // cell
  expected = (cells_r - block + 1) * (cells_c - block + 1) * block * block * orientations
  assert (
    features.shape
    == (shape[0], expected)
    == (shape[0], handcrafted.hog_size(shape[1], shape[2], orientations, cell, block))
  )
  spec = handcrafted.FeatureSpec(
    names=("hog", "color_hist", "pixels"),
    hog_orientations=orientations,
    hog_cell_size=cell,
    hog_block_size=block,
    color_bins=8,
  )
  assert handcrafted.extract(images, spec).shape == (shape[0], spec.num_features(shape[1:]))


def test_hog_ignores_a_brightness_offset_and_bins_a_known_gradient():
  ramp = np.tile(np.arange(16, dtype=np.uint8) * 8, (16, 1))  # brightness grows along columns
  images = np.stack([ramp, ramp + 20, ramp.T])[..., None]  # the same ramp brighter, and turned 90 degrees
  features = np.asarray(handcrafted.hog(images, orientations=9, cell_size=4, block_size=2)).reshape(3, -1, 9)
  np.testing.assert_allclose(features[0], features[1], atol=1e-6)
  # A horizontal gradient points at 0 degrees (bin 0); a vertical one at 90 degrees (bin 90 // 20 = 4).
  for image, bin_index in ((0, 0), (2, 4)):
    assert np.all(features[image][:, bin_index] > 0.1)
    np.testing.assert_array_equal(np.delete(features[image], bin_index, axis=1), 0.0)
  # L2-Hys: every block has unit norm and no entry above the 0.2 clip by much after renormalisation.
  blocks = np.asarray(
    handcrafted.hog(
      np.random.default_rng(1).integers(0, 256, (2, 16, 16, 1), dtype=np.uint8),
      orientations=9,
      cell_size=4,
      block_size=2,
    )
  ).reshape(2, -1, 36)
  np.testing.assert_allclose(np.linalg.norm(blocks, axis=-1), 1.0, atol=1e-4)


def test_hog_matches_scikit_image():
  """Value for value against the reference implementation, where scikit-image is installed."""
  skimage_feature = pytest.importorskip("skimage.feature")
  images = np.random.default_rng(2).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
  ours = np.asarray(handcrafted.hog(images, orientations=9, cell_size=4, block_size=2))
  ref = np.stack(
    [
      skimage_feature.hog(
        im, orientations=9, pixels_per_cell=(4, 4), cells_per_block=(2, 2), block_norm="L2-Hys", channel_axis=-1
      )
      for im in images
    ]
  )
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_color_histogram_and_pixels():
  images = np.zeros((2, 4, 4, 3), np.uint8)
  images[0, ..., 0] = 255  # image 0: red channel saturated
  images[1, :2, :, 1] = 100  # image 1: half the green pixels at 100 (bin 100 * 4 // 256 = 1)
  hist = np.asarray(handcrafted.color_histogram(images, bins=4)).reshape(2, 3, 4)
  np.testing.assert_allclose(hist.sum(-1), 1.0)
  np.testing.assert_allclose(hist[0, 0], [0, 0, 0, 1])
  np.testing.assert_allclose(hist[1, 1], [0.5, 0.5, 0, 0])
  pixels = np.asarray(handcrafted.raw_pixels(images))
  assert pixels.shape == (2, 48) and pixels.max() == 1.0 and pixels.min() == 0.0


def test_standardizer_uses_training_statistics():
  train = np.array([[1.0, 5.0], [3.0, 5.0]], np.float32)
  scaler = handcrafted.Standardizer.fit(train)
  np.testing.assert_allclose(scaler(train), [[-1, 0], [1, 0]])  # the constant feature keeps std 1
  np.testing.assert_allclose(scaler(np.array([[5.0, 6.0]])), [[3, 1]])


# ---- the SVM and the run ----


def test_svm_agrees_with_linear_svc_and_is_deterministic(digits_svm):
  """Same features, same C: our L-BFGS SVM and scikit-learn's LinearSVC within 2 points of accuracy."""
  from sklearn.svm import LinearSVC

  config, workdir, report = digits_svm
  options = settings.check(config)
  eval_dataset = run.data.build(config)
  train_x, train_y = run.split_features(run._training_split_dataset(config), options.spec, options.batch_size)
  eval_x, eval_y = run.split_features(eval_dataset, options.spec, options.batch_size)
  scaler = handcrafted.Standardizer.fit(train_x)
  train_x, eval_x = scaler(train_x), scaler(eval_x)
  ours = svm.fit(train_x, train_y, 10, c=options.svm_c, max_iter=options.svm_max_iter, tol=options.svm_tol)
  saved = np.load(os.path.join(workdir, run.MODEL_FILE))
  np.testing.assert_array_equal(ours.weights, saved["weights"])  # the run fitted exactly this model
  accuracy = float(np.mean(ours.scores(eval_x).argmax(1) == eval_y))
  assert accuracy == pytest.approx(report["accuracy"])
  reference = LinearSVC(C=options.svm_c, max_iter=5000).fit(train_x, train_y)
  assert abs(accuracy - reference.score(eval_x, eval_y)) <= 0.02
  assert np.mean(ours.scores(eval_x).argmax(1) == reference.predict(eval_x)) >= 0.95


def test_run_writes_the_standard_report(digits_svm):
  config, workdir, report = digits_svm
  # The multiclass task's own metric keys (the shapes of the run's eval, so nothing compiles again).
  labels = np.arange(360) % 10
  cnn_keys = set(run._score(config, 10, np.eye(10, dtype=np.float32)[labels], labels)[0])
  assert {"accuracy", "loss", "top5_accuracy", "balanced_accuracy", "confusion_matrix", "ece"} <= cnn_keys
  with open(os.path.join(workdir, "report.json")) as f:
    saved = json.load(f)
  assert cnn_keys <= set(saved) and {"step", "split", "model", "train_seconds", "num_features"} <= set(saved)
  assert saved["num_examples"] == 360 and saved["split"] == "test" and saved["model"] == "svm[hog+pixels]"
  assert saved["accuracy"] >= 0.95 and saved["num_features"] == 388  # 3x3 blocks x 4 cells x 9 + 64 pixels
  for name in ("report.md", "config.json", "classes.json"):
    assert os.path.isfile(os.path.join(workdir, name)), name


def test_command_end_to_end_with_knn(python, tmp_path):
  """`python -m jaxcls.classical` with the k-NN variant; its accuracy equals scikit-learn's 1-NN."""
  from sklearn.neighbors import KNeighborsClassifier

  workdir = str(tmp_path / "knn")
  proc = subprocess.run(
    [python, "-m", "jaxcls.classical", "--config", DIGITS_CONFIG + ":knn", "--workdir", workdir],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  assert report["model"] == "knn[pixels]" and report["num_examples"] == 360
  config = _digits_config("knn")
  options = settings.check(config)
  train_x, train_y = run.split_features(run._training_split_dataset(config), options.spec, 512)
  eval_x, eval_y = run.split_features(run.data.build(config), options.spec, 512)
  assert report["standardized"] is False  # validation chose raw pixels (test_knn_standardisation_...)
  reference = KNeighborsClassifier(n_neighbors=1).fit(train_x, train_y).score(eval_x, eval_y)
  assert report["accuracy"] == pytest.approx(reference, abs=1 / 360)


def test_knn_standardisation_is_chosen_on_a_held_out_part_of_the_training_split(tmp_path):
  """Defect 12: k-NN standardised by default (97.78% on digits against 98.33% raw); 'auto' now asks validation."""
  from sklearn.neighbors import KNeighborsClassifier

  config = _digits_config("knn")
  assert config.classical.standardize == "auto"
  report = run.run(config, str(tmp_path / "auto"))
  chosen = report["standardize_validation"]
  assert report["standardized"] is False and chosen["raw"] > chosen["standardized"] and chosen["num_examples"] == 288
  # The same choice by hand: scikit-learn's 1-NN on the same held-out fifth of the training split.
  options = settings.check(config)
  train_x, train_y = run.split_features(run._training_split_dataset(config), options.spec, 512)
  keep, val = run.split.held_out_split(train_y, run.VALIDATION_FRACTION, config.dataset.split_seed + 2)
  scaler = handcrafted.Standardizer.fit(train_x[keep])
  for x, key in ((train_x, "raw"), (scaler(train_x), "standardized")):
    expected = KNeighborsClassifier(n_neighbors=1).fit(x[keep], train_y[keep]).score(x[val], train_y[val])
    assert chosen[key] == pytest.approx(expected, abs=1 / 288)
  assert report["accuracy"] == pytest.approx(354 / 360)  # 98.33%, raw pixels
  with config.unlocked():
    config.classical.standardize = True  # as given: no validation
  forced = run.run(config, str(tmp_path / "forced"))
  assert forced["standardized"] is True and "standardize_validation" not in forced
  assert forced["accuracy"] == pytest.approx(352 / 360)  # 97.78%
  with open(os.path.join(tmp_path, "auto", "report.json")) as f:
    assert json.load(f)["standardize_validation"] == chosen


@pytest.mark.parametrize(
  "key, value, expected",
  [
    ("classical.knn_kk", 3, "Unknown config key 'classical.knn_kk'. Did you mean 'knn_k'"),
    ("classical.classifier", "forest", "classical.classifier='forest' is not valid"),
    ("classical.features", "hog,sift", "unknown feature 'sift'"),
    ("classical.hog_cell_size", 8, "HOG needs images of at least 16x16 pixels"),
    ("classical.standardize", "yes", "classical.standardize='yes' is not valid; use True, False or 'auto'"),
    ("task.type", "binary", "supports task.type='multiclass' only"),
    ("optimizer.learning_rat", 0.1, "Did you mean 'optimizer.learning_rate'"),
  ],
)
def test_bad_settings_fail_with_a_clear_error(tmp_path, key, value, expected):
  config = _digits_config()
  section, leaf = key.split(".")
  with config.unlocked():
    config[section][leaf] = value
  with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace("[", r"\[")):
    run.run(config, str(tmp_path))


def test_command_rejects_a_misspelt_override(python, tmp_path):
  proc = subprocess.run(
    [
      python,
      "-m",
      "jaxcls.classical",
      "--config",
      DIGITS_CONFIG,
      "--workdir",
      str(tmp_path),
      "--config.classical.svm_cc=1",
    ],
    env=subprocess_env(1),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "classical.svm_c" in proc.stderr
