"""Tests of jaxcls.training.writers: writers by name, TensorBoard events read back, JSONL and resume, progress,
imports."""

import json
import logging
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

from jaxcls.core.errors import ConfigError
from jaxcls.training import writers

REPO = pathlib.Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "clu", "tensorflow_datasets")


def _events(logdir):
  """{tag: [(step, value)]} for scalars in either format, plus {tag: plugin} for every tensor tag."""
  acc = event_accumulator.EventAccumulator(
    str(logdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
  )
  acc.Reload()
  scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
  plugins = {}
  for tag in acc.Tags()["tensors"]:
    plugins[tag] = acc.SummaryMetadata(tag).plugin_data.plugin_name
    if plugins[tag] == "scalars":  # TF2 summaries (clu's writer) store scalars as tensors
      scalars[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
    elif plugins[tag] == "text":
      plugins[tag] = ("text", [tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors(tag)])
  return scalars, plugins


def _jsonl(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _run_python(code, tmp_path):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]), JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


# --- Writers by name. ---


@pytest.mark.parametrize(
  "value, expected",
  [
    (None, ("tensorboard", "jsonl", "log")),
    (("jsonl",), ("jsonl",)),
    ("tensorboard,jsonl", ("tensorboard", "jsonl")),
    (" jsonl , log ", ("jsonl", "log")),
    ("('clu', 'jsonl')", ("clu", "jsonl")),
    ("log", ("log",)),
    ((), ()),
  ],
)
def test_writer_names_parse_like_the_command_line(value, expected):
  assert writers.writer_names(value) == expected


@pytest.mark.parametrize(
  "value, message",
  [
    (
      ("tensorboard", "mlflw"),
      r"Unknown writer 'mlflw'\. Did you mean 'mlflow'\? Known: clu, jsonl, log, mlflow, tensorboard, wandb\.",
    ),
    ("jsonl,tensorbord", r"Did you mean 'tensorboard'\?"),
    (("jsonl", "jsonl"), "names a writer twice"),
    ("tensorboard,clu", "names both 'tensorboard' and 'clu'"),
  ],
)
def test_bad_writer_names_are_one_line_config_errors(value, message, tmp_path):
  with pytest.raises(ConfigError, match=message) as error:
    writers.create_writer(str(tmp_path / "run"), is_main=True, names=value)
  assert "\n" not in str(error.value)
  assert not (tmp_path / "run").exists()


def test_names_pick_the_writers_in_order(tmp_path):
  with writers.create_writer(str(tmp_path), is_main=True, names="jsonl,log") as writer:
    assert [type(w).__name__ for w in writer.writers] == ["JsonlWriter", "LogWriter"]
    writer.write_scalars(1, {"loss": 1.0})
  assert not (tmp_path / "tensorboard").exists()
  assert _jsonl(tmp_path) == [{"step": 1, "loss": 1.0}]


def test_clu_without_clu_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
  monkeypatch.setitem(sys.modules, "clu", None)
  with pytest.raises(ConfigError, match=r"names 'clu'.*pip install 'jaxcls\[tf\]'"):
    writers.create_writer(str(tmp_path), is_main=True, names=("clu",))


# --- TensorBoard events without TensorFlow. ---


def test_default_writers_read_back_with_event_accumulator(tmp_path):
  """Every scalar is a simple_value (Scalars() reads it), and texts, hparams and images land too."""
  with writers.create_writer(str(tmp_path), is_main=True) as writer:
    writer.write_scalars(1, {"train/loss": np.float32(2.5), "train/accuracy": jnp.array(0.25)})
    writer.write_scalars(2, {"train/loss": 1.5, "eval/accuracy": np.float64(0.75), "lr": 0.1})
    writer.write_texts(2, {"note": "hello"})
    writer.write_hparams({"optimizer": {"name": "sgd", "learning_rate": 0.1}, "widths": (8, 16)})
    writer.write_images(2, {"figure": np.full((1, 5, 7, 3), 200, np.uint8), "grid": np.zeros((2, 4, 4, 1), np.uint8)})
  acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard")).Reload()
  written = {
    "train/loss": [(1, 2.5), (2, 1.5)],
    "train/accuracy": [(1, 0.25)],
    "eval/accuracy": [(2, 0.75)],
    "lr": [(2, pytest.approx(0.1))],
  }
  assert sorted(acc.Tags()["scalars"]) == sorted(written)
  for tag, expected in written.items():
    assert [(e.step, e.value) for e in acc.Scalars(tag)] == expected
  image = acc.Images("figure")[0]
  assert (image.step, image.width, image.height) == (2, 7, 5)
  assert [len(acc.Images(f"grid/{i}")) for i in range(2)] == [1, 1]
  _, plugins = _events(tmp_path / "tensorboard")
  assert plugins["note"] == ("text", ["hello"])
  assert "hparams" in plugins.values()
  assert _jsonl(tmp_path) == [
    {"step": 1, "train/loss": 2.5, "train/accuracy": 0.25},
    {"step": 2, "train/loss": 1.5, "eval/accuracy": 0.75, "lr": 0.1},
  ]


def test_events_are_on_disk_before_close(tmp_path):
  """What a kill leaves: every write is flushed at once."""
  writer = writers.create_writer(str(tmp_path), is_main=True, names=("tensorboard",))
  writer.write_scalars(3, {"loss": 0.5})
  scalars, _ = _events(tmp_path / "tensorboard")
  assert scalars["loss"] == [(3, 0.5)]
  writer.close()


def test_resume_drops_events_after_the_checkpoint(tmp_path):
  """The resumed run's restart marker makes TensorBoard drop the killed run's steps after resume_step."""
  with writers.create_writer(str(tmp_path), is_main=True, resume_step=0) as writer:
    for step in (10, 20, 30, 40):
      writer.write_scalars(step, {"loss": step / 10})
  with writers.create_writer(str(tmp_path), is_main=True, resume_step=20) as writer:
    writer.write_scalars(30, {"loss": 0.3})
  assert len(os.listdir(tmp_path / "tensorboard")) == 2
  scalars, _ = _events(tmp_path / "tensorboard")
  assert scalars["loss"] == [(10, 1.0), (20, 2.0), (30, pytest.approx(0.3))]
  assert [r["step"] for r in _jsonl(tmp_path)] == [10, 20, 30]


@pytest.mark.slow
def test_clu_writer_still_writes_tf2_summaries(tmp_path):
  pytest.importorskip("clu.metric_writers")
  with writers.create_writer(str(tmp_path), is_main=True, names=("clu", "jsonl")) as writer:
    assert type(writer.writers[0]).__name__ == "SummaryWriter"
    writer.write_scalars(1, {"loss": np.float32(2.5)})
    writer.write_texts(1, {"note": "hello"})
  scalars, plugins = _events(tmp_path / "tensorboard")
  assert scalars["loss"] == [(1, 2.5)]
  assert plugins["note"] == ("text", ["hello"])
  assert _jsonl(tmp_path) == [{"step": 1, "loss": 2.5}]


# --- Imports: a default run pays for neither TensorFlow nor clu. ---


@pytest.mark.slow
def test_default_writers_and_progress_import_no_tensorflow(tmp_path):
  out = _run_python(
    f"""
      import sys
      import numpy as np
      from jaxcls.training import writers
      writer = writers.create_writer(sys.argv[1], is_main=True)
      writer.write_scalars(1, {{"loss": np.float64(0.5)}})
      writer.write_texts(1, {{"note": "no tf"}})
      writer.write_hparams({{"model": {{"name": "resnet"}}}})
      writer.write_images(1, {{"figure": np.zeros((1, 4, 4, 3), np.uint8)}})
      progress = writers.create_progress(10, writer, is_main=True)
      for step in range(1, 11):
        progress(step)
      writer.close()
      print(type(progress).__name__, sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY}))
  """,
    tmp_path,
  )
  assert out.strip() == "Progress []"


@pytest.mark.slow
def test_default_training_imports_no_tensorflow_clu_or_tfds(tmp_path):
  """A tiny default-config training run, in a fresh process, never imports TensorFlow, clu or TFDS."""
  out = _run_python(
    f"""
      import sys
      from conftest import tiny_config
      from jaxcls.training import loop as train
      config = tiny_config(num_train_steps=4, eval_every_steps=4, checkpoint_every_steps=4)
      assert tuple(config.writers) == ("tensorboard", "jsonl", "log"), config.writers
      train.train_and_evaluate(config, sys.argv[1] + "/run")
      print(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY}))
  """,
    tmp_path,
  )
  assert out.strip().splitlines()[-1] == "[]"
  acc = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
  assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]


