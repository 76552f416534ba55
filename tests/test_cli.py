"""The command line as users run it: the default config end to end, overrides, errors, SIGKILL and resume."""

import glob
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import REPO, saved_state, subprocess_env

MAIN = ["-m", "jaxcls.main", "--config", os.path.join(REPO, "configs", "default.py")]


def _run(python, args, device_count=2, timeout=600):
  return subprocess.run(
    [python, *MAIN, *args], env=subprocess_env(device_count), cwd=REPO, capture_output=True, text=True, timeout=timeout
  )


def test_default_config_end_to_end(python, tmp_path):
  """A short run of the shipped default: every file of the workdir contract appears."""
  workdir = str(tmp_path / "run")
  proc = _run(
    python,
    [
      "--workdir",
      workdir,
      "--config.num_epochs=4",
      "--config.model.widths=(16, 32)",
      "--config.optimizer.warmup_steps=5",
    ],
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("config.json", "classes.json", "metrics.jsonl", "report.json", "report.md"):
    assert os.path.isfile(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  assert report["num_examples"] == 360 and report["split"] == "test"
  assert report["accuracy"] > 0.5  # four epochs of a small CNN; the full default reaches >= 0.99
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  assert config["model"]["widths"] == [16, 32] and config["dataset"]["image_size"] == [16, 16]
  with open(os.path.join(workdir, "classes.json")) as f:
    assert json.load(f) == [str(i) for i in range(10)]
  assert os.listdir(os.path.join(workdir, "checkpoints"))
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  events = glob.glob(os.path.join(workdir, "**", "events.out.tfevents.*"), recursive=True)
  assert events
  acc = EventAccumulator(os.path.dirname(events[0]))
  acc.Reload()
  tags = acc.Tags()["scalars"] + acc.Tags().get("tensors", [])
  assert any("train/loss" in t for t in tags) and any("eval/accuracy" in t for t in tags)
  images = acc.Tags().get("images", []) + [
    t for t in acc.Tags().get("tensors", []) if acc.SummaryMetadata(t).plugin_data.plugin_name == "images"
  ]
  assert any("figures/confusion" in t for t in images), images  # the report's figures, in TensorBoard too


@pytest.mark.parametrize(
  "override, expected",
  [
    ("--config.datset.name=x", "Unknown config key 'datset.name'. Did you mean 'dataset.name'"),
    ("--config.optimizer.learning_rat=0.1", "Did you mean 'optimizer.learning_rate'"),
    ("--config.model.widht=3", "Unknown argument 'widht' for model 'simple_cnn'"),
    ("--config.model.name=resnet19", "Unknown model 'resnet19'"),
    ("--config.dataset.name=digitz", "Unknown dataset 'digitz'"),
    ("--config=tests/fixtures/workdir_0_1/config.json", "is not a Python file: --config takes a .py file"),
  ],
)
def test_bad_keys_fail_with_one_line(python, tmp_path, override, expected):
  proc = _run(python, ["--workdir", str(tmp_path), override], timeout=120)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  error_lines = [line for line in proc.stderr.splitlines() if line.startswith("jaxcls: error:")]
  assert len(error_lines) == 1 and expected in error_lines[0], proc.stderr[-2000:]


def test_sigkill_and_rerun_matches_an_uninterrupted_run(python, tmp_path):
  args = [
    "--config.num_epochs=6",
    "--config.checkpoint_every_steps=5",
    "--config.model.widths=(16, 32)",
    "--config.async_checkpointing=True",
  ]
  full = str(tmp_path / "full")
  proc = _run(python, ["--workdir", full, *args])
  assert proc.returncode == 0, proc.stderr[-3000:]

  killed = str(tmp_path / "killed")
  child = subprocess.Popen(
    [python, *MAIN, "--workdir", killed, *args],
    env=subprocess_env(2),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  ckpt_dir = os.path.join(killed, "checkpoints")
  while time.time() < deadline:
    done = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
    if any(int(d) >= 30 for d in done):
      break
    time.sleep(0.05)
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert not os.path.exists(os.path.join(killed, "report.json")), "the run finished before it could be killed"

  proc = _run(python, ["--workdir", killed, *args])
  assert proc.returncode == 0, proc.stderr[-3000:]
  a, b = saved_state(full), saved_state(killed)
  step_a, step_b = int(a["step"]), int(b["step"])
  assert step_a == step_b == 6 * (1437 // 64)
  for name in ("params", "batch_stats", "opt_state"):
    import jax

    for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name])):
      np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
  with open(os.path.join(full, "report.json")) as f1, open(os.path.join(killed, "report.json")) as f2:
    r1, r2 = json.load(f1), json.load(f2)
  assert r1["accuracy"] == r2["accuracy"] and r1["loss"] == pytest.approx(r2["loss"], rel=1e-6)
  steps_logged = [json.loads(line)["step"] for line in open(os.path.join(killed, "metrics.jsonl"))]
  train_steps = [
    s for s, line in zip(steps_logged, open(os.path.join(killed, "metrics.jsonl"))) if "train/loss" in line
  ]
  assert train_steps == sorted(set(train_steps)), "metrics.jsonl holds duplicate train lines after resume"


def test_core_trains_without_tensorflow_or_clu(python, tmp_path):
  """The lent GPU machines have no TensorFlow, tfds or clu: training must not need them."""
  script = f"""
import sys
for name in ("tensorflow", "tensorflow_datasets", "clu"):
  sys.modules[name] = None  # any import of these now fails
sys.path.insert(0, {os.path.join(REPO, "tests")!r})
from conftest import tiny_config
from jaxcls.training import loop as train
report = train.train_and_evaluate(tiny_config(num_train_steps=4), {str(tmp_path)!r})
assert report["num_examples"] == 100
assert not any(m.startswith(("tensorflow", "clu")) for m in sys.modules if sys.modules[m] is not None)
print("OK")
"""
  proc = subprocess.run([python, "-c", script], env=subprocess_env(2), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
  events = glob.glob(os.path.join(str(tmp_path), "tensorboard", "events.out.tfevents.*"))
  assert events, "the tensorboard-only writer wrote no event file"


def test_folder_of_images_trains_and_lists_unreadable_files(python, tmp_path):
  """A user's folder (two classes, mixed formats, a truncated JPEG, a non-image file) trains from the CLI."""
  from PIL import Image

  rng = np.random.default_rng(0)
  for name, tint in (("cats", 40), ("dogs", 200)):
    os.makedirs(tmp_path / "photos" / name)
    for i in range(12):
      pixels = np.clip(rng.normal(tint, 30, (20 + i, 24, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(pixels).save(tmp_path / "photos" / name / f"{i}.{('png', 'jpg', 'bmp')[i % 3]}")
  good = (tmp_path / "photos" / "cats" / "1.jpg").read_bytes()
  (tmp_path / "photos" / "cats" / "broken.jpg").write_bytes(good[: len(good) // 2])
  (tmp_path / "photos" / "dogs" / "notes.txt").write_text("not an image")
  workdir = tmp_path / "run"
  args = [
    "-m",
    "jaxcls.main",
    "--config",
    os.path.join(REPO, "configs", "folder.py"),
    "--workdir",
    str(workdir),
    f"--config.dataset.path={tmp_path / 'photos'}",
    "--config.dataset.image_size=(16, 16)",
    "--config.dataset.cache=memory",
    "--config.dataset.train_crop=resize",
    "--config.model.name=simple_cnn",
    "--config.model.widths=(8, 16)",
    "--config.batch_size=8",
    "--config.num_train_steps=6",
    "--config.optimizer.warmup_steps=1",
  ]
  proc = subprocess.run([python, *args], env=subprocess_env(2), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((workdir / "classes.json").read_text()) == ["cats", "dogs"]
  skipped = (workdir / "skipped_files.txt").read_text()
  assert "broken.jpg" in skipped and "notes.txt" not in skipped
  report = json.loads((workdir / "report.json").read_text())
  assert report["num_examples"] == 5  # 20% of the 23 readable images, stratified


def test_every_command_module_imports_together():
  """Commands define their flags only when run, so one process (a notebook, a test) can import them all."""
  import importlib  # pylint: disable=g-import-not-at-top

  for name in (
    "main",
    "evaluate",
    "predict",
    "export",
    "explain",
    "fewshot",
    "list_models",
    "convert",
    "show_data",
    "benchmark",
    "classical",
    "classical.__main__",
  ):
    importlib.import_module(f"jaxcls.{name}")


# --- jaxcls.cli: the one way every command runs -------------------------------------------------------------------


def _run_in_process(monkeypatch, argv, main, define_flags=None, doc="`python -m jaxcls.toy --size N`: A toy."):
  """cli.run as the command would call it, in this process: (exit code, stdout, stderr)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top

  from jaxcls import cli  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr("sys.argv", ["toy", *argv])
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
    cli.run(main, define_flags=define_flags, doc=doc)
  return exit_info.value.code, out.getvalue(), err.getvalue()


def test_cli_run_turns_a_user_error_into_one_line_and_exit_2(monkeypatch):
  from jaxcls.core.errors import DataError  # pylint: disable=g-import-not-at-top

  def main(argv):
    raise DataError(f"The folder {argv[1]!r} holds no images; give a folder of class subfolders.")

  code, out, err = _run_in_process(monkeypatch, ["/no/images"], main)
  assert code == 2 and out == ""
  assert err == "jaxcls: error: The folder '/no/images' holds no images; give a folder of class subfolders.\n"


def test_cli_run_help_exits_0_with_the_doc_and_only_this_commands_flags(monkeypatch):
  from absl import flags  # pylint: disable=g-import-not-at-top

  def define_flags():
    if "toy_size" not in flags.FLAGS:
      flags.DEFINE_integer("toy_size", 3, "How many toys to make.")

  def main(argv):
    raise AssertionError("--help must not run the command")

  code, out, err = _run_in_process(monkeypatch, ["--toy_size=4", "--help"], main, define_flags)
  assert code == 0 and err == ""
  assert out.startswith("usage: python -m jaxcls.toy --size N\n\nA toy.\n"), out
  assert "--toy_size\n      How many toys to make. (default: 3)" in out, out
  assert "--verbosity" not in out and "--only_check_args" not in out  # absl's own flags are not this command's


def test_cli_run_keeps_the_traceback_of_a_bug_and_maps_a_disk_fault_to_one_line(monkeypatch, tmp_path):
  """A bug propagates as itself (absl prints its traceback); a full disk is a user's problem: one line, exit 2."""
  import errno  # pylint: disable=g-import-not-at-top

  def buggy(argv):
    del argv
    return {}["missing"]

  with pytest.raises(KeyError, match="missing"):
    _run_in_process(monkeypatch, [], buggy)

  def full_disk(argv):
    del argv
    raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "report.json"))

  code, out, err = _run_in_process(monkeypatch, [], full_disk)
  assert code == 2 and out == "" and len(err.splitlines()) == 1
  assert err.startswith(f"jaxcls: error: Cannot write {tmp_path / 'report.json'}: the disk is full (ENOSPC"), err


def test_cli_run_reports_a_bad_flag_value_in_one_line_with_exit_2(monkeypatch):
  from absl import flags  # pylint: disable=g-import-not-at-top

  def define_flags():
    if "toy_count" not in flags.FLAGS:
      flags.DEFINE_integer("toy_count", 1, "How many.")

  code, out, err = _run_in_process(monkeypatch, ["--toy_count=many"], lambda argv: 0, define_flags)
  assert (code, out) == (2, "")
  assert err == (
    "jaxcls: error: flag --toy_count=many: invalid literal for int() with base 10: 'many' (--help lists "
    "this command's flags).\n"
  ), err
  code, _, err = _run_in_process(monkeypatch, ["--toy_count=3"], lambda argv: len(argv) + 4, define_flags)
  assert code == 5 and err == ""  # main's return value is the exit code


def test_the_log_filter_drops_library_info_but_keeps_warnings_and_jaxcls_info():
  """The records an absl handler sees: INFO from orbax or jax internals is dropped, jaxcls's own INFO and every
  library warning stay, and the traceback of a failed background write (logged by asyncio) is cut."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from jaxcls import cli  # pylint: disable=g-import-not-at-top

  site = os.path.join(os.sep, "venv", "lib", "site-packages")

  def record(path, level=std_logging.INFO, exc_info=None):
    return std_logging.LogRecord("absl", level, path, 1, "message", None, exc_info)

  quiet = cli.QuietLibraries()
  assert not quiet.filter(record(os.path.join(site, "orbax", "checkpoint", "checkpointer.py")))
  assert not quiet.filter(record(os.path.join(site, "jax", "_src", "dispatch.py")))
  assert quiet.filter(record(os.path.join(site, "orbax", "checkpoint", "checkpointer.py"), std_logging.WARNING))
  assert quiet.filter(record(os.path.join(REPO, "jaxcls", "training", "loop.py")))
  assert quiet.filter(record(os.path.join(os.sep, "home", "me", "my_models.py")))  # a researcher's own module
  try:
    raise OSError("disk full")
  except OSError:
    failed = record(
      os.path.join(os.sep, "usr", "lib", "python3", "asyncio", "base_events.py"), std_logging.ERROR, sys.exc_info()
    )
  assert quiet.filter(failed) and failed.exc_info is None


COMMANDS = (
  "main",
  "evaluate",
  "predict",
  "export",
  "explain",
  "fewshot",
  "benchmark",
  "convert",
  "show_data",
  "list_models",
  "trace_summary",
  "classical",
)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_exits_0_with_usage_for_users_without_importing_jax(python, command):
  """--help is for users: the command's doc and its own flags on stdout, exit 0, and quick (jax is not imported)."""
  proc = subprocess.run(
    [python, "-X", "importtime", "-m", f"jaxcls.{command}", "--help"],
    env=subprocess_env(1),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith(f"usage: python -m jaxcls.{command} "), proc.stdout[:500]
  assert "\nFlags:\n  --" in proc.stdout and "--verbosity" not in proc.stdout  # not absl's flags of every module
  assert "Traceback" not in proc.stderr
  imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
  assert "jax" not in imported and "tensorflow" not in imported, sorted(m for m in imported if "jax" in m)


def test_help_spellings_and_a_user_error_of_a_thin_command(python):
  for spelling in ("-h", "--helpfull"):
    proc = subprocess.run(
      [python, "-m", "jaxcls.list_models", spelling, "--models=nope"],
      env=subprocess_env(1),
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m jaxcls.list_models"), proc.stderr
  proc = subprocess.run(
    [python, "-m", "jaxcls.list_models", "--models=resnet5"],
    env=subprocess_env(1),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
  assert proc.stderr.startswith("jaxcls: error: Unknown model(s) resnet5; known: ") and proc.stderr.count("\n") == 1


def test_predict_logs_no_library_info_lines(python, tmp_path):
  """Restoring a checkpoint logs dozens of orbax INFO lines; a command other than main shows none of them."""
  import re  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top

  from PIL import Image  # pylint: disable=g-import-not-at-top

  workdir = shutil.copytree(os.path.join(REPO, "tests", "fixtures", "workdir_0_1"), tmp_path / "run")
  Image.fromarray(np.full((16, 16), 128, np.uint8)).save(tmp_path / "a.png")
  proc = subprocess.run(
    [python, "-m", "jaxcls.predict", "--workdir", str(workdir), str(tmp_path / "a.png")],
    env=subprocess_env(1),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0 and proc.stdout.startswith(f"{tmp_path / 'a.png'}: "), proc.stderr[-3000:]
  ours = {name for _, _, names in os.walk(os.path.join(REPO, "jaxcls")) for name in names if name.endswith(".py")}
  info_from = re.findall(r"^I\d{4} [\d:.]+ +\d+ (\S+?):\d+\]", proc.stderr, re.MULTILINE)
  assert all(name in ours for name in info_from), proc.stderr[-3000:]


def test_the_compilation_cache_switch_follows_the_config_and_distrusts_a_workdirs_folder(tmp_path):
  """compile_cache.enable_for_workdir (evaluate, predict): the config's folder when it is the user's own; a trained
  run's config.json (a workdir that may come from elsewhere) cannot point the cache at another folder; '' is off."""
  from jaxcls.core import compile_cache  # pylint: disable=g-import-not-at-top

  default = compile_cache.resolve("auto")
  try:
    assert compile_cache.enable_for_workdir({"compilation_cache_dir": str(tmp_path / "mine")}) == str(tmp_path / "mine")
    assert compile_cache.enable_for_workdir({"compilation_cache_dir": str(tmp_path / "theirs")}, "/runs/a") == default
    assert not os.path.exists(tmp_path / "theirs")
    assert compile_cache.enable_for_workdir({}, "/runs/old") == default  # a config.json older than the key
    assert compile_cache.enable_for_workdir({"compilation_cache_dir": ""}, "/runs/a") == ""
  finally:
    compile_cache.enable("auto")  # the folder every test process shares (conftest's JAXCLS_CACHE_DIR)


def test_an_interrupt_wrapped_by_a_library_is_still_an_interrupt():
  """cli.run treats a KeyboardInterrupt that a library re-raised as another error (one inside an import) as Ctrl-C."""
  from jaxcls import cli  # pylint: disable=g-import-not-at-top

  try:
    try:
      raise KeyboardInterrupt
    except KeyboardInterrupt as inner:
      raise ImportError("cannot import name 'x'") from inner
  except ImportError as e:
    wrapped = e
  assert cli._caused_by_interrupt(wrapped)  # pylint: disable=protected-access
  assert not cli._caused_by_interrupt(ValueError("bad"))  # pylint: disable=protected-access


def test_ctrl_c_ends_a_command_with_one_line_and_status_130(python, tmp_path):
  """SIGINT to a real `python -m jaxcls.evaluate` while it imports: exit status 130, one line on stderr, no
  traceback."""
  import shutil  # pylint: disable=g-import-not-at-top

  workdir = tmp_path / "digits"
  shutil.copytree(os.path.join(REPO, "tests", "fixtures", "workdir_0_1"), workdir)
  proc = subprocess.Popen(
    [python, "-m", "jaxcls.evaluate", "--workdir", str(workdir), "--output_dir", str(tmp_path / "out")],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=subprocess_env(2),
    cwd=REPO,
  )
  time.sleep(0.8)  # inside the imports (jax's alone takes longer)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  if proc.returncode == 0:
    pytest.skip(f"evaluate finished before the interrupt: {err[-500:]}")
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  assert err.strip().splitlines()[-1] == "jaxcls: evaluate interrupted (Ctrl-C)."
