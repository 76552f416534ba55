"""The workdir format (jaxcls/store/workdir.py): config files, the re-run guard and the workdir lock."""

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import REPO, subprocess_env, tiny_config
from gcs_emulator import gcs  # noqa: F401  pylint: disable=unused-import  (the fixture)

from jaxcls.core.errors import ConfigError, WorkdirBusyError
from jaxcls.store import restore, workdir
from jaxcls.training import loop as train

# ------------------------------------------------------------------------------------------- the re-run guard


def _fake_run(path, config=None, step: int = 4):
  """A workdir as a run leaves it, for the guard: its config.json and one finished checkpoint folder."""
  config = config or tiny_config()
  os.makedirs(os.path.join(path, "checkpoints", str(step)), exist_ok=True)
  os.makedirs(os.path.join(path, "checkpoints", f"{step + 4}.orbax-checkpoint-tmp-123"), exist_ok=True)
  workdir.write_config(path, config)
  return str(path)


@pytest.mark.parametrize(
  "key,new,shown",
  [
    ("optimizer.learning_rate", 0.1, "optimizer.learning_rate: 0.05 -> 0.1"),
    ("batch_size", 32, "batch_size: 16 -> 32"),
    ("augment", "flip_lr", "augment: 'random_crop(padding=1)|flip_lr' -> 'flip_lr'"),
    ("seed", 3, "seed: 0 -> 3"),
    ("num_train_steps", 8, "num_train_steps: 12 -> 8"),  # shrinking is a training change
    ("dataset.mean", (0.5, 0.5, 0.5), "dataset.mean: null -> [0.5, 0.5, 0.5]"),
  ],
)
def test_a_changed_training_key_is_refused_with_the_diff(tmp_path, key, new, shown):
  run = _fake_run(tmp_path)
  changed = tiny_config(**{key: new})
  with pytest.raises(ConfigError) as error:
    workdir.check_rerun(run, changed)
  message = str(error.value)
  assert shown in message and "\n" not in message
  assert "new --workdir" in message and "--config.allow_config_change=True" in message
  assert "checkpoint step 4" in message  # the temporary (unfinished) folder at 8 is not a checkpoint


def test_several_changes_are_listed_and_reporting_keys_are_not(tmp_path):
  run = _fake_run(tmp_path)
  changed = tiny_config(seed=1, batch_size=32, log_every_steps=7, eval_tta="flip")
  with pytest.raises(ConfigError, match=r"\(batch_size: 16 -> 32; seed: 0 -> 1\)"):
    workdir.check_rerun(run, changed)


def test_reporting_keys_and_a_longer_run_are_allowed(tmp_path, caplog):
  run = _fake_run(tmp_path)
  changed = tiny_config(
    log_every_steps=5,
    eval_every_steps=3,
    checkpoint_every_steps=2,
    keep_checkpoints=5,
    eval_batch_size=8,
    eval_tta="flip",
    num_train_steps=30,
    async_checkpointing=True,
    prefetch_to_device=0,
    compilation_cache_dir="/tmp/x",
    evaluators=("fewshot",),
    **{"fewshot.shots": (1,), "dataset.eval_split": "train", "task.threshold": 0.3},
  )
  with caplog.at_level(logging.WARNING):
    rerun = workdir.check_rerun(run, changed)
  assert rerun.step == 4 and rerun.training == []
  assert ("num_train_steps", 12, 30) in rerun.other and ("log_every_steps", 1, 5) in rerun.other
  assert "num_train_steps grows from 12 to 30 at step 4" in caplog.text and "'cosine'" in caplog.text


def test_a_key_missing_from_an_older_config_counts_as_its_default(tmp_path):
  saved = tiny_config().to_dict()
  del saved["ema_decay"], saved["optimizer"]["muon_ns_steps"]
  os.makedirs(tmp_path / "checkpoints" / "4")
  (tmp_path / "config.json").write_text(json.dumps(saved, default=list))
  assert workdir.check_rerun(str(tmp_path), tiny_config()).training == []
  with pytest.raises(ConfigError, match="ema_decay: 0.0 -> 0.9"):
    workdir.check_rerun(str(tmp_path), tiny_config(ema_decay=0.9))


