"""Training, resuming and the commands on a gs:// workdir, against a real GCS API (gcp-storage-emulator).

The acceptance test: a run into gs://BUCKET/run is SIGKILLed after its first checkpoint and resumed; it must end
with the parameters of the same run into a local folder, bit for bit, and with every metrics.jsonl line.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from conftest import REPO, saved_state, subprocess_env, tiny_config
from etils import epath
from gcs_emulator import emulator_env, gcs  # noqa: F401  pylint: disable=unused-import  (the fixture)

STEPS, CHECKPOINT_EVERY = 32, 8


def _config_file(tmp_path, **overrides) -> str:
  """A config file for `python -m jaxcls.main`: conftest's tiny config with `overrides`."""
  path = tmp_path / "tiny_config.py"
  path.write_text(
    textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {os.path.join(REPO, "tests")!r})
      from conftest import tiny_config

      def get_config():
        return tiny_config(**{overrides!r})
  """)
  )
  return str(path)


def _main(config_file, workdir, env, cwd, *, cache, wait=True, timeout=600):
  args = [
    sys.executable,
    "-m",
    "jaxcls.main",
    "--config",
    config_file,
    "--workdir",
    workdir,
    f"--config.compilation_cache_dir={cache}",
  ]  # the three runs compile the same programs once
  if not wait:
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _rows(text):
  return [json.loads(line) for line in text.splitlines()]


def _logged(rows, key):
  return [(r["step"], r[key]) for r in rows if key in r]


@pytest.mark.slow
def test_sigkill_and_resume_into_a_bucket_equals_a_local_run(gcs, tmp_path):
  config_file = _config_file(
    tmp_path, num_train_steps=STEPS, checkpoint_every_steps=CHECKPOINT_EVERY, eval_every_steps=16
  )
  env = {**subprocess_env(2), **emulator_env(gcs.port)}
  cwd = tmp_path / "cwd"  # where a wrongly local "gs:" folder would appear
  cwd.mkdir()
  cache = str(tmp_path / "compilation_cache")

  local = str(tmp_path / "local")
  proc = _main(config_file, local, env, cwd, cache=cache)
  assert proc.returncode == 0, proc.stderr[-3000:]

  url = gcs.url("run")
  child = _main(config_file, url, env, cwd, cache=cache, wait=False)
  deadline = time.time() + 300
  while time.time() < deadline and child.poll() is None:
    names = gcs.objects(url + "/checkpoints")
    if any(re.fullmatch(r"\d+/commit_success.txt", n) for n in names):
      break  # orbax's marker that a whole step is complete on an object store (each item has its own too)
    time.sleep(0.02)
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert "report.json" not in gcs.objects(url), "the run finished before it could be killed"
  assert _rows(epath.Path(url + "/metrics.jsonl").read_text()), "nothing was logged before the kill"

  proc = _main(config_file, url, env, cwd, cache=cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.listdir(cwd) == [], "a local folder named after the URL was created"

  a, b = saved_state(local), saved_state(url)
  assert int(a["step"]) == int(b["step"]) == STEPS
  for name in ("params", "batch_stats", "opt_state"):
    for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name]), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  with open(os.path.join(local, "metrics.jsonl")) as f:
    local_rows = _rows(f.read())
  remote_rows = _rows(epath.Path(url + "/metrics.jsonl").read_text())
  for key in ("train/loss", "eval/loss", "eval/accuracy"):
    assert _logged(remote_rows, key) == _logged(local_rows, key), key  # every line, once, with equal values
  assert [s for s, _ in _logged(remote_rows, "train/loss")] == list(range(1, STEPS + 1))

  names = gcs.objects(url)
  for name in (
    "config.json",
    "classes.json",
    "report.json",
    "report.md",
    "plots/confusion.png",
    "plots/training_curves.png",
  ):
    assert name in names, (name, names)
  assert json.loads(epath.Path(url + "/report.json").read_text())["accuracy"] == pytest.approx(
    json.load(open(os.path.join(local, "report.json")))["accuracy"], abs=0
  )
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

  acc = event_accumulator.EventAccumulator(
    gcs.download(url + "/tensorboard", str(tmp_path / "tb")), size_guidance={event_accumulator.SCALARS: 0}
  )
  acc.Reload()
  steps_seen = [e.step for e in acc.Scalars("train/loss")]
  assert steps_seen and steps_seen[-1] == STEPS
  assert acc.Scalars("eval/accuracy")


# --- The commands on a gs:// workdir (trained in-process: quicker than a subprocess). ---


@pytest.fixture(scope="module")
def gs_workdir(gcs, tmp_path_factory):
  from jaxcls.training import loop as train  # pylint: disable=g-import-not-at-top

  url = gcs.url("trained")
  cwd = os.getcwd()
  os.chdir(tmp_path_factory.mktemp("cwd"))
  try:
    report = train.train_and_evaluate(tiny_config(num_train_steps=8, eval_every_steps=8, checkpoint_every_steps=4), url)
    assert os.listdir(".") == []
  finally:
    os.chdir(cwd)
  return url, report


def test_evaluate_a_gs_workdir(gs_workdir, tmp_path):
  from jaxcls.evaluation import workdir_eval as evaluate  # pylint: disable=g-import-not-at-top

  url, report = gs_workdir
  final = evaluate.evaluate_workdir(url, step=8, output_dir=url + "/eval_again")
  assert final["accuracy"] == report["accuracy"] and final["loss"] == pytest.approx(report["loss"], rel=1e-6)
  written = json.loads(epath.Path(url + "/eval_again/report.json").read_text())
  assert written["num_examples"] == 100
  from jaxcls.store import restore  # pylint: disable=g-import-not-at-top

  assert restore.checkpoint_steps(url) == [4, 8]
  with pytest.raises(Exception, match="No checkpoint at step 5 .*available: 4, 8"):
    evaluate.evaluate_workdir(url, step=5, output_dir=str(tmp_path))


def test_predict_and_export_from_a_gs_workdir(gs_workdir, tmp_path, monkeypatch):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from jaxcls.inference import exporter as export  # pylint: disable=g-import-not-at-top
  from jaxcls.inference import predictor as predict
  from jaxcls.store import restore

  url, _ = gs_workdir
  image = tmp_path / "x.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(image)
  status = predict.run(url, [str(image)], top_k=2, output=url + "/predictions.json")
  assert status == 0
  written = json.loads(epath.Path(url + "/predictions.json").read_text())
  assert written["workdir"] == url and written["step"] == 8 and written["predictions"][0]["error"] is None
  # Images in the bucket, named one by one and as a folder, give the local file's probabilities, from the forward
  # pass the first run kept in the local cache (its key reads the step's metadata on gs://): no restore this time.
  epath.Path(url + "/inputs/x.png").write_bytes(image.read_bytes())
  complete = restore.complete
  monkeypatch.setattr(restore, "complete", lambda *a, **k: pytest.fail("restored instead of using the cache"))
  predict.run(
    url,
    [url + "/inputs/x.png", url + "/inputs", url + "/inputs/none.png"],
    top_k=2,
    output=str(tmp_path / "remote.json"),
  )
  remote = json.loads((tmp_path / "remote.json").read_text())["predictions"]
  assert [r["error"] for r in remote[:2]] == [None, None] and remote[2]["error"] == "no such file"
  assert remote[0]["top_k"] == remote[1]["top_k"] == written["predictions"][0]["top_k"]
  monkeypatch.setattr(restore, "complete", complete)
  restored = restore.restore(url)
  assert restored.workdir == url and restored.step == 8
  metadata = export.export_model(restored, url + "/exported", platforms=("cpu",))
  assert metadata["step"] == 8
  assert {"model.jax", "weights.npz", "model.json"} <= {p.name for p in epath.Path(url + "/exported").iterdir()}


def test_export_onto_an_existing_file_is_a_config_error(gs_workdir, tmp_path):
  from jaxcls.core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxcls.inference import exporter as export  # pylint: disable=g-import-not-at-top
  from jaxcls.store import restore

  url, _ = gs_workdir
  target = tmp_path / "model"
  target.write_text("not a folder")
  with pytest.raises(ConfigError, match="is an existing file; give a folder"):
    export.export_model(restore.restore(url), str(target), platforms=("cpu",))


def test_init_from_a_gs_workdir(gs_workdir):
  from jaxcls.store import restore  # pylint: disable=g-import-not-at-top
  from jaxcls.training import transfer

  url, _ = gs_workdir
  source = transfer.read_source(url)
  assert source.description == f"workdir {url}, step 8"
  expected = restore.read_variables(url, 8)["params"]
  for x, y in zip(jax.tree.leaves(source.variables["params"]), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert transfer.read_source(url + "/checkpoints/4").description == f"workdir {url}, step 4"


@pytest.mark.parametrize("suffix", [".npz", ".msgpack"])
def test_init_from_a_converted_weights_file_in_a_bucket(gs_workdir, tmp_path, suffix):
  from jaxcls.models import torchvision as convert  # pylint: disable=g-import-not-at-top
  from jaxcls.store import restore
  from jaxcls.training import transfer

  url, _ = gs_workdir
  variables = restore.read_variables(url, 8)
  local = tmp_path / f"weights{suffix}"
  convert.save(variables, str(local))
  remote = f"{url}/weights/w{suffix}"
  epath.Path(remote).write_bytes(local.read_bytes())
  source = transfer.read_source(remote)
  assert source.description == f"weights file {remote}"
  for x, y in zip(jax.tree.leaves(source.variables["params"]), jax.tree.leaves(variables["params"]), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- Bad URLs on the command line: one line, non-zero, nothing created. ---


@pytest.mark.slow
@pytest.mark.parametrize(
  "command, workdir, expected",
  [
    ("jaxcls.main", "s3://bucket/run", "needs the s3fs package, which is not installed; pip install s3fs"),
    ("jaxcls.main", "gs:/bucket/run", "is not a valid URL; write it as gs://BUCKET/PATH"),
    ("jaxcls.evaluate", "gs:/bucket/run", "is not a valid URL; write it as gs://BUCKET/PATH"),
  ],
)
def test_bad_url_on_the_command_line(command, workdir, expected, tmp_path):
  try:
    import s3fs  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

    if workdir.startswith("s3"):
      pytest.skip("s3fs is installed here")
  except ImportError:
    pass
  args = [sys.executable, "-m", command, "--workdir", workdir]
  if command == "jaxcls.main":
    args += ["--config", _config_file(tmp_path)]
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  proc = subprocess.run(args, env=subprocess_env(1), cwd=cwd, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("jaxcls: error:")]
  assert len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]
  assert os.listdir(cwd) == []


def test_explain_and_fewshot_on_a_gs_workdir(gs_workdir, tmp_path):
  pytest.importorskip("matplotlib")
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from jaxcls.evaluation import fewshot
  from jaxcls.inference import explainer as explain  # pylint: disable=g-import-not-at-top

  url, _ = gs_workdir
  image = tmp_path / "x.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(image)
  index = explain.explain_files(url, [str(image)], settings=explain.Settings(methods=("saliency",)))
  assert index["images"][0]["error"] is None and index["images"][0]["png"].startswith(url + "/explanations/")
  assert epath.Path(index["images"][0]["png"]).read_bytes()[:4] == b"\x89PNG"
  assert json.loads(epath.Path(url + "/explanations/index.json").read_text())["step"] == 8
  final = fewshot.evaluate_workdir(url, shots=(1,), seeds=1, knn_k=(1,))
  assert json.loads(epath.Path(url + "/" + fewshot.RESULT_NAME).read_text())["step"] == final["step"] == 8
