"""The 'mlflow' and 'wandb' writers against the real libraries: the MLflow store read back with MlflowClient, the
W&B offline run read back from its transaction log with wandb's own record protos."""

import glob
import json
import os
import struct
import subprocess
import sys

import pytest
from conftest import tiny_config

from jaxcls.core.errors import ConfigError
from jaxcls.training import loop as train
from jaxcls.training import trackers, writers

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")


def _mlflow_run(workdir):
  """The one run of the workdir's default store, and its client."""
  client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
  experiment = client.get_experiment_by_name("jaxcls")
  runs = client.search_runs([experiment.experiment_id])
  assert len(runs) == 1
  return client, runs[0]


def _steps(client, run_id, key):
  return sorted(m.step for m in client.get_metric_history(run_id, key))


def _artifacts(client, run_id, path=None):
  return sorted(a.path for a in client.list_artifacts(run_id, path))


def test_mlflow_writer_round_trip(tmp_path):
  """Scalars per step, params that apply, artifacts at close: read back with MLflow's own client."""
  (tmp_path / "report.json").write_text("{}")
  (tmp_path / "plots").mkdir()
  (tmp_path / "plots" / "confusion.png").write_bytes(b"png")
  config = tiny_config(**{"optimizer.name": "adamw"})
  with writers.create_writer(str(tmp_path), is_main=True, resume_step=0, names=("mlflow",), config=config) as w:
    w.write_hparams(config.to_dict())
    w.write_scalars(1, {"train/loss": 2.0})
    w.write_scalars(2, {"train/loss": 1.5, "eval/accuracy": 0.25})
  client, run = _mlflow_run(tmp_path)
  assert run.info.status == "FINISHED"
  assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")] == [(1, 2.0), (2, 1.5)]
  params = run.data.params
  assert params["optimizer.name"] == "adamw" and params["optimizer.b2"] == "0.999"
  assert not [k for k in params if k.startswith("optimizer.muon") or k == "optimizer.momentum"]
  assert params["model.widths"] == "(8, 16)" and params["batch_size"] == "16"
  assert _artifacts(client, run.info.run_id) == ["plots", "report.json"]
  assert _artifacts(client, run.info.run_id, "plots") == ["plots/confusion.png"]


def test_mlflow_tracking_uri_from_the_config_and_the_environment(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # MLflow's default artifact root for a store of one's own is ./mlruns
  store = f"sqlite:///{tmp_path}/elsewhere.db"
  config = tiny_config(**{"mlflow.tracking_uri": store, "mlflow.experiment": "mine"})
  with writers.create_writer(str(tmp_path / "a"), is_main=True, names=("mlflow",), config=config) as w:
    w.write_scalars(3, {"eval/accuracy": 0.5})
  assert not (tmp_path / "a" / "mlflow.db").exists()
  client = mlflow.MlflowClient(tracking_uri=store)
  (run,) = client.search_runs([client.get_experiment_by_name("mine").experiment_id])
  assert run.data.metrics == {"eval/accuracy": 0.5}
  monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
  with writers.create_writer(str(tmp_path / "b"), is_main=True, names=("mlflow",)) as w:  # no config: env
    w.write_scalars(1, {"x": 1.0})
  assert len(client.search_runs([client.get_experiment_by_name("jaxcls").experiment_id])) == 1
  assert not (tmp_path / "b" / "mlflow.db").exists()


def test_a_missing_tracker_package_is_one_config_error(tmp_path):
  """In a process where `mlflow` and `wandb` cannot be imported, naming them is one line with the pip command."""
  code = (
    "import sys; sys.modules['mlflow'] = None; sys.modules['wandb'] = None\n"
    "from jaxcls.core.errors import ConfigError\n"
    "from jaxcls.training import writers\n"
    "for name in ('mlflow', 'wandb'):\n"
    "  try:\n"
    "    writers.create_writer(sys.argv[1], is_main=True, names=(name,))\n"
    "  except ConfigError as e:\n"
    "    print(e)\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", code, str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
  )
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 2, out.stderr[-2000:]
  assert "`pip install mlflow`" in lines[0] and "`pip install wandb`" in lines[1]


def test_trackers_are_imported_only_when_named(tmp_path):
  code = (
    "import sys\nfrom jaxcls.training import writers\n"
    "w = writers.create_writer(sys.argv[1], is_main=True); w.write_scalars(1, {'a': 1.0}); w.close()\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'wandb')))\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", code, str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
  )
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-2000:]


def test_mlflow_default_store_needs_a_local_workdir():
  with pytest.raises(ConfigError, match="tracking_uri"):
    trackers._local(trackers.paths.path("gs://bucket/run"), "mlflow", "its sqlite store")


def test_a_store_mlflow_cannot_open_is_one_config_error(tmp_path):
  config = tiny_config(**{"mlflow.tracking_uri": "nosuchscheme://x"})
  with pytest.raises(ConfigError, match="cannot use the tracking URI 'nosuchscheme://x'") as error:
    writers.create_writer(str(tmp_path), is_main=True, names=("jsonl", "mlflow"), config=config)
  assert "\n" not in str(error.value)


