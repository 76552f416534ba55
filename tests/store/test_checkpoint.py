"""Checkpoints you can rely on: the best kept besides the last N, `--step best`, keep >= 1, damaged steps moved
aside and the run resumed from the newest intact step.

One trained workdir (module fixture) is copied per test. It evaluates every 2 steps and checkpoints every 4 with
keep_checkpoints=2 and best_mode='min' on eval/accuracy: the worst evaluation (the untrained model at step 2) is
then the "best", so the best checkpoint is off the checkpoint cadence and outside the last N, deterministically.
That is the shape of the reported bug (the best eval was deleted while later, worse ones were kept).
"""

import glob
import json
import logging
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest
from conftest import REPO, destroy_chunks, saved_state, subprocess_env, tiny_config
from gcs_emulator import gcs  # noqa: F401  pylint: disable=unused-import  (the fixture)
from PIL import Image

from jaxcls import data
from jaxcls.core import parallel
from jaxcls.core.errors import CheckpointError, ConfigError
from jaxcls.evaluation import fewshot
from jaxcls.evaluation import workdir_eval as evaluate
from jaxcls.inference import explainer as explain
from jaxcls.inference import exporter as export
from jaxcls.store import build, checkpoint, restore, step_folder
from jaxcls.training import loop as train
from jaxcls.training import optim, steps, transfer

SETTINGS = dict(
  num_train_steps=12,
  eval_every_steps=2,
  checkpoint_every_steps=4,
  keep_checkpoints=2,
  best_metric="eval/accuracy",
  best_mode="min",
)


