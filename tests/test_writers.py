"""Tests of jaxcls.writers: TensorBoard events (clu and tensorboard-only paths), JSONL and resume, progress."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from jaxcls import writers

REPO = pathlib.Path(__file__).resolve().parents[1]


def _events(logdir):
  """{tag: [(step, value)]} for scalars in either format, plus {tag: plugin} for every tensor tag."""
  acc = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
  acc.Reload()
  scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
  plugins = {}
  for tag in acc.Tags()["tensors"]:
    plugins[tag] = acc.SummaryMetadata(tag).plugin_data.plugin_name
    if plugins[tag] == "scalars":  # TF2 summaries (clu's path) store scalars as tensors
      scalars[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
    elif plugins[tag] == "text":
      plugins[tag] = ("text", [tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors(tag)])
  return scalars, plugins


def _jsonl(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _run_python(code, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_import_is_lazy(tmp_path):
  out = _run_python("""
      import sys
      import jaxcls.writers
      print(sorted(m for m in ('tensorflow', 'clu') if m in sys.modules))
  """, tmp_path)
  assert out.strip() == "[]"


def test_tensorboard_and_jsonl_with_clu(tmp_path):
  pytest.importorskip("clu.metric_writers")
  with writers.create_writer(str(tmp_path), is_main=True) as writer:
    assert any(type(w).__name__ == "SummaryWriter" for w in writer.writers)
    writer.write_scalars(1, {"loss": np.float32(2.5), "accuracy": jnp.array(0.25)})
    writer.write_scalars(2, {"loss": 1.5})
    writer.write_texts(2, {"note": "hello"})
    writer.write_hparams({"optimizer": {"name": "sgd", "learning_rate": 0.1}})
  scalars, plugins = _events(tmp_path / "tensorboard")
  assert scalars["loss"] == [(1, 2.5), (2, 1.5)]
  assert scalars["accuracy"] == [(1, 0.25)]
  assert plugins["note"] == ("text", ["hello"])
  assert "hparams" in plugins.values()
  assert _jsonl(tmp_path) == [{"step": 1, "loss": 2.5, "accuracy": 0.25}, {"step": 2, "loss": 1.5}]


def test_fallback_without_tensorflow_or_clu(tmp_path):
  out = _run_python("""
      import sys
      sys.modules['tensorflow'] = None
      sys.modules['clu'] = None
      import numpy as np
      from jaxcls import writers
      workdir = sys.argv[1]
      writer = writers.create_writer(workdir, is_main=True)
      writer.write_scalars(3, {"loss": np.float64(0.5)})
      writer.write_scalars(4, {"loss": 0.25, "lr": 0.1})
      writer.write_texts(4, {"note": "no tf"})
      writer.write_hparams({"model": {"name": "resnet", "widths": (1, 2)}})
      writer.write_images(4, {"figure": np.full((1, 5, 7, 3), 200, np.uint8)})
      progress = writers.create_progress(10, writer, is_main=True)
      for step in range(5, 11):
        progress(step, t=step * 0.5)
      writer.close()
      print(type(progress).__name__, sorted(m for m in ('tensorflow', 'clu.metric_writers') if sys.modules.get(m)))
  """, tmp_path)
  assert out.strip() == "Progress []"
  scalars, plugins = _events(tmp_path / "tensorboard")
  assert scalars["loss"] == [(3, 0.5), (4, 0.25)]
  assert scalars["lr"] == [(4, pytest.approx(0.1))]
  assert scalars["steps_per_sec"] == [(10, pytest.approx(2.0))]
  assert plugins["note"] == ("text", ["no tf"])
  assert "hparams" in plugins.values()
  acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  acc.Reload()
  image = acc.Images("figure")[0]
  assert (image.step, image.width, image.height) == (4, 7, 5)
  records = _jsonl(tmp_path)
  assert records[:2] == [{"step": 3, "loss": 0.5}, {"step": 4, "loss": 0.25, "lr": 0.1}]
  assert records[2]["step"] == 10 and records[2]["steps_per_sec"] == pytest.approx(2.0)


def test_resume_drops_lines_after_the_checkpoint(tmp_path):
  with writers.create_writer(str(tmp_path), is_main=True) as writer:
    for step in (10, 20, 30, 40):
      writer.write_scalars(step, {"loss": step / 10})
    writer.write_scalars(20, {"accuracy": 0.5})  # several writes at one step all stay
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 45, "lo')  # a line torn by the crash
  with writers.create_writer(str(tmp_path), is_main=True, resume_step=20) as writer:
    writer.write_scalars(30, {"loss": 0.3})
  steps = [r["step"] for r in _jsonl(tmp_path)]
  assert steps == [10, 20, 20, 30]
  assert _jsonl(tmp_path)[-1] == {"step": 30, "loss": 0.3}


def test_fresh_writer_appends_after_a_torn_line(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
  with writers.create_writer(str(tmp_path), is_main=True) as writer:
    writer.write_scalars(3, {"loss": 0.5})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[-1]) == {"step": 3, "loss": 0.5}
  assert len(lines) == 3


def test_non_main_writes_no_files(tmp_path):
  workdir = tmp_path / "run"
  writer = writers.create_writer(str(workdir), is_main=False, resume_step=5)
  writer.write_scalars(1, {"loss": 1.0})
  writer.write_texts(1, {"a": "b"})
  writer.write_hparams({"a": 1})
  writer.flush()
  writer.close()
  progress = writers.create_progress(10, writer, is_main=False)
  for step in range(1, 11):
    progress(step)
  with progress.timed("eval"):
    pass
  assert not workdir.exists()


def test_flatten_hparams():
  config = ml_collections.ConfigDict({"seed": 0, "dataset": {"image_size": (32, 32), "mean": None},
                                      "optimizer": {"name": "sgd", "nesterov": True, "lr": np.float32(0.5)}})
  assert writers.flatten_hparams(config) == {
      "seed": 0, "dataset.image_size": "(32, 32)", "dataset.mean": "None",
      "optimizer.name": "sgd", "optimizer.nesterov": True, "optimizer.lr": 0.5}


def test_progress_writes_steps_per_sec(tmp_path):
  with writers.create_writer(str(tmp_path), is_main=True) as writer:
    progress = writers.create_progress(100, writer, is_main=True, every_steps=None, every_secs=30.0)
    for step in range(1, 101):
      progress(step, t=step * 0.25)  # 4 steps/s; reports after 30 s and at the last step
  rates = [(r["step"], r["steps_per_sec"]) for r in _jsonl(tmp_path) if "steps_per_sec" in r]
  assert rates and rates[-1][0] == 100
  assert all(rate == pytest.approx(4.0) for _, rate in rates)


def test_fallback_progress_every_steps_and_timed(tmp_path):
  writer = writers.JsonlWriter(str(tmp_path / "metrics.jsonl"))
  progress = writers.Progress(20, writer, every_steps=5, every_secs=None)
  with progress.timed("eval"):
    pass
  reported = [step for step in range(1, 21) if progress(step, t=step * 0.1)]
  writer.close()
  assert reported == [5, 10, 15, 20]
  assert [r["step"] for r in _jsonl(tmp_path)] == [5, 10, 15, 20]
  assert _jsonl(tmp_path)[0]["steps_per_sec"] == pytest.approx(10.0)


def test_parameter_overview():
  params = {"conv": {"kernel": np.zeros((3, 3, 3, 16), np.float32), "bias": np.zeros((16,), np.float32)},
            "head": {"kernel": jnp.zeros((16, 10), jnp.bfloat16)}}
  table = writers.parameter_overview(params)
  assert "conv/kernel" in table and "(3, 3, 3, 16)" in table and "bfloat16" in table
  assert "Total: 608 parameters" in table.splitlines()[-1]  # 432 + 16 + 160


def test_restart_from_step_zero_drops_a_killed_runs_lines(tmp_path):
  """A run killed before its first checkpoint restarts at step 0: its old lines must not stay as duplicates."""
  with writers.create_writer(str(tmp_path), is_main=True, resume_step=0) as writer:
    writer.write_scalars(1, {"loss": 1.0})
  with writers.create_writer(str(tmp_path), is_main=True, resume_step=0) as writer:
    writer.write_scalars(1, {"loss": 0.9})
  assert _jsonl(tmp_path) == [{"step": 1, "loss": 0.9}]