def test_no_checkpoint_or_no_config_means_no_earlier_run(tmp_path):
  workdir.write_config(tmp_path, tiny_config())  # died before its first checkpoint
  assert workdir.check_rerun(str(tmp_path), tiny_config(batch_size=32)).step is None
  other = tmp_path / "other"
  os.makedirs(other / "checkpoints" / "4")
  assert workdir.check_rerun(str(other), tiny_config()).step is None


def test_allow_config_change_records_the_change_and_keeps_the_earlier_config(tmp_path):
  run = _fake_run(tmp_path)
  before = (tmp_path / "config.json").read_text()
  changed = tiny_config(allow_config_change=True, **{"optimizer.learning_rate": 0.2})
  rerun = workdir.check_rerun(run, changed, allow=True)
  assert rerun.training == [("optimizer.learning_rate", 0.05, 0.2)]
  workdir.write_run_files(run, changed, ["a", "b"], rerun)
  workdir.write_run_files(run, changed, ["a", "b"], workdir.check_rerun(run, changed))  # same again: no record
  history = workdir.read_history(run)
  assert len(history) == 1 and history[0]["step"] == 4 and history[0]["previous_config"] == json.loads(before)
  assert history[0]["changes"] == [{"key": "optimizer.learning_rate", "old": 0.05, "new": 0.2, "training": True}]
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] == 0.2
  assert json.loads((tmp_path / "classes.json").read_text()) == ["a", "b"]


@pytest.mark.parametrize(
  "text,shown",
  [("", "empty file"), ('{"seed": 0, "model": {', "Expecting"), ("[1, 2]", "JSON list, not a config object")],
)
def test_a_damaged_config_json_is_one_line(tmp_path, text, shown):
  (tmp_path / "config.json").write_text(text)
  with pytest.raises(ConfigError) as error:
    restore.load_config(str(tmp_path))
  message = str(error.value)
  assert shown in message and str(tmp_path / "config.json") in message and "new --workdir" in message
  assert "\n" not in message
  # Training into it: refused unless allowed, and then the damaged text is kept in the history.
  os.makedirs(tmp_path / "checkpoints" / "4")
  with pytest.raises(ConfigError, match="allow_config_change=True to resume checkpoint step 4"):
    workdir.check_rerun(str(tmp_path), tiny_config())
  rerun = workdir.check_rerun(str(tmp_path), tiny_config(), allow=True)
  workdir.write_run_files(str(tmp_path), tiny_config(), ["a"], rerun)
  assert workdir.read_history(str(tmp_path))[0]["previous_config_text"] == text
  assert restore.load_config(str(tmp_path)).seed == 0


def test_a_missing_config_json_keeps_its_message_and_a_folder_in_its_place_is_one_line(tmp_path, caplog):
  with pytest.raises(ConfigError, match="config.json does not exist; --workdir must be a directory"):
    restore.load_config(str(tmp_path))
  os.makedirs(tmp_path / "checkpoints" / "4")
  with caplog.at_level(logging.WARNING):  # a deleted config.json: only the checkpoint's shape check is left
    assert workdir.check_rerun(str(tmp_path), tiny_config()).step is None
  assert "config.json is missing, so this run cannot check" in caplog.text
  os.makedirs(tmp_path / "config.json")
  for call in (
    lambda: restore.load_config(str(tmp_path)),
    lambda: workdir.check_rerun(str(tmp_path), tiny_config()),
    lambda: workdir.check_rerun(str(tmp_path), tiny_config(), allow=True),
  ):
    with pytest.raises(ConfigError, match="config.json is not a file; remove it"):
      call()


