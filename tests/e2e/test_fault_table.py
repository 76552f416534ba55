"""benchmarks/fault_table.py: its classification of observations, its lost-data check, and a real run of a few cases."""

import importlib.util
import json
import os
import shutil
import subprocess

import pytest
from conftest import REPO, subprocess_env

SCRIPT = os.path.join(REPO, "benchmarks", "fault_table.py")


@pytest.fixture(scope="module")
def ft():
  spec = importlib.util.spec_from_file_location("fault_table", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run(ft, output: str, rc=1, **kw):
  return ft.Run(name="cmd", rc=rc, output=output, **kw)


TRACE = (
  'I1202 train.py] step 3\nTraceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
  "    f()\nZeroDivisionError: integer division or modulo by zero\n"
)


def test_a_traceback_is_labelled_with_its_exception(ft):
  problems = ft.classify_run(run(ft, TRACE), ft.error("log_every_steps"))
  assert ft.labels_of(problems) == ["traceback"]
  assert "ZeroDivisionError" in problems[0][1]


def test_a_timeout_is_a_hang(ft):
  problems = ft.classify_run(run(ft, "", rc=-9, timed_out=True, seconds=240.0), ft.error("x"))
  assert ft.labels_of(problems) == ["hang"]


def test_exit_0_without_the_expected_error_is_silent_wrong(ft):
  problems = ft.classify_run(run(ft, "Final test metrics: loss nan\n", rc=0), ft.error("ema_decay"))
  assert ft.labels_of(problems) == ["silent-wrong"]


def test_the_expected_one_line_error_is_ok(ft):
  out = "I1202 main.py] starting\njaxcls: error: config.ema_decay=1.5 must be in [0, 1); use e.g. 0.999.\n"
  assert ft.classify_run(run(ft, out, rc=2), ft.error("ema_decay")) == []
  assert ft.labels_of([]) == ["ok"]


def test_a_wrong_message_code_or_signal_death_is_unexpected(ft):
  out = "jaxcls: error: something else entirely.\n"
  assert ft.labels_of(ft.classify_run(run(ft, out, rc=1), ft.error("ema_decay"))) == ["unexpected"]
  assert ft.labels_of(ft.classify_run(run(ft, "no error line\n", rc=1), ft.error())) == ["unexpected"]
  assert ft.labels_of(ft.classify_run(run(ft, out, rc=1), ft.error("else", codes=(2,)))) == ["unexpected"]
  assert ft.labels_of(ft.classify_run(run(ft, "", rc=-15), ft.error())) == ["unexpected"]


def test_success_and_either_expectations(ft):
  assert ft.classify_run(run(ft, "W ... step 20 is corrupt, moved aside\n", rc=0), ft.success(r"\b20\b")) == []
  assert ft.labels_of(ft.classify_run(run(ft, "fine\n", rc=0), ft.success("stale"))) == ["silent-wrong"]
  assert ft.labels_of(ft.classify_run(run(ft, "jaxcls: error: no.\n", rc=1), ft.success())) == ["unexpected"]
  assert ft.classify_run(run(ft, "jaxcls: error: meta of step 20 is missing.\n", rc=1), ft.either("meta")) == []
  assert ft.classify_run(run(ft, "W warning: meta unreadable\n", rc=0), ft.either("meta")) == []
  assert ft.labels_of(ft.classify_run(run(ft, "all good\n", rc=0), ft.either("meta"))) == ["silent-wrong"]


def test_a_case_can_carry_several_labels(ft):
  problems = ft.classify_run(run(ft, TRACE, rc=0), ft.error("x")) + [("lost-data", "step 15 gone")]
  assert ft.labels_of(problems) == ["traceback", "silent-wrong", "lost-data"]


def _fake_workdir(root, steps=(10, 15, 20)):
  workdir = os.path.join(root, "run")
  for step in steps:
    os.makedirs(os.path.join(workdir, "checkpoints", str(step), "state"))
    with open(os.path.join(workdir, "checkpoints", str(step), "state", "data"), "wb") as f:
      f.write(f"array bytes of step {step}".encode())
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for step in range(1, 4):
      f.write(json.dumps({"step": step, "train/loss": 1.0 / step, "steps_per_sec": 3.0}) + "\n")
  return workdir


def test_lost_data_sees_deleted_files_and_metrics_but_not_moved_ones(ft, tmp_path):
  workdir = _fake_workdir(str(tmp_path))
  before = ft.snapshot(workdir)
  assert ft.lost_data(before, workdir, str(tmp_path)) == []
  shutil.move(os.path.join(workdir, "checkpoints", "20"), os.path.join(workdir, "corrupt-20"))  # moved aside
  assert ft.lost_data(before, workdir, str(tmp_path)) == []
  shutil.rmtree(os.path.join(workdir, "checkpoints", "10"))
  problems = ft.lost_data(before, workdir, str(tmp_path))
  assert [label for label, _ in problems] == ["lost-data"] and "step 10" in problems[0][1]
  assert ft.lost_data(before, workdir, str(tmp_path), skip_steps=(10,)) == []
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 1, "train/loss": 1.0}) + "\n")
  problems = ft.lost_data(before, workdir, str(tmp_path), skip_steps=(10,))
  assert len(problems) == 1 and "metrics.jsonl lost 2" in problems[0][1]