# --- JSONL and resume. ---


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
  assert not workdir.exists()


def test_restart_from_step_zero_drops_a_killed_runs_lines(tmp_path):
  """A run killed before its first checkpoint restarts at step 0: its old lines must not stay as duplicates."""
  with writers.create_writer(str(tmp_path), is_main=True, resume_step=0) as writer:
    writer.write_scalars(1, {"loss": 1.0})
  with writers.create_writer(str(tmp_path), is_main=True, resume_step=0) as writer:
    writer.write_scalars(1, {"loss": 0.9})
  assert _jsonl(tmp_path) == [{"step": 1, "loss": 0.9}]
  scalars, _ = _events(tmp_path / "tensorboard")
  assert scalars["loss"] == [(1, pytest.approx(0.9))]


def test_flatten_hparams():
  config = ml_collections.ConfigDict(
    {
      "seed": 0,
      "dataset": {"image_size": (32, 32), "mean": None},
      "optimizer": {"name": "sgd", "nesterov": True, "lr": np.float32(0.5)},
    }
  )
  assert writers.flatten_hparams(config) == {
    "seed": 0,
    "dataset.image_size": "(32, 32)",
    "dataset.mean": "None",
    "optimizer.name": "sgd",
    "optimizer.nesterov": True,
    "optimizer.lr": 0.5,
  }