def test_training_refuses_a_changed_rerun_allows_it_with_the_flag_and_passes_the_same_config(tmp_path):
  run = str(tmp_path / "run")
  cache = {"compilation_cache_dir": str(tmp_path / "compiled")}  # not a training key; the later runs load it
  first = tiny_config(num_train_steps=4, checkpoint_every_steps=2, eval_every_steps=4, **cache)
  train.train_and_evaluate(first, run)
  assert not os.path.exists(os.path.join(run, "lock.json"))  # released after success
  with pytest.raises(ConfigError, match=r"optimizer.learning_rate: 0.05 -> 0.02.*allow_config_change=True"):
    train.train_and_evaluate(tiny_config(num_train_steps=6, **{"optimizer.learning_rate": 0.02}), run)
  assert not os.path.exists(os.path.join(run, "lock.json"))  # released after an error
  assert not os.path.exists(os.path.join(run, workdir.HISTORY_NAME))
  allowed = tiny_config(
    num_train_steps=6,
    checkpoint_every_steps=2,
    eval_every_steps=4,
    allow_config_change=True,
    **cache,
    **{"optimizer.learning_rate": 0.02},
  )
  report = train.train_and_evaluate(allowed, run)
  assert report["step"] == 6  # resumed from step 4 and trained on
  (record,) = workdir.read_history(run)
  assert record["step"] == 4 and record["previous_config"]["optimizer"]["learning_rate"] == 0.05
  assert {(c["key"], c["training"]) for c in record["changes"]} == {
    ("optimizer.learning_rate", True),
    ("num_train_steps", False),
  }
  # A finished workdir re-run with the config it now holds (the flag is not a training key) passes.
  again = tiny_config(
    num_train_steps=6, checkpoint_every_steps=2, eval_every_steps=4, **cache, **{"optimizer.learning_rate": 0.02}
  )
  assert train.train_and_evaluate(again, run)["step"] == 6
  assert len(workdir.read_history(run)) == 1  # nothing changed (the flag itself is not compared): no record
  assert not os.path.exists(os.path.join(run, "lock.json"))


# ------------------------------------------------------------------------------------------------- the lock


def _write_lock(path, **fields):
  record = {
    "host": socket.gethostname(),
    "pid": 1,
    "started": time.time() - 60,
    "heartbeat": time.time(),
    "token": "someone-else",
  }
  record.update(fields)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, workdir.LOCK_NAME), "w") as f:
    json.dump(record, f)
  return record


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _lock_record(path) -> dict:
  with open(os.path.join(path, workdir.LOCK_NAME)) as f:
    return json.load(f)


def test_a_lock_holds_host_pid_and_times_and_a_second_taker_is_refused(tmp_path):
  with workdir.WorkdirLock(str(tmp_path)) as lock:
    record = _lock_record(tmp_path)
    assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
    assert record["token"] == lock.token and abs(record["started"] - time.time()) < 60
    with pytest.raises(WorkdirBusyError) as error:
      workdir.WorkdirLock(str(tmp_path)).acquire()
    message = str(error.value)
    assert f"pid {os.getpid()}" in message and f"host {socket.gethostname()}" in message and "since " in message
    assert "new --workdir" in message and "\n" not in message
  assert not os.path.exists(tmp_path / workdir.LOCK_NAME)


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
  pid = _dead_pid()
  _write_lock(tmp_path, pid=pid)
  with caplog.at_level(logging.WARNING):
    with workdir.WorkdirLock(str(tmp_path)) as lock:
      assert _lock_record(tmp_path)["token"] == lock.token
  assert f"its process {pid} on this host is gone" in caplog.text and "Taking over the stale" in caplog.text


def test_a_live_local_process_holds_its_lock_and_a_reused_pid_does_not(tmp_path):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path, pid=sleeper.pid, pid_start=workdir._process_start(sleeper.pid))
    with pytest.raises(WorkdirBusyError, match=f"pid {sleeper.pid}"):
      workdir.WorkdirLock(str(tmp_path)).acquire()
    _write_lock(tmp_path, pid=sleeper.pid, pid_start="1")  # the pid now names a process started later
    with workdir.WorkdirLock(str(tmp_path)) as lock:
      assert _lock_record(tmp_path)["token"] == lock.token
  finally:
    sleeper.kill()
    sleeper.wait()