def test_pruning_after_keep_newer_steps_is_not_lost_data(ft, tmp_path):
  workdir = _fake_workdir(str(tmp_path))
  before = ft.snapshot(workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "10"))
  for step in (25, 30):
    os.makedirs(os.path.join(workdir, "checkpoints", str(step)))
  assert ft.lost_data(before, workdir, str(tmp_path), keep=3) == []
  assert ft.lost_data(before, workdir, str(tmp_path), keep=5) != []  # only 4 newer steps


def test_the_table_has_enough_distinct_cases_in_every_category(ft):
  ids = [c.id for c in ft.CASES]
  assert len(ids) == len(set(ids)) and len(ids) >= 60
  assert {c.category for c in ft.CASES} == set(ft.CATEGORIES)


def test_signals_are_sent_when_their_trigger_fires(ft, tmp_path):
  """execute() with a real child: SIGTERM after a line appears ends a sleeping shell (exit -15)."""
  import signal  # pylint: disable=g-import-not-at-top

  result = ft.execute(
    "sh",
    ["sh", "-c", "echo ready; exec sleep 30"],
    cwd=str(tmp_path),
    env=dict(os.environ),
    timeout=20,
    log_path=str(tmp_path / "log"),
    signals=((ft.OnOutput("^ready"), signal.SIGTERM),),
  )
  assert result.rc == -signal.SIGTERM and not result.timed_out and result.sent[0][0] == "SIGTERM"
  hung = ft.execute(
    "sleep", ["sleep", "30"], cwd=str(tmp_path), env=dict(os.environ), timeout=1, log_path=str(tmp_path / "log2")
  )
  assert hung.timed_out and ft.labels_of(ft.classify_run(hung, ft.success())) == ["hang"]


def test_bad_flags_exit_2(python):
  for flags in (["--jobs=0"], ["--no-such-flag"], ["--only=no-case-has-this-id"]):
    done = subprocess.run([python, SCRIPT, *flags], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (flags, done.stderr)


@pytest.mark.slow
def test_cheap_cases_run_for_real_and_print_the_table(python, tmp_path):
  out = tmp_path / "rows.json"
  done = subprocess.run(
    [
      python,
      SCRIPT,
      "--only=cfg-unknown-key",
      "--only=cfg-missing-workdir",
      "--only=st-gs-malformed",
      f"--json={out}",
      "--timeout=180",
    ],
    capture_output=True,
    text=True,
    timeout=600,
    env=subprocess_env(),
    cwd=str(tmp_path),
  )
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.strip().splitlines()
  assert lines[0].split(" | ")[0].strip() == "id" and "observed" in lines[0]
  assert lines[-8:] == [
    "cases: 3",
    "ok: 3",
    "unexpected exits/messages: 0",
    "harness failures: 0",
    "tracebacks: 0",
    "hangs: 0",
    "silent wrong results: 0",
    "lost data: 0",
  ], done.stdout
  rows = {r["id"]: r for r in json.loads(out.read_text())["rows"]}
  assert set(rows) == {"cfg-unknown-key", "cfg-missing-workdir", "st-gs-malformed"}
  assert all(r["observed"] == "ok" for r in rows.values()), rows
  assert not os.path.exists(tmp_path / "gs:")