# --- The log: short lines. ---

EVAL = {
  "eval/num_examples": 360.0,
  "eval/loss": 2.1158,
  "eval/accuracy": 0.2861,
  "eval/top5_accuracy": 0.8556,
  **{f"eval/{avg}_{m}": 0.3 for avg in ("macro", "weighted", "micro") for m in ("precision", "recall", "f1")},
  **{f"eval/per_class/class_{k}/f1": 0.5 for k in range(100)},
}


def test_an_eval_log_line_is_short_and_leads_with_the_headline_metrics(caplog):
  caplog.set_level(logging.INFO)
  writers.LogWriter().write_scalars(300, EVAL)
  (line,) = [r.getMessage() for r in caplog.records]
  assert len(line) <= writers.MAX_LOG_LINE <= 130  # absl's prefix adds about 70: under 200 in all
  assert line.startswith("[300] eval: loss=2.116 accuracy=0.2861 top5_accuracy=0.8556")
  shown = line.count("=")
  assert line.endswith(f"(+{len(EVAL) - shown} more in metrics.jsonl)")


def test_a_short_log_line_shows_every_value():
  line = writers.scalars_line(5, {"train/loss": 0.5, "train/accuracy": 0.75})
  assert line == "[5] train: loss=0.5 accuracy=0.75"
  assert writers.scalars_line(5, {"steps_per_sec": 3.0, "train/loss": 1.0}) == "[5] steps_per_sec=3 train/loss=1"


def test_the_hparams_log_is_a_short_summary(caplog):
  caplog.set_level(logging.INFO)
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top

  config = tiny_config(**{"optimizer.name": "adamw"})
  with writers.create_writer("/nonexistent-unused", is_main=False) as writer:
    writer.write_hparams(config)  # the non-main writer logs nothing
  writers.MultiWriter([writers.LogWriter()]).write_hparams(config)
  (text,) = [r.getMessage() for r in caplog.records]
  lines = text.splitlines()
  assert len(lines) <= 10 and all(len(line) <= 200 for line in lines)
  assert "muon" not in text and "momentum" not in text  # AdamW reads neither
  assert "  optimizer: adamw (learning_rate=0.05, b1=0.9, b2=0.999, eps=1e-08, weight_decay=0.0005)" in lines
  assert "  model: simple_cnn (dropout=0.1, widths=(8, 16))" in lines


def test_parameter_overview():
  params = {
    "conv": {"kernel": np.zeros((3, 3, 3, 16), np.float32), "bias": np.zeros((16,), np.float32)},
    "head": {"kernel": jnp.zeros((16, 10), jnp.bfloat16)},
  }
  table = writers.parameter_overview(params)
  assert "conv/kernel" in table and "(3, 3, 3, 16)" in table and "bfloat16" in table
  assert "Total: 608 parameters" in table.splitlines()[-1]  # 432 + 16 + 160


def test_a_large_model_is_shown_by_module():
  """161 arrays in 4 stages of blocks: at most 24 rows, grouped as deep as fits, the total unchanged."""
  params = {
    "stem": {"kernel": np.zeros((7, 7, 3, 64), np.float32)},
    **{
      f"layer{i}": {
        f"block{j}": {
          "conv": {"kernel": np.zeros((3, 3, 8, 8), np.float32)},
          "bn": {"scale": np.zeros((8,), np.float32), "bias": np.zeros((8,), np.float32)},
        }
        for j in range(10)
      }
      for i in range(1, 5)
    },
    "head": {"kernel": np.zeros((8, 10), np.float32), "bias": np.zeros((10,), np.float32)},
  }
  table = writers.parameter_overview(params)
  lines = table.splitlines()
  assert len(lines) <= 24 + 5 and "| Module" in lines[1]
  assert any(line.startswith("| layer1 ") and "| 30 " in line for line in lines)  # 10 blocks x 3 arrays
  total = 7 * 7 * 3 * 64 + 4 * 10 * (576 + 16) + 90
  assert lines[-1].startswith(f"Total: {total:,} parameters")