def test_another_hosts_lock_is_busy_while_fresh_and_stale_after_the_timeout(tmp_path, caplog):
  _write_lock(tmp_path, host="tpu-worker-7", pid=4242, heartbeat=time.time() - 30)
  with pytest.raises(WorkdirBusyError, match=r"host tpu-worker-7, pid 4242, since .* UTC, last heartbeat 3\d s ago"):
    workdir.WorkdirLock(str(tmp_path)).acquire()
  _write_lock(tmp_path, host="tpu-worker-7", pid=4242, heartbeat=time.time() - workdir.STALE_AFTER_S - 5)
  with caplog.at_level(logging.WARNING):
    with workdir.WorkdirLock(str(tmp_path)):
      pass
  assert "its last heartbeat was 9" in caplog.text and "stale after 900 s" in caplog.text


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00garbage"])
def test_an_unreadable_lock_is_taken_over(tmp_path, garbage):
  (tmp_path / workdir.LOCK_NAME).write_bytes(garbage)  # bad JSON, and bytes that are not even UTF-8
  with workdir.WorkdirLock(str(tmp_path)) as lock:
    assert _lock_record(tmp_path)["token"] == lock.token


def test_the_heartbeat_refreshes_and_a_lock_taken_over_meanwhile_is_never_removed(tmp_path, caplog):
  lock = workdir.WorkdirLock(str(tmp_path), heartbeat_every_s=0.2)
  lock.acquire()
  try:
    first = _lock_record(tmp_path)
    deadline = time.time() + 20
    while _lock_record(tmp_path)["heartbeat"] == first["heartbeat"] and time.time() < deadline:
      time.sleep(0.1)
    assert _lock_record(tmp_path)["heartbeat"] > first["heartbeat"]
  finally:
    lock.release()
  assert not os.path.exists(tmp_path / workdir.LOCK_NAME)
  lock = workdir.WorkdirLock(str(tmp_path), heartbeat_every_s=3600)
  lock.acquire()
  try:
    other = _write_lock(tmp_path, host="elsewhere", pid=7)  # another run took it over (it thought us stale)
    with caplog.at_level(logging.WARNING):
      assert not lock.heartbeat()
  finally:
    lock.release()
  assert _lock_record(tmp_path) == other
  assert "was taken over by another run" in caplog.text and "now belongs to another run" in caplog.text


def test_the_lock_is_released_after_an_error_inside(tmp_path):
  with pytest.raises(RuntimeError):
    with workdir.locked(str(tmp_path)):
      assert os.path.exists(tmp_path / workdir.LOCK_NAME)
      raise RuntimeError("boom")
  assert not os.path.exists(tmp_path / workdir.LOCK_NAME)
  with workdir.locked(str(tmp_path), is_main=False) as lock:  # other processes of a multi-process run: no lock
    assert lock is None and not os.path.exists(tmp_path / workdir.LOCK_NAME)


