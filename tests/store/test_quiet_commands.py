"""predict and export on a trained workdir print their result and nothing from the libraries: no orbax INFO lines,
no warnings about checkpoint items they do not restore (issue 16 part 5)."""

import re
import shutil
import subprocess

import numpy as np
from conftest import REPO, subprocess_env
from PIL import Image

FIXTURE = REPO + "/tests/fixtures/workdir_0_1"
NOISE = re.compile(r"orbax|^W\d{4}|WARNING|Metadata file does not exist|could not be restored", re.I | re.M)


def _run(python, *args):
  result = subprocess.run(
    [python, "-m", *args], cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout + result.stderr


def test_predict_and_export_are_quiet(python, tmp_path):
  workdir = tmp_path / "digits"
  shutil.copytree(FIXTURE, workdir)
  image = tmp_path / "seven.png"
  Image.fromarray(np.random.RandomState(7).randint(0, 256, (16, 16), np.uint8)).save(image)
  for args in (
    ("jaxcls.predict", "--workdir", str(workdir), str(image)),
    ("jaxcls.export", "--workdir", str(workdir), "--output", str(tmp_path / "exported")),
  ):
    out = _run(python, *args)
    assert not NOISE.search(out), (args[0], out)
    assert len(out.strip().splitlines()) <= 2, (args[0], out)  # predict: a line per image and a summary
