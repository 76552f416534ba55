"""README's "Load a checkpoint" snippets, run as written against a real workdir (the 0.1 fixture, copied)."""

import logging
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "workdir_0_1"


def _snippets() -> list[str]:
  """The two python blocks of README's 'Load a checkpoint' section: with jaxcls, then with plain orbax."""
  text = (REPO / "README.md").read_text()
  section = text.split("### Load a checkpoint", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 2
  return blocks


@pytest.fixture
def workdir(tmp_path):
  target = tmp_path / "digits"
  shutil.copytree(FIXTURE, target)
  return target


def _run(code: str, workdir, **names) -> dict:
  namespace = dict(names)
  exec(compile(code.replace("runs/digits", str(workdir)), "README.md", "exec"), namespace)  # pylint: disable=exec-used
  return namespace


def test_the_jaxcls_snippet_is_three_lines_and_gives_predicts_probabilities(workdir):
  jaxcls_code, _ = _snippets()
  assert len([line for line in jaxcls_code.splitlines() if line.strip()]) == 3  # blank lines (ruff's) aside
  images = np.random.RandomState(0).randint(0, 256, (5, 16, 16, 1)).astype(np.uint8)
  out = _run(jaxcls_code, workdir, images=images)
  probabilities, restored = out["probabilities"], out["restored"]
  assert probabilities.shape == (5, 10) and restored.step == 300
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
  from jaxcls.inference.predictor import inference_function  # pylint: disable=g-import-not-at-top
  from jaxcls.models import forward  # pylint: disable=g-import-not-at-top

  expected = inference_function(restored)(forward.model_variables(restored.variables), images)
  np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)


def test_the_plain_orbax_snippet_reads_the_same_arrays_without_warnings(workdir, caplog):
  _, orbax_code = _snippets()
  caplog.set_level(logging.WARNING)
  out = _run(orbax_code, workdir)
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
  from jaxcls.store.restore import read_variables  # pylint: disable=g-import-not-at-top

  saved = read_variables(str(workdir), 300, use_ema=False)
  leaves = jax.tree.leaves(jax.tree.map(np.array_equal, jax.device_get(out["params"]), saved["params"]))
  assert leaves and all(leaves)
  assert int(out["state"]["step"]) == 300
