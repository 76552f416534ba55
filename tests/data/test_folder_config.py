"""configs/folder.py picks its recipe from the folder's images, and a folder of small grey images trains with no
override but its path (defect 11: one needed 12 overrides: size, channels, mean, std, crops, cache, model, ...)."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
from conftest import REPO, subprocess_env
from PIL import Image

FOLDER_CONFIG = os.path.join(REPO, "configs", "folder.py")


def _get_config(*args):
  spec = importlib.util.spec_from_file_location("folder_config", FOLDER_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def write_digits_like(root, per_class=50, size=28):
  """Two classes of grey images a small CNN tells apart: a bright bar on the top or on the bottom half."""
  rng = np.random.default_rng(0)
  for k, name in enumerate(("top", "bottom")):
    os.makedirs(root / name, exist_ok=True)
    for i in range(per_class):
      pixels = rng.integers(0, 40, (size, size), dtype=np.uint8)
      row = int(rng.integers(3, size // 2 - 5)) + k * size // 2
      pixels[row : row + 4, 4 : size - 4] = 220
      Image.fromarray(pixels, "L").save(root / name / f"{i:03d}.png")
  return root


def test_the_recipe_follows_the_image_size(tmp_path, monkeypatch):
  small = _get_config(str(write_digits_like(tmp_path / "small", per_class=3)))
  assert small.model.name == "simple_cnn" and small.dataset.cache == "memory"
  assert small.dataset.image_size is None and small.dataset.channels == 0 and small.dataset.mean is None
  assert small.dataset.train_crop == "resize" and "flip" not in small.augment
  os.makedirs(tmp_path / "photos" / "cat")
  Image.new("RGB", (320, 240)).save(tmp_path / "photos" / "cat" / "a.jpg")
  photos = _get_config(str(tmp_path / "photos"))
  assert photos.model.name == "resnet18" and tuple(photos.dataset.image_size) == (224, 224)
  assert photos.dataset.train_crop == "random_resized" and photos.dataset.channels == 0
  assert _get_config().model.name == "resnet18"  # no folder to look into: the photo recipe
  # The path may come from --config.dataset.path, which the command line applies after the file runs.
  monkeypatch.setattr(sys, "argv", ["main", f"--config.dataset.path={tmp_path / 'small'}"])
  assert _get_config().model.name == "simple_cnn"


def test_small_grey_folder_trains_with_only_its_path(python, tmp_path):
  root = write_digits_like(tmp_path / "bars")
  workdir = tmp_path / "run"
  proc = subprocess.run(
    [
      python,
      "-m",
      "jaxcls.main",
      "--config",
      FOLDER_CONFIG,
      "--workdir",
      str(workdir),
      f"--config.dataset.path={root}",
    ],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["dataset"]["image_size"] == [28, 28] and len(config["dataset"]["mean"]) == 1
  assert config["model"]["name"] == "simple_cnn"
  report = json.loads((workdir / "report.json").read_text())
  assert report["num_examples"] == 20 and report["accuracy"] >= 0.95, report["accuracy"]
