"""The report's figures are drawn in a background thread while the run closes its checkpoints (issue 14).

What must not change: the same figures and report.md as drawing in line, all of them written when the run returns,
and a drawing error raised by the run as before (after the checkpoints are closed, before report.json). What the
phase table says: 'plots' is the main thread's wait for the figures; the drawing's own time is noted outside the sum.
"""

import dataclasses
import re
import subprocess
import threading
import time
import traceback

import numpy as np
import pytest
from conftest import REPO, subprocess_env, tiny_config

from jaxcls import tasks
from jaxcls.core import phases
from jaxcls.evaluation import loop as eval_loop
from jaxcls.tasks.multiclass import MultiClass
from jaxcls.training import loop as train

pytest.importorskip("matplotlib")

UNPLOTTABLE = "test_unplottable_report"


@tasks.TASKS.register(UNPLOTTABLE)
@dataclasses.dataclass(frozen=True)
class _UnplottableReport(MultiClass):
  """Multiclass, except that its report's per-class F1 are words: report.json could hold them, a bar chart cannot."""

  def finalize(self, sums, outputs=None):
    result = super().finalize(sums, outputs)
    result["f1"] = ["unplottable"] * len(result["f1"])
    return result


def _drawing_threads():
  return [t for t in threading.enumerate() if t.name == "jaxcls-plots" and t.is_alive()]


def _report_and_outputs(k: int = 3):
  rng = np.random.default_rng(0)
  labels = np.arange(30) % k
  probs = rng.dirichlet(np.ones(k), size=30)
  confusion = np.zeros((k, k), np.int64)
  np.add.at(confusion, (labels, probs.argmax(1)), 1)
  report = {"step": 5, "split": "test", "task": "multiclass", "model": "m", "accuracy": 0.5}
  report["confusion_matrix"] = confusion.tolist()
  return report, {"labels": labels, "probs": probs}


def test_background_drawing_writes_the_same_files_as_drawing_in_line(tmp_path):
  """Same figure names and bytes, same report.md and report.json; the clock charges the wait and notes the drawing."""
  task = tasks.build({"type": "multiclass"}, 3)
  names = ["cat", "dog", "eel"]
  inline, background = tmp_path / "inline", tmp_path / "background"
  report, outputs = _report_and_outputs()
  figures = eval_loop.write_report(str(inline), dict(report), outputs, names, task=task)

  clock = phases.PhaseClock()
  report = dict(report)
  drawing = eval_loop.start_plots(str(background), report, outputs, names, task=task)
  drawn = eval_loop.write_report(str(background), report, outputs, names, task=task, clock=clock, drawing=drawing)

  assert [p.replace(str(background), "") for p in drawn] == [p.replace(str(inline), "") for p in figures]
  assert {p.name for p in (background / "plots").iterdir()} == {"confusion.png", "per_class_f1.png", "roc_pr.png"}
  for name in ("confusion.png", "per_class_f1.png", "roc_pr.png"):
    assert (background / "plots" / name).read_bytes() == (inline / "plots" / name).read_bytes()
  for name in ("report.md", "report.json"):
    assert (background / name).read_text() == (inline / name).read_text()
  assert "plots/confusion.png" in (background / "report.md").read_text()
  assert drawing.seconds > 0 and clock.background == {"plots": drawing.seconds}
  assert 0 <= clock.seconds["plots"] and "report" in clock.seconds
  assert not _drawing_threads()


