"""predict's forward-pass cache: a second predict on a checkpoint runs the kept executable and weights (no restore),
prints what the first printed, and a stale, damaged or missing entry only costs a restore."""

import json
import os
import pathlib
import pickle
import subprocess
import time

import jax
import numpy as np
import pytest
from conftest import REPO, subprocess_env, write_image_files

from jaxcls.core import compile_cache
from jaxcls.inference import forward_cache
from jaxcls.inference import predictor as predict
from jaxcls.store import restore


@pytest.fixture
def workdir(digits_workdir) -> str:
  return digits_workdir


@pytest.fixture
def files(tmp_path) -> list[str]:
  """13 grayscale PNGs, two of them unreadable (error lines between predicted ones)."""
  return write_image_files(tmp_path / "images", 13, unreadable=(3, 9))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> pathlib.Path:
  """An empty cache folder of this test's own; the run's shared compilation cache is back on afterwards."""
  monkeypatch.setenv("JAXCLS_CACHE_DIR", str(tmp_path / "cache"))
  yield tmp_path / "cache" / forward_cache.SUBFOLDER
  monkeypatch.undo()
  compile_cache.enable("auto", announce=False)


def no_restore(monkeypatch):
  """From now on, restoring the model fails the test: the cached entry must serve everything."""

  def fail(*args, **kwargs):
    raise AssertionError("restore.complete ran: the cached forward pass was not used")

  monkeypatch.setattr(restore, "complete", fail)


def predict_lines(workdir, files, capsys, tmp_path, **kwargs) -> tuple[list[str], dict, str]:
  """(stdout lines, --output JSON, stderr) of one `predictor.run`."""
  output = tmp_path / f"out-{time.perf_counter_ns()}.json"
  assert predict.run(workdir, files, top_k=3, output=str(output), **kwargs) == 0
  captured = capsys.readouterr()
  with open(output) as f:
    return captured.out.splitlines(), json.load(f), captured.err


def entries(cache: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in cache.iterdir() if not p.name.startswith(".tmp-"))


def test_a_second_predict_runs_the_kept_executable_and_prints_the_same(workdir, files, cache, capsys, monkeypatch):
  lines, first, _ = predict_lines(workdir, files, capsys, cache.parent, batch_size=8)
  (entry,) = entries(cache)
  assert sorted(os.listdir(entry)) == ["entry.json", "forward-8.bin", "weights.npz"]
  with open(entry / "entry.json") as f:
    assert json.load(f)["step"] == 300
  no_restore(monkeypatch)
  again, second, err = predict_lines(workdir, files, capsys, cache.parent, batch_size=8)
  assert again == lines and len(lines) == 13 and sum(": error: " in line for line in lines) == 2
  assert second == first  # every probability, bit for bit (the same executable and weights)
  assert err.splitlines()[-2].startswith("jaxcls: predicted 11 image(s) with simple_cnn (step 300)")


def test_a_batch_shape_the_entry_lacks_restores_the_model_and_joins_the_entry(
  workdir, files, cache, capsys, monkeypatch
):
  predict_lines(workdir, files, capsys, cache.parent, batch_size=8)  # two batches of 8 rows
  lines, _, _ = predict_lines(workdir, files, capsys, cache.parent, batch_size=16)  # one batch of 16 rows: a miss
  (entry,) = entries(cache)
  assert sorted(os.listdir(entry)) == ["entry.json", "forward-16.bin", "forward-8.bin", "weights.npz"]
  records = predict.predict_files(restore.restore(workdir), files, top_k=3, batch_size=16)
  assert [predict.format_line(r) for r in records] == lines
  no_restore(monkeypatch)
  assert predict_lines(workdir, files, capsys, cache.parent, batch_size=16)[0] == lines


def damage_executable(entry: pathlib.Path) -> None:
  path = entry / "forward-8.bin"
  path.write_bytes(path.read_bytes()[:100])


def damage_weights(entry: pathlib.Path) -> None:
  (entry / "weights.npz").write_bytes(b"not a zip file")


def weights_of_other_shapes(entry: pathlib.Path) -> None:
  with np.load(entry / "weights.npz") as npz:
    leaves = {name: np.zeros(npz[name].shape + (2,), npz[name].dtype) for name in npz.files}
  np.savez(entry / "weights.npz", **leaves)