def test_a_workdir_that_is_a_file_or_cannot_be_created_is_one_line(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(ConfigError, match="is a file; --workdir must be a folder"):
    train.train_and_evaluate(tiny_config(), str(tmp_path / "file"))
  with pytest.raises(ConfigError, match=r"Cannot create the workdir .*file/run \(Not a directory\)"):
    workdir.WorkdirLock(str(tmp_path / "file" / "run")).acquire()
  os.makedirs(tmp_path / "run" / workdir.LOCK_NAME)  # a folder where the lock file goes
  with pytest.raises(ConfigError, match="Cannot read the workdir lock .*lock.json"):
    workdir.WorkdirLock(str(tmp_path / "run")).acquire()


@pytest.fixture
def gcs_via_gcsfs(gcs):  # noqa: F811
  """The emulator, with epath's once-per-process choice of TensorFlow's GCS client made again (EPATH_USE_TF is
  set by the `gcs` fixture, possibly after an earlier test made epath decide)."""
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top

  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  return gcs


def test_lock_and_config_files_on_gcs(gcs_via_gcsfs):
  url = gcs_via_gcsfs.url("run")
  with workdir.WorkdirLock(url) as lock:
    record = json.loads(workdir.lock_path(url).read_text())
    assert record["token"] == lock.token and record["pid"] == os.getpid()
    _ = lock.heartbeat()
    with pytest.raises(WorkdirBusyError, match=f"in use by another training run .*pid {os.getpid()}"):
      workdir.WorkdirLock(url).acquire()
  assert not workdir.lock_path(url).exists()
  workdir.write_config(url, tiny_config())
  (workdir.workdir_path(url) / "checkpoints" / "4" / "x").write_text("")  # object stores have no empty folders
  with pytest.raises(ConfigError, match="batch_size: 16 -> 32"):
    workdir.check_rerun(url, tiny_config(batch_size=32))
  changed = tiny_config(batch_size=32)
  rerun = workdir.check_rerun(url, changed, allow=True)
  workdir.write_run_files(url, changed, ["a"], rerun)
  workdir.write_run_files(url, tiny_config(), ["a"], workdir.check_rerun(url, tiny_config(), allow=True))
  history = workdir.read_history(url)  # two records: the rewrite kept the first line
  assert [h["previous_config"]["batch_size"] for h in history] == [16, 32]
  assert restore.load_config(url).batch_size == 16


_CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config

def get_config():
  return tiny_config(num_train_steps=300, eval_every_steps=300, checkpoint_every_steps=100, log_every_steps=50,
                     compilation_cache_dir="")  # compiled afresh, so the first run still holds the lock
"""


@pytest.mark.slow
def test_two_concurrent_runs_on_one_workdir(tmp_path):
  """The second of two real training processes fails fast with one line naming the first; the first finishes."""
  config_file = tmp_path / "tiny.py"
  config_file.write_text(textwrap.dedent(_CONFIG_FILE.format(tests=os.path.join(REPO, "tests"))))
  run = tmp_path / "run"
  command = [sys.executable, "-m", "jaxcls.main", f"--config={config_file}", f"--workdir={run}"]
  env = subprocess_env(1)  # one device: 2 virtual CPU devices under this contention can abort in an XLA
  # collective rendezvous (40 s), which is not what this test is about (see issue 14's note)
  first = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while not os.path.exists(run / workdir.LOCK_NAME) and first.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    assert os.path.exists(run / workdir.LOCK_NAME), first.communicate()
    started = time.time()
    second = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.poll() is None, "the first run ended before the second was refused; give it more steps"
    assert time.time() - started < 120
    errors = [line for line in second.stderr.splitlines() if line.startswith("jaxcls: error:")]
    assert second.returncode == 2 and len(errors) == 1 and "Traceback" not in second.stderr, second.stderr
    assert f"is in use by another training run (host {socket.gethostname()}, pid {first.pid}, since" in errors[0]
    out, err = first.communicate(timeout=600)
  finally:
    if first.poll() is None:
      first.kill()
      first.wait()
  assert first.returncode == 0, err[-3000:]
  assert json.loads((run / "report.json").read_text())["step"] == 300
  assert not os.path.exists(run / workdir.LOCK_NAME)


@pytest.mark.slow
def test_a_busy_workdir_stops_every_process_of_a_multi_process_run(tmp_path):
  """Only process 0 reads the lock; one broadcast tells process 1, so neither waits in a collective."""
  holder = _write_lock(tmp_path / "run", host="tpu-worker-7", pid=4242)
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  command = [
    sys.executable,
    "-m",
    "jaxcls.main",
    f"--config={os.path.join(REPO, 'configs', 'default.py')}",
    f"--workdir={tmp_path / 'run'}",
    f"--coordinator_address=localhost:{port}",
    "--num_processes=2",
  ]
  procs = [
    subprocess.Popen(
      command + [f"--process_id={i}"],
      env=subprocess_env(2),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    outputs = [p.communicate(timeout=300)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, err in zip(procs, outputs):
    assert p.returncode == 2 and "Traceback" not in err, err[-3000:]
  assert "jaxcls: error: The workdir" in outputs[0] and "host tpu-worker-7, pid 4242" in outputs[0]
  assert "jaxcls: error: Process 0 could not take the workdir lock" in outputs[1]
  assert _lock_record(tmp_path / "run") == holder  # left as it was


# ------------------------------------------------------------------------------------- one owner of the file names


def test_the_workdir_names_are_the_documented_ones_and_read_back(tmp_path):
  """store.workdir is the one module that names the workdir's files: these names are a user-facing contract."""
  from jaxcls import data  # pylint: disable=g-import-not-at-top

  root = str(tmp_path)
  assert workdir.config_path(root).name == "config.json" and workdir.classes_path(root).name == "classes.json"
  assert workdir.checkpoints_path(root).name == "checkpoints" and workdir.metrics_path(root).name == "metrics.jsonl"
  assert [p.name for p in workdir.report_paths(root)] == ["report.json", "report.md"]
  assert workdir.plots_path(root).name == "plots" and workdir.skipped_path(root).name == "skipped_files.txt"
  assert workdir.fewshot_path(root).name == "fewshot.json"
  assert workdir.eval_folder(root, "/data/new_images/").name.startswith("eval_data_new-images_")  # "_" joins the parts
  assert workdir.cache_dir(root) == os.path.join(root, "cache")
  from jaxcls.training import writers  # pylint: disable=g-import-not-at-top

  assert writers.JSONL_NAME == "metrics.jsonl" and writers.TENSORBOARD_DIR == "tensorboard"  # named here too
  assert not workdir.is_workdir(root)
  with pytest.raises(ConfigError, match="classes.json does not exist"):
    workdir.read_classes(root)
  info = data.DatasetInfo(
    num_classes=2,
    class_names=("ant", "bee"),
    image_shape=(8, 8, 3),
    num_train=4,
    num_eval=2,
    mean=(0.5,) * 3,
    std=(0.25,) * 3,
  )
  resolved = workdir.resolved_config(tiny_config(), info, num_train_steps=7)
  workdir.write_run_files(root, resolved, info.class_names)
  assert workdir.is_workdir(root) and workdir.read_classes(root) == ["ant", "bee"]
  saved = restore.load_config(root)
  assert saved.num_train_steps == 7 and tuple(saved.dataset.image_size) == (8, 8)
  assert tuple(saved.dataset.class_names) == ("ant", "bee") and tuple(saved.dataset.mean) == (0.5,) * 3
  assert restore.info_from_config(saved) == data.DatasetInfo(
    num_classes=2,
    class_names=("ant", "bee"),
    image_shape=(8, 8, 3),
    num_train=0,
    num_eval=0,
    mean=(0.5,) * 3,
    std=(0.25,) * 3,
  )
  workdir.classes_path(root).write_text('{"not": "a list"}')
  with pytest.raises(ConfigError, match="classes.json is damaged"):
    workdir.read_classes(root)


def test_one_builder_of_task_and_model_for_training_and_restore():
  """Training (weighted loss from the class counts) and restore (no counts) build the same head and model."""
  from jaxcls import data  # pylint: disable=g-import-not-at-top
  from jaxcls.store import build  # pylint: disable=g-import-not-at-top

  config = tiny_config(**{"task.class_weights": "balanced"})
  counted = data.DatasetInfo(
    num_classes=2,
    class_names=("ant", "bee"),
    image_shape=(8, 8, 3),
    num_train=4,
    num_eval=2,
    mean=(0.5,) * 3,
    std=(0.25,) * 3,
    train_class_counts=(3, 1),
  )
  task, model, task_config = build.build_task_and_model(config, counted)
  assert task_config["class_weights"] == (4 / 6, 2.0)
  restored_task, restored_model, restored_config = build.build_task_and_model(
    config, restore.info_from_config(workdir.resolved_config(config, counted, 4)), weighted=False
  )
  assert restored_config["class_weights"] == "none" and restored_task.num_outputs == task.num_outputs
  assert restored_model == model
  with pytest.raises(ConfigError, match="'balanced' needs the training class counts"):
    build.build_task_and_model(config, restore.info_from_config(workdir.resolved_config(config, counted, 4)))