def test_a_drawing_error_is_raised_by_the_caller_with_its_own_traceback(tmp_path):
  """The exception drawing raised, not a wrapper; its traceback reaches the figure function; no report files."""
  task = tasks.build({"type": "multiclass"}, 3)
  report, outputs = _report_and_outputs()
  report["f1"] = ["unplottable"] * 3
  with pytest.raises(ValueError) as inline:
    eval_loop.write_report(str(tmp_path / "inline"), dict(report), outputs, None, task=task)
  clock = phases.PhaseClock()
  drawing = eval_loop.start_plots(str(tmp_path / "bg"), report, outputs, None, task=task)
  with pytest.raises(ValueError) as background:
    eval_loop.write_report(str(tmp_path / "bg"), report, outputs, None, task=task, clock=clock, drawing=drawing)
  assert str(background.value) == str(inline.value) == "could not convert string to float: 'unplottable'"
  assert "per_class_f1" in [frame.name for frame in traceback.extract_tb(background.tb)]
  assert not (tmp_path / "bg" / "report.json").exists() and not (tmp_path / "bg" / "report.md").exists()
  assert "plots" in clock.seconds and clock.background["plots"] > 0  # charged even when drawing fails


def test_a_run_returns_with_every_figure_written_and_listed(tmp_path):
  """When train_and_evaluate returns, plots/ is complete, report.md links every figure, no drawing is left running,
  and the phase table still adds up to the wall time with the drawing shown beside it."""
  clock = phases.PhaseClock()
  result = train.train_and_evaluate(tiny_config(), str(tmp_path), clock=clock)
  assert result["step"] == 12
  assert not _drawing_threads()
  drawn = sorted(p.name for p in (tmp_path / "plots").iterdir())
  assert {"confusion.png", "per_class_f1.png", "roc_pr.png", "training_curves.png"} <= set(drawn)
  assert all(name.endswith(".png") and not name.startswith(".") for name in drawn)  # no temporary file left
  markdown = (tmp_path / "report.md").read_text()
  for name in drawn:
    assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plots/{name}" in markdown
  rows = clock.rows()
  assert sum(seconds for name, seconds, _ in rows[:-1]) == pytest.approx(rows[-1][1])
  assert "plots" in clock.seconds and clock.background["plots"] > 0
  assert "in background threads" in clock.table() and "plots" in clock.table().splitlines()[-1]


def test_a_run_whose_report_cannot_be_drawn_fails_as_before(tmp_path):
  """The drawing's ValueError ends the run after the checkpoints are closed and before report.json is written."""
  config = tiny_config(**{"task.type": UNPLOTTABLE})
  with pytest.raises(ValueError, match="could not convert string to float: 'unplottable'") as failed:
    train.train_and_evaluate(config, str(tmp_path))
  assert "per_class_f1" in [frame.name for frame in traceback.extract_tb(failed.tb)]
  assert not _drawing_threads()
  assert (tmp_path / "checkpoints" / "12").is_dir()  # the final step was saved and the manager closed
  assert not (tmp_path / "report.json").exists() and not (tmp_path / "report.md").exists()
  assert not (tmp_path / "lock.json").exists()  # the workdir lock is released on the way out


def test_the_phase_table_shows_background_time_outside_the_sum():
  clock = phases.PhaseClock(start=100.0)
  clock.add("steps", 6.0)
  clock.add("plots", 0.5)
  clock.overlapped("plots", 1.5)
  rows = clock.rows(end=110.0)
  assert rows[-1] == ("total", 10.0, 1.0) and dict((n, s) for n, s, _ in rows)["other"] == pytest.approx(3.5)
  table = clock.table(end=110.0).splitlines()
  assert table[-1] == "(in background threads, overlapping the rows above: plots 1.50 s; each row is the wait for it)"
  assert phases.PhaseClock().table().splitlines()[-1].startswith("total")  # nothing in the background: no note