def config(**overrides):
  return tiny_config(**{**SETTINGS, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(config(), workdir)
  return workdir


@pytest.fixture
def run(trained, tmp_path):
  """A private copy of the trained workdir."""
  copy = str(tmp_path / "run")
  shutil.copytree(trained, copy)
  return copy


def eval_accuracies(workdir) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}


def kept_steps(workdir) -> list[int]:
  return restore.checkpoint_steps(workdir)


def worst_step(accuracies: dict[int, float]) -> int:
  """The step of the lowest accuracy; among equal ones the first, as only a strict improvement is saved."""
  return min(accuracies, key=lambda s: (accuracies[s], s))


def abstract_state(workdir):
  """The abstract train state of the fixture's config, as train_and_evaluate builds it."""
  cfg = config()
  dataset = data.build(cfg)
  task, model, _ = build.build_task_and_model(cfg, dataset.info)
  tx, _ = optim.build_optimizer(cfg.optimizer, cfg.num_train_steps)
  mesh = parallel.make_mesh()
  init = steps.make_init(model, tx, image_shape=dataset.info.image_shape, dtype=cfg.dtype, use_ema=False, mesh=mesh)
  fingerprint = checkpoint.fingerprint(cfg, dataset.info.num_classes, dataset.info.image_shape)
  abstract = checkpoint.abstract_with_shardings(
    jax.eval_shape(init, jax.random.key(cfg.seed, impl="rbg")), parallel.replicated(mesh)
  )
  return checkpoint.Checkpointer(
    workdir, keep=2, async_save=False, fingerprint=fingerprint, best_metric="eval/accuracy", best_mode="min"
  ), abstract


def step_dir(workdir, step) -> str:
  return os.path.join(workdir, "checkpoints", str(step))


def truncate_arrays(workdir, step):
  files = [f for f in glob.glob(os.path.join(step_dir(workdir, step), "state", "**", "d", "*"), recursive=True)]
  assert files
  for f in files:
    with open(f, "r+b") as handle:
      handle.truncate(os.path.getsize(f) // 2)


def garble_arrays(workdir, step):
  """Zeros over the second half of every data file of the state (this small state keeps its chunks inside the
  b-tree nodes): the files keep their size, so only reading them finds the damage."""
  files = [f for f in glob.glob(os.path.join(step_dir(workdir, step), "state", "**", "d", "*"), recursive=True)]
  assert files
  for f in files:
    size = os.path.getsize(f)
    with open(f, "r+b") as handle:
      handle.seek(size // 2)
      handle.write(b"\0" * (size - size // 2))


DAMAGE = {
  "truncated arrays": truncate_arrays,
  "garbled arrays": garble_arrays,
  "state item deleted": lambda w, s: shutil.rmtree(os.path.join(step_dir(w, s), "state")),
  "meta item deleted": lambda w, s: shutil.rmtree(os.path.join(step_dir(w, s), "meta")),
  "garbage meta": lambda w, s: open(os.path.join(step_dir(w, s), "meta", "metadata"), "w").write("{not json"),
  "commit record deleted": lambda w, s: os.remove(os.path.join(step_dir(w, s), "_CHECKPOINT_METADATA")),
  "commit marker deleted": lambda w, s: os.remove(os.path.join(step_dir(w, s), "commit_success.txt")),
  "garbage metrics": lambda w, s: open(os.path.join(step_dir(w, s), "metrics", "metrics"), "w").write("\x00"),
}
WHAT = {
  "truncated arrays": "arrays cannot be read",
  "garbled arrays": "arrays cannot be read",
  "state item deleted": "state item (state/) is missing",
  "meta item deleted": "meta item (meta/) is missing",
  "garbage meta": "meta/metadata is not the JSON",
  "commit record deleted": "_CHECKPOINT_METADATA is missing",
  "commit marker deleted": "commit_success.txt is missing",
  "garbage metrics": "metrics/metrics is not valid JSON",
}


# --- the best checkpoint -----------------------------------------------------------------------------------------


def test_best_is_kept_besides_the_last_n_and_saved_off_the_cadence(trained):
  accuracies = eval_accuracies(trained)
  assert sorted(accuracies) == [2, 4, 6, 8, 10, 12]
  best = worst_step(accuracies)  # best_mode='min'
  assert best % 4 != 0 and best not in (8, 12)  # off the cadence and outside the last 2: the bug's shape
  assert kept_steps(trained) == sorted({best, 8, 12})
  assert restore.resolve_step(trained, "best") == best
  with open(os.path.join(step_dir(trained, best), "metrics", "metrics")) as f:
    assert json.load(f)["eval/accuracy"] == accuracies[best]


def test_best_so_far_is_read_back_after_a_restart(run):
  """A new Checkpointer (a resumed run) knows the best from the checkpoints' metrics, so it saves only evaluations
  that beat it, and pruning keeps it."""
  best = worst_step(eval_accuracies(run))
  ckpt = checkpoint.Checkpointer(
    run, keep=2, async_save=False, fingerprint={}, best_metric="eval/accuracy", best_mode="min"
  )
  try:
    assert ckpt.best_step() == best
    value = eval_accuracies(run)[best]
    ckpt.note_evaluation(14, {"eval/accuracy": value, "eval/loss": 1.0})
    assert not ckpt.is_new_best(14)  # equal is no improvement
    ckpt.note_evaluation(14, {"eval/accuracy": value - 0.01})
    assert ckpt.is_new_best(14)
    assert not ckpt.is_new_best(16)  # no evaluation at that step
    with pytest.raises(ConfigError, match=r"best_metric='eval/accuracy' is not among .*eval/loss"):
      ckpt.note_evaluation(18, {"eval/loss": 1.0})
  finally:
    ckpt.close()


@pytest.mark.parametrize(
  "metric, mode, kept",
  [("", "max", [6]), ("eval/accuracy", "max", [2, 6]), ("eval/loss", "min", [4, 6]), ("eval/accuracy", "min", [4, 6])],
)
def test_retention_is_the_last_n_plus_the_best(tmp_path, metric, mode, kept):
  """keep=1: the newest step, plus the best evaluated one (a NaN and an unevaluated step are never the best)."""
  evaluations = {2: (0.9, 0.5), 3: (float("nan"), 0.3), 4: (0.5, 0.1), 5: None, 6: (0.6, 0.7)}
  ckpt = checkpoint.Checkpointer(
    str(tmp_path), keep=1, async_save=False, fingerprint={}, best_metric=metric, best_mode=mode
  )
  try:
    for step, values in evaluations.items():
      if values:
        ckpt.note_evaluation(step, {"eval/accuracy": values[0], "eval/loss": values[1]})
      ckpt.save(step, {"w": np.full(3, step, np.float32)}, {"next_batch": step}, force=True)
    assert ckpt.all_steps() == kept
  finally:
    ckpt.close()
  assert kept_steps(str(tmp_path)) == kept
  assert step_folder.pick_best([(2, 0.5), (4, 0.5), (6, None)], "max") == 4  # ties: the later step (as kept)


def test_a_run_without_best_metric_has_no_best_step(run):
  with open(os.path.join(run, "config.json")) as f:
    saved = json.load(f)
  saved["best_metric"] = ""
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump(saved, f)
  with pytest.raises(
    CheckpointError,
    match=r"has no best checkpoint: the run was trained with "
    r"config.best_metric='' \(no best is kept\)",
  ):
    restore.resolve_step(run, "best")


def test_step_best_needs_an_evaluated_checkpoint(run):
  for f in glob.glob(os.path.join(run, "checkpoints", "*", "metrics", "metrics")):
    os.remove(f)
  with pytest.raises(
    CheckpointError,
    match=r"no checkpoint holds an evaluation of eval/accuracy \(steps: "
    r"\d+, 8, 12\); pick a step or 'latest'",
  ):
    restore.resolve_step(run, "best")


def test_best_settings_are_checked():
  with pytest.raises(ConfigError, match=r"config.best_mode='highest' is not valid; use 'max'"):
    checkpoint.Checkpointer("/tmp/unused", keep=1, async_save=False, fingerprint={}, best_mode="highest")
  with pytest.raises(ConfigError, match=r"config.best_metric='accuracy' is not valid; name a logged"):
    checkpoint.Checkpointer("/tmp/unused", keep=1, async_save=False, fingerprint={}, best_metric="accuracy")


# --- --step best in every command ----------------------------------------------------------------------------------


def test_step_parser():
  assert [restore.parse_step(v) for v in (None, -1, "-1", "latest", "", "best", "BEST", 0, "12", np.int64(3))] == [
    None,
    None,
    None,
    None,
    None,
    "best",
    "best",
    0,
    12,
    3,
  ]
  for bad in ("abc", -2, "1.5", 2.0, True):
    with pytest.raises(
      ConfigError,
      match=r"--step=.* is not valid; give a checkpoint step \(an integer >= 0\), "
      r"'latest' \(or -1\) or 'best'",
    ):
      restore.parse_step(bad)


def test_step_best_in_export_explain_fewshot_and_init_from(run, tmp_path):
  best = restore.resolve_step(run, "best")
  assert export.export_workdir(run, str(tmp_path / "model"), step="best", platforms=("cpu",))["step"] == best
  image = tmp_path / "x.png"
  Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(image)
  index = explain.explain_files(
    run,
    [str(image)],
    step="best",
    output_dir=str(tmp_path / "explained"),
    settings=explain.Settings(methods=("saliency",)),
  )
  assert index["step"] == best
  result = fewshot.evaluate_workdir(run, step="best", shots=(1,), seeds=1, knn_k=(1,), train_examples=32)
  assert result["step"] == best
  source = transfer.read_source(run, "best")
  assert source.description.endswith(f"step {best}")
  np.testing.assert_array_equal(
    jax.tree.leaves(source.variables["params"])[0], jax.tree.leaves(restore.read_variables(run, best)["params"])[0]
  )
  with pytest.raises(ConfigError, match=r"is the checkpoint of step 8 but config.init_from_step='best'"):
    transfer.read_source(step_dir(run, 8), "best")


def test_evaluate_command_with_step_best(run, tmp_path, python):
  best = restore.resolve_step(run, "best")
  proc = subprocess.run(
    [python, "-m", "jaxcls.evaluate", "--workdir", run, "--step", "best", "--output_dir", str(tmp_path)],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(tmp_path / "report.json") as f:
    assert json.load(f)["step"] == best
  proc = subprocess.run(
    [python, "-m", "jaxcls.evaluate", "--workdir", run, "--step", "bestest"],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "jaxcls: error: --step='bestest' is not valid" in proc.stderr


def test_predict_command_with_step_best(run, tmp_path, python):
  best = restore.resolve_step(run, "best")
  image = tmp_path / "x.png"
  Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(image)
  out = tmp_path / "p.json"
  proc = subprocess.run(
    [python, "-m", "jaxcls.predict", "--workdir", run, "--step", "best", "--output", str(out), str(image)],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  written = json.loads(out.read_text())
  assert written["step"] == best and len(written["predictions"]) == 1 and not written["predictions"][0]["error"]


# --- keep_checkpoints >= 1 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_below_one_is_refused_and_nothing_is_deleted(run, keep):
  before = kept_steps(run)
  with pytest.raises(ConfigError, match=rf"keep_checkpoints.*{keep}"):
    train.train_and_evaluate(config(keep_checkpoints=keep, num_train_steps=16), run)
  assert kept_steps(run) == before
  with pytest.raises(ConfigError, match=rf"config.keep_checkpoints={keep} is not valid; keep at least the newest"):
    checkpoint.Checkpointer(run, keep=keep, async_save=False, fingerprint={})


# --- damaged checkpoints -------------------------------------------------------------------------------------------


def test_truncated_latest_step_is_moved_aside_and_the_run_resumes_from_the_previous(trained, run, caplog):
  truncate_arrays(run, 12)
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(config(), run)
  warned = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert len(warned) == 1 and "step 12" in warned[0] and "arrays cannot be read" in warned[0]
  aside = glob.glob(os.path.join(run, checkpoint.CORRUPT_DIR, "12-*"))
  assert len(aside) == 1 and os.path.isdir(os.path.join(aside[0], "state"))  # moved, never deleted
  assert result["step"] == 12
  # Resumed from step 8, the run ends exactly where the undamaged run ended; it knew the best so far (step 2's, in
  # the checkpoint metadata), so its worse evaluation at step 10 was not saved and pruning kept the best.
  for a, b in zip(jax.tree.leaves(saved_state(trained, 12)), jax.tree.leaves(saved_state(run, 12))):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  best = worst_step(eval_accuracies(trained))
  assert kept_steps(run) == sorted({best, 8, 12})


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_latest_step_is_moved_aside(run, kind, caplog):
  DAMAGE[kind](run, 12)
  ckpt, abstract = abstract_state(run)
  try:
    with caplog.at_level(logging.WARNING):
      state, meta = ckpt.restore_latest(lambda: abstract)
    assert meta["step"] == 8 and int(state.step) == 8
    assert 12 not in ckpt.all_steps() and ckpt.latest_step() == 8  # orbax no longer sees it
  finally:
    ckpt.close()
  warned = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert len(warned) == 1 and "step 12" in warned[0] and WHAT[kind] in warned[0], warned
  assert len(glob.glob(os.path.join(run, checkpoint.CORRUPT_DIR, "12-*"))) == 1
  assert not os.path.exists(step_dir(run, 12))


def test_a_garbled_chunk_of_the_latest_step_is_moved_aside(tmp_path, caplog):
  """A chunk stored outside the b-tree node, zeroed: orbax wraps tensorstore's error in a plain Exception, so the
  damage is found in the chain of causes and the resume goes on from the step before (no traceback)."""
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  kernel = np.random.default_rng(0).normal(size=(3, 3, 8, 16)).astype(np.float32)  # big enough to be stored apart
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, async_save=False, fingerprint={"model": "x"})
  try:
    for step in (3, 7):
      ckpt.save(step, {"step": np.int32(step), "params": {"kernel": kernel + step}}, {"next_batch": step}, force=True)
  finally:
    ckpt.close()
  assert destroy_chunks(str(tmp_path), 7, "params.") >= 1
  abstract = {
    "step": jax.ShapeDtypeStruct((), np.int32, sharding=sharding),
    "params": {"kernel": jax.ShapeDtypeStruct(kernel.shape, np.float32, sharding=sharding)},
  }
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, async_save=False, fingerprint={"model": "x"})
  try:
    with caplog.at_level(logging.WARNING):
      state, meta = ckpt.restore_latest(abstract)
  finally:
    ckpt.close()
  assert meta["step"] == 3 and int(state["step"]) == 3
  np.testing.assert_array_equal(np.asarray(state["params"]["kernel"]), kernel + 3)
  warned = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert len(warned) == 1 and "step 7" in warned[0] and 'Error reading "params.kernel' in warned[0], warned
  assert len(glob.glob(os.path.join(str(tmp_path), checkpoint.CORRUPT_DIR, "7-*"))) == 1


def test_a_state_that_does_not_fit_is_an_error_and_nothing_is_moved(run):
  """A checkpoint whose arrays are intact but of other shapes is not damage: resuming from it stops with one line
  (a user must decide), and no step is moved aside."""
  ckpt, abstract = abstract_state(run)
  leaves, treedef = jax.tree.flatten(abstract)
  kernel = next(i for i, leaf in enumerate(leaves) if len(leaf.shape) == 4)
  shape = leaves[kernel].shape
  leaves[kernel] = jax.ShapeDtypeStruct(
    (*shape[:-1], shape[-1] + 1), leaves[kernel].dtype, sharding=leaves[kernel].sharding
  )
  try:
    with pytest.raises(CheckpointError) as error:
      ckpt.restore_latest(jax.tree.unflatten(treedef, leaves))
  finally:
    ckpt.close()
  message = str(error.value)
  assert "\n" not in message and "(step 12) does not fit the configured model and optimizer" in message
  assert message.endswith("use a new --workdir.")
  assert 12 in kept_steps(run) and not os.path.exists(os.path.join(run, checkpoint.CORRUPT_DIR))


def test_no_intact_step_is_a_one_line_error_and_nothing_is_moved(run):
  best = worst_step(eval_accuracies(run))
  truncate_arrays(run, 12)
  shutil.rmtree(os.path.join(step_dir(run, 8), "state"))
  os.remove(os.path.join(step_dir(run, best), "meta", "metadata"))
  with pytest.raises(CheckpointError) as error:
    train.train_and_evaluate(config(), run)
  message = str(error.value)
  assert "\n" not in message and message.startswith("No intact checkpoint is left in")
  assert "step 12: its arrays cannot be read" in message and "step 8: the state item (state/) is missing" in message
  assert f"step {best}: meta/metadata is missing" in message and "nothing was moved or deleted" in message
  assert kept_steps(run) == sorted({best, 8, 12}) and not os.path.exists(os.path.join(run, checkpoint.CORRUPT_DIR))


@pytest.mark.parametrize("kind", ["truncated arrays", "state item deleted", "garbage meta"])
def test_evaluate_on_a_damaged_step_names_it(run, kind, tmp_path):
  DAMAGE[kind](run, 12)
  with pytest.raises(CheckpointError) as error:
    evaluate.evaluate_workdir(run, output_dir=str(tmp_path))
  message = str(error.value)
  assert "\n" not in message and message.startswith("Checkpoint step 12 in") and "is damaged" in message
  assert WHAT[kind] in message
  if kind != "truncated arrays":  # found before reading: the hint names the newest intact step
    assert "pass --step 8 (the newest intact step)" in message
  if kind == "state item deleted":
    assert evaluate.evaluate_workdir(run, step=8, output_dir=str(tmp_path))["step"] == 8
  assert os.path.isdir(step_dir(run, 12))  # reading commands never move anything


def test_damaged_step_in_a_bucket_is_moved_aside(run, gcs, caplog):  # noqa: F811  (gcs: the fixture)
  """gs:// has no rename: the damaged step's objects are copied to corrupt_checkpoints/ and then removed."""
  from etils import epath
  from etils.epath import gpath

  # epath decides once per process whether gs:// goes through TensorFlow (cached on the first path it builds, here
  # before the emulator fixture set EPATH_USE_TF=false); TensorFlow's client cannot reach the emulator.
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  url = gcs.url("damaged")
  for path in glob.glob(os.path.join(run, "checkpoints", "**", "*"), recursive=True):
    if os.path.isfile(path):
      target = epath.Path(url) / os.path.relpath(path, run)
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(open(path, "rb").read())
  for name in ("config.json", "classes.json"):
    (epath.Path(url) / name).write_bytes(open(os.path.join(run, name), "rb").read())
  (epath.Path(url) / "checkpoints" / "12" / "state" / "_METADATA").unlink()
  ckpt, abstract = abstract_state(url)
  try:
    with caplog.at_level(logging.WARNING):
      state, meta = ckpt.restore_latest(lambda: abstract)
    assert meta["step"] == 8 and int(state.step) == 8 and ckpt.latest_step() == 8
  finally:
    ckpt.close()
  assert any("step 12" in r.getMessage() and "state/_METADATA" in r.getMessage() for r in caplog.records)
  assert not [n for n in gcs.objects(url + "/checkpoints") if n.startswith("12/")]
  moved = gcs.objects(url + "/" + checkpoint.CORRUPT_DIR)
  assert any(n.startswith("12-") and n.endswith("/meta/metadata") for n in moved), moved
  assert restore.resolve_step(url, "best") == worst_step(eval_accuracies(run))


def test_saves_that_never_committed_are_moved_aside_and_training_starts_over(run, caplog):
  """On gs:// orbax writes a step folder in place; a run killed during its first save leaves it uncommitted."""
  steps_before = kept_steps(run)
  for step in steps_before:
    os.remove(os.path.join(step_dir(run, step), "commit_success.txt"))
  ckpt, abstract = abstract_state(run)
  try:
    with caplog.at_level(logging.WARNING):
      assert ckpt.restore_latest(lambda: abstract) is None  # nothing was ever complete: start from step 0
    assert ckpt.latest_step() is None
  finally:
    ckpt.close()
  assert any("was ever completed" in r.getMessage() for r in caplog.records)
  moved = sorted(
    int(os.path.basename(p).split("-")[0]) for p in glob.glob(os.path.join(run, checkpoint.CORRUPT_DIR, "*"))
  )
  assert moved == steps_before  # set aside, never deleted
