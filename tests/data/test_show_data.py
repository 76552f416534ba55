"""Tests of jaxcls.show_data: the grid is written, and hard and soft labels get readable captions."""

import re

import numpy as np
import pytest
from PIL import Image

from jaxcls.config.base import get_base_config
from jaxcls.core.errors import ConfigError
from jaxcls.data import preview as show_data


def test_captions_for_hard_and_soft_labels():
  names = ("cat", "dog", "fox")
  assert show_data.caption(np.int32(2), names) == "fox"
  assert show_data.caption(np.array([0.3, 0.7, 0.0]), names) == "dog 0.70 + cat 0.30"
  assert show_data.caption(np.array([0.0, 1.0, 0.0]), names) == "dog"


def test_writes_before_and_after_grid(tmp_path):
  config = get_base_config()  # digits: offline, 8x8
  config.augment = "random_crop(padding=1, mode='constant')|flip_lr|mixup(alpha=0.4)"
  path = show_data.write_grid(config, str(tmp_path / "grid.png"), num=12)
  image = Image.open(path)
  assert image.width == 8 * show_data._CELL and image.height > 4 * show_data._CELL
  pixels = np.asarray(image.convert("L"))
  assert pixels.min() < 50 and pixels.max() > 200  # images and white background both drawn


def test_the_grid_goes_into_a_new_folder_as_png_or_jpeg(tmp_path):
  config = get_base_config()
  for name, kind in (("new/deeper/grid.png", "PNG"), ("grid.JPG", "JPEG")):
    path = show_data.write_grid(config, str(tmp_path / name), num=3)
    assert Image.open(path).format == kind
  assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.JPG", "new"]  # no temporary file left


@pytest.mark.parametrize(
  "output, num, words",
  [
    ("grid.txt", 4, "--output=grid.txt must end in .png, .jpg or .jpeg: the grid is an image."),
    ("grid", 4, "--output=grid must end in .png"),
    ("grid.png", 0, "--num=0 must be at least 1."),
    ("grid.png", -3, "--num=-3 must be at least 1."),
  ],
)
def test_a_bad_output_or_count_is_refused_before_the_data_loads(output, num, words):
  config = get_base_config()
  config.dataset.name = "no_such_source"  # never reached: the check comes first
  with pytest.raises(ConfigError, match=re.escape(words)):
    show_data.write_grid(config, output, num=num)


def test_the_command_writes_the_grid_and_checks_its_overrides(python, tmp_path):
  """`python -m jaxcls.show_data` with a config override, then a misspelt key: one line and exit 2."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top

  from conftest import REPO, subprocess_env  # pylint: disable=g-import-not-at-top

  command = [python, "-m", "jaxcls.show_data", "--config", os.path.join(REPO, "configs", "default.py")]
  output = tmp_path / "grid.png"
  proc = subprocess.run(
    [*command, f"--output={output}", "--num=4", "--config.augment=flip_lr"],
    cwd=REPO,
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0 and proc.stdout == f"Wrote {output}\n", proc.stderr[-3000:]
  assert Image.open(output).width == 8 * show_data._CELL
  proc = subprocess.run(
    [*command, "--config.augmnt=flip_lr"], cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 2 and proc.stderr.startswith(
    "jaxcls: error: Unknown config key 'augmnt'. Did you mean 'augment'?"
  ), proc.stderr
  proc = subprocess.run(
    [*command, f"--output={tmp_path / 'grid.txt'}"], cwd=REPO, env=subprocess_env(1), capture_output=True, text=True
  )
  assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.startswith("jaxcls: error: --output=") and "must end in .png, .jpg or .jpeg" in proc.stderr