def test_the_training_command_profiles_the_wait_and_exits_soon_after_its_last_line(python, tmp_path):
  """`main --profile`: the table has the 'plots' row (the wait) and the drawing's own time under it; the figures
  are on disk when the process has ended, and it ends soon after its last line (no thread or teardown to wait for)."""
  workdir = tmp_path / "run"
  command = [python, "-m", "jaxcls.main", "--config", "configs/default.py", "--workdir", str(workdir), "--profile"]
  command += ["--config.num_train_steps=30", "--config.optimizer.warmup_steps=5", "--config.eval_every_steps=15"]
  process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(1), stderr=subprocess.PIPE, text=True)
  lines = []
  for line in process.stderr:  # the last line's arrival, then the process's end, on this machine's clock
    lines.append(line.rstrip("\n"))
    last_line_at = time.time()
  assert process.wait(timeout=600) == 0, "\n".join(lines[-40:])
  exit_seconds = time.time() - last_line_at
  table = lines[next(i for i, line in enumerate(lines) if "Where the wall time went" in line) :]
  assert any(re.match(r"plots +\d+\.\d\d +\d+\.\d%$", row) for row in table), table
  assert re.match(r"\(in background threads, overlapping the rows above: plots \d+\.\d\d s; ", table[-1]), table
  drawn = sorted(p.name for p in (workdir / "plots").iterdir())
  assert {"confusion.png", "per_class_f1.png", "roc_pr.png", "training_curves.png"} <= set(drawn)
  assert all(f"plots/{name}" in (workdir / "report.md").read_text() for name in drawn)
  assert exit_seconds < 3.0, f"{exit_seconds:.1f} s from the last line to the end (a thread or teardown waited)"


def test_preloading_imports_matplotlib_once_in_one_background_thread(python):
  """Two calls start one daemon thread; it imports matplotlib's Figure (never pyplot) and renders, then ends."""
  code = """if True:
    import sys, threading
    from jaxcls.evaluation import loop
    assert "matplotlib" not in sys.modules
    loop.preload_plots()
    loop.preload_plots()
    started = [t for t in threading.enumerate() if t.name == "jaxcls-plots-preload"]
    assert len(started) == 1 and started[0].daemon, started
    started[0].join(timeout=120)
    assert "matplotlib.figure" in sys.modules and "matplotlib.pyplot" not in sys.modules
    assert "matplotlib.backends.backend_agg" in sys.modules
    print("preloaded")
  """
  result = subprocess.run([python, "-c", code], cwd=REPO, env=subprocess_env(1), capture_output=True, text=True)
  assert result.returncode == 0 and result.stdout.strip() == "preloaded", result.stderr[-2000:]


def test_without_matplotlib_the_run_warns_once_and_writes_the_report(python, tmp_path):
  """As before: one warning (now from the drawing thread, still in the log), report.md without figures, no plots/."""
  code = """if True:
    import sys
    sys.modules["matplotlib"] = None  # what an environment without matplotlib gives: ImportError on import
    from conftest import tiny_config
    from jaxcls.training import loop
    loop.train_and_evaluate(tiny_config(), sys.argv[1])
  """
  env = subprocess_env(1)
  env["PYTHONPATH"] = f"{REPO}/tests:{env['PYTHONPATH']}"
  workdir = tmp_path / "run"
  result = subprocess.run([python, "-c", code, str(workdir)], cwd=REPO, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.count("matplotlib is not installed, so DIR/plots is not written") == 1, result.stderr[-3000:]
  assert (workdir / "report.json").exists() and ".png" not in (workdir / "report.md").read_text()
  assert not (workdir / "plots").exists()


def test_time_moved_between_phases_is_counted_once():
  """The loop moves an evaluation's compile seconds from 'eval' to 'compile' (add(-s), add(+s)): the rows still add
  up to the wall time, and 'other' is what no phase claimed (before, the minus was dropped and 'other' shrank)."""
  clock = phases.PhaseClock(start=100.0)
  clock.add("eval", 2.0)
  clock.add("eval", -1.5)
  clock.add("compile", 1.5)
  clock.add("steps", -1.0)  # nothing to take back: stays at 0
  rows = dict((name, seconds) for name, seconds, _ in clock.rows(end=110.0))
  assert rows["eval"] == pytest.approx(0.5) and rows["compile"] == pytest.approx(1.5) and rows["steps"] == 0.0
  assert rows["other"] == pytest.approx(8.0) and rows["total"] == 10.0