def remove_entry_file(entry: pathlib.Path) -> None:
  (entry / "entry.json").unlink()


def reserialized_executable(entry: pathlib.Path) -> None:
  """The executable loaded and serialized again: on CPU it loads, and fails when it runs (XLA keeps no machine
  code for a loaded executable), the case of an entry written from an executable jax's cache had loaded."""
  from jax.experimental import serialize_executable

  path = entry / "forward-8.bin"
  loaded = serialize_executable.deserialize_and_load(*pickle.loads(path.read_bytes()))
  path.write_bytes(pickle.dumps(serialize_executable.serialize(loaded)))


@pytest.mark.parametrize(
  "damage", [damage_executable, damage_weights, weights_of_other_shapes, remove_entry_file, reserialized_executable]
)
def test_a_damaged_entry_costs_a_restore_and_is_written_anew(workdir, files, cache, capsys, monkeypatch, damage):
  lines, first, _ = predict_lines(workdir, files, capsys, cache.parent, batch_size=8)
  (entry,) = entries(cache)
  damage(entry)
  again, second, err = predict_lines(workdir, files, capsys, cache.parent, batch_size=8)
  assert again == lines and second == first
  assert "Traceback" not in err
  assert sorted(os.listdir(entry)) == ["entry.json", "forward-8.bin", "weights.npz"]
  no_restore(monkeypatch)
  assert predict_lines(workdir, files, capsys, cache.parent, batch_size=8)[0] == lines


def test_the_key_follows_the_checkpoint_the_config_and_the_xla_flags(workdir, monkeypatch):
  described = restore.describe(workdir)
  key, parts = forward_cache.entry_key(described)
  assert forward_cache.entry_key(restore.describe(workdir))[0] == key  # stable while nothing changes
  assert parts["workdir"] == os.path.abspath(workdir) and parts["step"] == 300

  chunk = next(p for p in sorted(pathlib.Path(workdir, "checkpoints", "300").rglob("*")) if p.is_file())
  stat = chunk.stat()
  os.utime(chunk, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a file of the step written again
  touched = forward_cache.entry_key(restore.describe(workdir))[0]
  assert touched != key

  config_path = pathlib.Path(workdir, "config.json")
  config = json.loads(config_path.read_text())
  config["dataset"]["center_crop_fraction"] = 0.5  # preprocessing that changes what predict computes
  config_path.write_text(json.dumps(config))
  edited = forward_cache.entry_key(restore.describe(workdir))[0]
  assert edited not in (key, touched)

  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_fast_math=false")
  flags = forward_cache.entry_key(restore.describe(workdir))[0]
  assert flags not in (key, touched, edited)

  stray = os.path.join(os.fsencode(workdir), b"checkpoints", b"300", b"stray-\xff")  # a name that is not UTF-8
  open(stray, "wb").close()
  assert forward_cache.entry_key(restore.describe(workdir))[0] not in (key, touched, edited, flags)


def test_a_new_config_is_a_new_entry_with_its_own_predictions(workdir, files, cache, capsys, tmp_path):
  lines, _, _ = predict_lines(workdir, files, capsys, tmp_path, batch_size=8)
  config_path = pathlib.Path(workdir, "config.json")
  config = json.loads(config_path.read_text())
  config["dataset"]["mean"] = [0.9]  # another normalisation: other probabilities
  config_path.write_text(json.dumps(config))
  changed, _, _ = predict_lines(workdir, files, capsys, tmp_path, batch_size=8)
  assert len(entries(cache)) == 2
  assert changed != lines
  records = predict.predict_files(restore.restore(workdir), files, top_k=3, batch_size=8)
  assert [predict.format_line(r) for r in records] == changed


def test_the_cache_is_off_with_the_compilation_cache(workdir, files, cache, capsys, tmp_path):
  config_path = pathlib.Path(workdir, "config.json")
  config = json.loads(config_path.read_text())
  config["compilation_cache_dir"] = ""
  config_path.write_text(json.dumps(config))
  predict_lines(workdir, files, capsys, tmp_path, batch_size=8)
  predict_lines(workdir, files, capsys, tmp_path, batch_size=8)
  assert not cache.exists()


def test_a_cache_that_cannot_be_written_leaves_predict_as_it_was(workdir, files, cache, capsys, tmp_path):
  cache.parent.mkdir(parents=True)
  cache.write_text("a file where the cache's folder would be")
  lines, _, err = predict_lines(workdir, files, capsys, tmp_path, batch_size=8)
  again, _, err_again = predict_lines(workdir, files, capsys, tmp_path, batch_size=8)
  assert again == lines and len(lines) == 13
  for text in (err, err_again):  # only predict's own lines
    assert [line.split(" ")[1] for line in text.splitlines()] == ["predicted", "2"]


def fake_entry(root: pathlib.Path, name: str, size: int, age: float) -> pathlib.Path:
  entry = root / name
  entry.mkdir(parents=True)
  (entry / "weights.npz").write_bytes(b"\0" * size)
  stamp = time.time() - age
  os.utime(entry, (stamp, stamp))
  return entry


def test_prune_removes_the_least_recently_used_entries_and_stale_temporary_folders(tmp_path):
  old = fake_entry(tmp_path, "a" * 64, 400, age=300)
  middle = fake_entry(tmp_path, "b" * 64, 400, age=200)
  new = fake_entry(tmp_path, "c" * 64, 400, age=100)
  kept_old = fake_entry(tmp_path, "d" * 64, 400, age=400)  # the oldest, but the entry just written
  stale = fake_entry(tmp_path, ".tmp-killed", 10, age=2 * forward_cache.STALE_TEMPORARY_SECONDS)
  busy = fake_entry(tmp_path, ".tmp-writing", 10, age=5)
  removed = forward_cache.prune(str(tmp_path), keep=str(kept_old), max_bytes=900)
  assert sorted(removed) == sorted([str(stale), str(old), str(middle)])
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new.name, kept_old.name, busy.name])
  assert forward_cache.prune(str(tmp_path), max_bytes=900) == []