def test_wandb_without_a_login_or_offline_mode_is_one_config_error(tmp_path):
  """A fresh HOME (no netrc), no API key, no WANDB_MODE, stdin not a terminal: wandb refuses, in one line."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
  env.update(HOME=str(tmp_path / "home"), PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  code = (
    "import sys\nfrom jaxcls.core.errors import ConfigError\nfrom jaxcls.training import writers\n"
    "try:\n  writers.create_writer(sys.argv[1], is_main=True, names=('wandb',))\n"
    "except ConfigError as e:\n  print(e)\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", code, str(tmp_path / "run")],
    capture_output=True,
    text=True,
    timeout=120,
    env=env,
    stdin=subprocess.DEVNULL,
  )
  assert "wandb login" in out.stdout and "WANDB_MODE=offline" in out.stdout, out.stderr[-2000:]
  assert len(out.stdout.strip().splitlines()) == 1


# --- W&B: the offline run folder, read with wandb's record protos. ---


def read_wandb_log(path):
  """The records of a `.wandb` transaction log: wandb's LevelDB-style framing (a 7-byte ':W&B' header, 32 KiB
  blocks of chunks with a 7-byte header: crc32c, length, type FULL/FIRST/MIDDLE/LAST) holding
  `wandb_internal_pb2.Record`s. wandb 0.31 ships no Python reader (its old `sdk.internal.datastore` is gone)."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top

  data = open(path, "rb").read()
  assert data[:4] == b":W&B"
  block, pos, pending, records = 32768, 7, b"", []
  while pos + 7 <= len(data):
    left = block - pos % block
    if left < 7:
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
    if length == 0 and kind == 0:  # zero padding to the end of a block
      pos += left
      continue
    pending += data[pos + 7 : pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):  # FULL or LAST: a whole record
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
      pending = b""
  return records


def _wandb_history(workdir):
  """({step: {key: value}}, config {key: value}) of the workdir's one offline W&B run."""
  (log,) = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))
  history, config = {}, {}
  for record in read_wandb_log(log):
    kind = record.WhichOneof("record_type")
    if kind == "history":
      row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
      history[row.pop("_step")] = {k: v for k, v in row.items() if not k.startswith("_")}
    elif kind in ("run", "config"):
      updates = record.run.config.update if kind == "run" else record.config.update
      config.update({u.key: json.loads(u.value_json) for u in updates if u.key != "_wandb"})
  return history, config, os.path.dirname(log)


def test_wandb_offline_run(tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")
  (tmp_path / "report.md").write_text("# report\n")
  config = tiny_config(**{"optimizer.name": "sgd"})
  with writers.create_writer(str(tmp_path), is_main=True, resume_step=0, names=("wandb",), config=config) as w:
    w.write_hparams(config.to_dict())
    w.write_scalars(1, {"train/loss": 2.0})
    w.write_scalars(2, {"train/loss": 1.5, "eval/accuracy": 0.25})
  history, logged, run_dir = _wandb_history(tmp_path)
  assert history == {1: {"train/loss": 2.0}, 2: {"train/loss": 1.5, "eval/accuracy": 0.25}}
  assert logged["optimizer.name"] == "sgd" and logged["optimizer.momentum"] == 0.9
  assert not [k for k in logged if k.startswith("optimizer.muon") or k == "optimizer.b1"]
  assert os.path.exists(os.path.join(run_dir, "files", "report.md"))


# --- Both after a real (tiny) training run. ---


@pytest.mark.slow
def test_mlflow_and_wandb_after_a_training_run_and_its_resume(tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")
  workdir = str(tmp_path / "run")
  config = tiny_config(writers=("jsonl", "log", "mlflow", "wandb"), **{"optimizer.name": "adamw"})
  train.train_and_evaluate(config, workdir)
  client, run = _mlflow_run(workdir)
  run_id = run.info.run_id
  assert _steps(client, run_id, "train/loss") == list(range(1, 13))
  assert _steps(client, run_id, "eval/accuracy") == [6, 12]
  assert {"report.json", "report.md", "config.json", "plots"} <= set(_artifacts(client, run_id))
  assert _artifacts(client, run_id, "plots")
  assert run.data.params["optimizer.name"] == "adamw"
  assert not [k for k in run.data.params if "muon" in k]
  history, _, _ = _wandb_history(workdir)
  assert sorted(s for s, row in history.items() if "train/loss" in row) == list(range(1, 13))
  # A longer schedule on the same workdir resumes: the same MLflow run gets the new steps.
  train.train_and_evaluate(
    tiny_config(writers=("jsonl", "mlflow"), num_train_steps=16, **{"optimizer.name": "adamw"}), workdir
  )
  client, run = _mlflow_run(workdir)
  assert run.info.run_id == run_id and run.info.status == "FINISHED"
  assert _steps(client, run_id, "train/loss") == list(range(1, 17))


@pytest.mark.slow
def test_the_loop_hands_config_mlflow_to_the_writer(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a store of one's own keeps MLflow's default artifact root: ./mlruns
  store = f"sqlite:///{tmp_path}/shared.db"
  config = tiny_config(
    writers=("jsonl", "mlflow"),
    num_train_steps=4,
    eval_every_steps=4,
    **{"mlflow.tracking_uri": store, "mlflow.experiment": "team"},
  )
  train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "mlflow.db").exists()
  client = mlflow.MlflowClient(tracking_uri=store)
  (run,) = client.search_runs([client.get_experiment_by_name("team").experiment_id])
  assert _steps(client, run.info.run_id, "train/loss") == [1, 2, 3, 4] and run.info.run_name == "run"
  assert "report.json" in _artifacts(client, run.info.run_id) and (tmp_path / "mlruns").is_dir()