def test_nothing_compiled_while_the_compilation_cache_is_paused_comes_from_it_or_goes_to_it(tmp_path):
  """Executables compiled inside `paused` are fresh (and so serialize whole); outside it the cache works again."""
  from jax.experimental import serialize_executable

  folder = tmp_path / "xla"
  try:
    compile_cache.enable(str(folder), announce=False)
    x = np.arange(8, dtype=np.float32)
    jax.jit(lambda v: v * 3 + 1).lower(x).compile()
    assert compile_cache.entries(str(folder)) == 1
    with compile_cache.paused():
      compiled = jax.jit(lambda v: v * 3 + 1).lower(x).compile()  # the same program: it would be a cache hit
      jax.jit(lambda v: v * 5).lower(x).compile()
    assert compile_cache.entries(str(folder)) == 1
    blob = pickle.loads(pickle.dumps(serialize_executable.serialize(compiled)))
    reloaded = serialize_executable.deserialize_and_load(*blob, execution_devices=jax.devices()[:1])
    np.testing.assert_array_equal(reloaded(x), x * 3 + 1)
    jax.jit(lambda v: v * 7).lower(x).compile()
    assert compile_cache.entries(str(folder)) == 2
  finally:
    compile_cache.enable("auto", announce=False)


def test_the_command_run_again_imports_neither_flax_nor_orbax(workdir, files, tmp_path, python):
  """Two real `python -m jaxcls.predict` runs: the second prints the same lines, and its import log (-X
  importtime) holds no flax, orbax or optax module."""
  env = {**subprocess_env(), "JAXCLS_CACHE_DIR": str(tmp_path / "cache")}
  command = ["-m", "jaxcls.predict", "--workdir", workdir, "--batch_size", "8", "--top_k", "3", *files]
  runs = [
    subprocess.run([python, *flags, *command], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    for flags in ([], ["-X", "importtime"])
  ]
  assert [run.returncode for run in runs] == [0, 0], runs[1].stderr[-2000:]
  assert runs[1].stdout == runs[0].stdout and len(runs[0].stdout.splitlines()) == 13
  imported = {line.split("|")[-1].strip() for line in runs[1].stderr.splitlines() if line.startswith("import time:")}
  assert "jax" in imported and "jaxcls.inference.forward_cache" in imported
  assert not {name for name in imported if name.split(".")[0] in ("flax", "orbax", "optax", "tensorstore")}
