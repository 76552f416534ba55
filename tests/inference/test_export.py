"""`python -m jaxcls.export` and examples/serve_exported.py: the exported function, reloaded without jaxcls, gives
the same pixels, probabilities and printed lines as `python -m jaxcls.predict`."""

import importlib.metadata
import importlib.util
import io
import json
import os
import subprocess

import numpy as np
import pytest
from conftest import REPO, clean_python, subprocess_env, tiny_config
from PIL import Image

from jaxcls import tasks
from jaxcls.core.errors import ConfigError
from jaxcls.data import preprocess
from jaxcls.inference import exporter as export
from jaxcls.inference import predictor as predict
from jaxcls.store import restore
from jaxcls.training import loop as train

LOADER = os.path.join(REPO, "examples", "serve_exported.py")
CLASSES = ("animal/cat", "animal/dog", "vehicle/car")


def load_loader():
  spec = importlib.util.spec_from_file_location("serve_exported", LOADER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def noisy(rng, brightness, shape):
  return np.clip(rng.normal(brightness, 30, shape), 0, 255).astype(np.uint8)


def write_new_images(folder, rng):
  """Files a user might predict on: large JPEGs (decoded at reduced scale), EXIF rotation, alpha, palette,
  grayscale, 16-bit, and one corrupt file."""
  os.makedirs(folder)
  Image.fromarray(noisy(rng, 90, (40, 56, 3))).save(folder / "big.jpg", quality=90)
  rotated = Image.fromarray(noisy(rng, 150, (30, 44, 3)))
  exif = rotated.getexif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise to view
  rotated.save(folder / "rotated.jpg", exif=exif, quality=90)
  Image.fromarray(np.dstack([noisy(rng, 60, (20, 24, 3)), noisy(rng, 128, (20, 24, 1))])).save(folder / "alpha.png")
  Image.fromarray(noisy(rng, 160, (18, 26, 3))).convert("P").save(folder / "palette.png")
  Image.fromarray(noisy(rng, 100, (22, 22, 1))[..., 0]).save(folder / "gray.jpg")
  Image.fromarray(noisy(rng, 120, (16, 20, 1))[..., 0].astype(np.uint16) * 257).save(folder / "deep.png")
  (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  return sorted(str(folder / name) for name in os.listdir(folder))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A hierarchical model trained on coarse/fine folders, exported, and new images to predict on."""
  rng = np.random.default_rng(0)
  photos = tmp_path_factory.mktemp("photos")
  for k, name in enumerate(CLASSES):
    os.makedirs(photos / name)
    for i in range(6):
      Image.fromarray(noisy(rng, 60 * (k + 1), (24 + 4 * (i % 2), 32, 3))).save(photos / name / f"{i}.jpg")
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(
    **{
      "dataset.name": "folder",
      "dataset.path": str(photos),
      "dataset.class_depth": 2,
      "dataset.eval_crop": "center",
      "dataset.workers": 2,
      "task.type": "hierarchical",
    },
    augment="",
    batch_size=8,
    num_train_steps=4,
    checkpoint_every_steps=4,
    eval_every_steps=4,
    eval_batch_size=8,
  )
  train.train_and_evaluate(config, workdir)
  model_dir = str(tmp_path_factory.mktemp("exported"))
  export.export_workdir(workdir, model_dir)
  files = write_new_images(tmp_path_factory.mktemp("new") / "images", rng)
  return workdir, model_dir, files


def test_metadata_says_how_to_use_the_function(exported):
  _, model_dir, _ = exported
  assert sorted(os.listdir(model_dir)) == ["model.jax", "model.json", "requirements.txt", "weights.npz"]
  with open(os.path.join(model_dir, "model.json")) as f:
    meta = json.load(f)
  with open(os.path.join(model_dir, "requirements.txt")) as f:
    requirements = f.read().splitlines()
  # Pinned to the versions that wrote it; flatbuffers because jax.export.deserialize imports it undeclared.
  assert (
    requirements
    == meta["requirements"]
    == [f"{name}=={importlib.metadata.version(name)}" for name in ("jax", "jaxlib", "flatbuffers", "numpy", "pillow")]
  )
  assert meta["task"] == "hierarchical" and meta["class_names"] == list(CLASSES) and meta["step"] == 4
  assert meta["tree"]["level_names"] == [["animal", "vehicle"], list(CLASSES)]
  assert meta["platforms"] == ["cpu", "cuda", "tpu"]
  prep = meta["preprocessing"]
  assert (prep["image_size"], prep["channels"], prep["crop"], prep["center_crop_fraction"]) == (
    [8, 8],
    3,
    "center",
    0.875,
  )
  assert len(np.load(os.path.join(model_dir, "weights.npz")).files) == meta["num_weights"]


def test_reloaded_function_gives_predicts_pixels_and_probabilities(exported):
  workdir, model_dir, files = exported
  loader = load_loader()
  model, meta = loader.load_model(model_dir)
  restored = restore.restore(workdir)
  images, errors = preprocess.load(files, preprocess.from_config(restored.config))
  good = [path for path, error in zip(files, errors) if error is None]
  assert [os.path.basename(p) for p in files if p not in good] == ["corrupt.jpg"]
  standalone = np.stack([loader.load_image(path, meta["preprocessing"]) for path in good])
  np.testing.assert_array_equal(standalone, images)  # the same uint8 pixels, EXIF, modes and JPEG draft included
  with pytest.raises(OSError):
    loader.load_image(next(p for p in files if p.endswith("corrupt.jpg")), meta["preprocessing"])
  expected = predict.Predictor(restored)(images)
  for rows in (1, 3, len(images)):  # the batch dimension is symbolic: any size runs
    np.testing.assert_allclose(model(images[:rows]), expected[:rows], rtol=0, atol=1e-6)
  records = predict.predict_files(restored, good, top_k=2)
  for path, probs, record in zip(good, model(images), records):
    assert f"{path}: {loader.describe(probs, meta, 2)}" == predict.format_line(record)


def test_loader_serves_in_bounded_batches_of_one_shape(exported):
  """`serve` hands the model at most batch_size images at a time, pads the short last batch (one compiled
  shape), and prints predict's lines; a corrupt file is an error line in its batch."""
  workdir, model_dir, files = exported
  loader = load_loader()
  assert [len(b) for b in loader.batches(files, 3)] == [3, 3, 1] and sum(loader.batches(files, 3), []) == files
  with pytest.raises(ValueError, match="--batch_size=0 must be at least 1"):
    loader.batches(files, 0)
  model, meta = loader.load_model(model_dir)
  shapes = []

  def recorded(images):
    shapes.append(images.shape)
    return model(images)

  out = io.StringIO()
  predicted = loader.serve(recorded, meta, files, top_k=3, batch_size=3, workers=2, out=out)
  assert predicted == len(files) - 1 and shapes == [(3, 8, 8, 3)] * 3
  records = predict.predict_files(restore.restore(workdir), files, top_k=3)
  for line, record in zip(out.getvalue().splitlines(), records, strict=True):
    if record["error"]:
      assert line.startswith(f"{record['path']}: error: ")
    else:
      assert line == predict.format_line(record)
  shapes.clear()
  loader.serve(recorded, meta, files[:2], top_k=1, batch_size=3, out=io.StringIO())
  assert shapes == [(2, 8, 8, 3)]  # a single batch is not padded


def test_loader_command_runs_without_jaxcls(exported, python):
  workdir, model_dir, files = exported
  blocked = (
    "import runpy, sys; sys.modules['jaxcls'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
  )
  env = subprocess_env(1)
  env["PYTHONPATH"] = ""
  proc = subprocess.run(
    [python, "-c", blocked, LOADER, model_dir, *files, "--top_k", "3"],
    env=env,
    cwd=os.path.dirname(model_dir),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"served {len(files) - 1} image(s) in " in proc.stderr and " images/s" in proc.stderr
  records = predict.predict_files(restore.restore(workdir), files, top_k=3)
  lines = proc.stdout.splitlines()
  assert len(lines) == len(files)
  for line, record in zip(lines, records):
    if record["error"]:
      assert line.startswith(f"{record['path']}: error: ")
    else:
      assert line == predict.format_line(record)


def serve_in(python_path, model_dir, files):
  """examples/serve_exported.py run by `python_path` in isolated mode (-I: no PYTHONPATH, no user site)."""
  env = {key: value for key, value in subprocess_env(1).items() if not key.startswith("PYTHON")}
  return subprocess.run(
    [python_path, "-I", LOADER, model_dir, *files, "--top_k", "3"],
    env=env,
    cwd=os.path.dirname(model_dir),
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_export_serves_in_a_fresh_venv_with_only_its_requirements(exported, tmp_path, python):
  """A venv holding exactly requirements.txt (and what those packages depend on) serves the export with predict's
  lines; leaving out a declared package (flatbuffers) is a one-line error naming it, not a traceback."""
  workdir, model_dir, files = exported
  with open(os.path.join(model_dir, "requirements.txt")) as f:
    requirements = f.read().splitlines()
  clean = clean_python(tmp_path / "venv", requirements)
  probe = subprocess.run(
    [
      clean,
      "-I",
      "-c",
      "import importlib.util as u; print([m for m in ('jaxcls', 'flax', "
      "'orbax', 'tensorflow', 'jax', 'flatbuffers', 'PIL') if u.find_spec(m)])",
    ],
    capture_output=True,
    text=True,
    check=True,
  )
  assert probe.stdout.strip() == "['jax', 'flatbuffers', 'PIL']"
  proc = serve_in(clean, model_dir, files)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = predict.predict_files(restore.restore(workdir), files, top_k=3)
  for line, record in zip(proc.stdout.splitlines(), records, strict=True):
    assert line.startswith(f"{record['path']}: error: ") if record["error"] else line == predict.format_line(record)

  lacking = clean_python(tmp_path / "lacking", requirements, without=["flatbuffers"])
  proc = serve_in(lacking, model_dir, files)
  assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
  assert proc.stderr.strip() == (
    f"serve_exported.py: error: {model_dir} needs flatbuffers=="
    f"{importlib.metadata.version('flatbuffers')}, which is not installed here: "
    f"pip install -r {os.path.join(model_dir, 'requirements.txt')}"
  )


def test_export_command_and_its_errors(exported, tmp_path, python):
  workdir, model_dir, _ = exported
  proc = subprocess.run(
    [python, "-m", "jaxcls.export", "--workdir", workdir, "--output", str(tmp_path / "cpu"), "--platforms", "cpu"],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Exported simple_cnn (step 4, hierarchical, 3 classes, 8x8 input) as model.jax for cpu to " in proc.stdout
  with np.load(tmp_path / "cpu" / "weights.npz") as ours, np.load(os.path.join(model_dir, "weights.npz")) as theirs:
    assert ours.files == theirs.files and all(np.array_equal(ours[k], theirs[k]) for k in ours.files)
  with pytest.raises(ConfigError, match="--format=tflite is not valid; use one of jax, onnx"):
    export.export_workdir(workdir, str(tmp_path / "bad"), format="tflite")
  with pytest.raises(ConfigError, match="--platforms=gpu is not valid; use some of cpu, cuda, rocm, tpu"):
    export.export_workdir(workdir, str(tmp_path / "bad"), platforms=["gpu"])
  with pytest.raises(ConfigError, match="config.json does not exist"):
    export.export_workdir(str(tmp_path / "nowhere"), str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")


def test_task_metadata_of_binary_and_multilabel():
  meta = tasks.build({"type": "binary", "threshold": 0.3}, 2).export_metadata(["ok", "defect"])
  assert meta == {"output": "positive-class probability [B]", "threshold": 0.3, "positive_class": "defect"}
  meta = tasks.build({"type": "multilabel", "thresholds": 0.4}, 3).export_metadata(["a", "b", "c"])
  assert meta == {"output": "probabilities [B, K]", "thresholds": [0.4, 0.4, 0.4]}
  loader = load_loader()
  line = loader.describe(
    np.array([0.5, 0.2, 0.9], np.float32), {"task": "multilabel", "class_names": ["a", "b", "c"], **meta}, 2
  )
  assert line == "c 0.9000, a 0.5000 (top: c 0.9000, a 0.5000)"
  names = ["ok", "defect"]
  for positive in names:  # the loader's binary line is predict's, whichever class is positive
    task = tasks.build({"type": "binary", "threshold": 0.3, "positive_class": positive, "class_names": names}, 2)
    for p in (0.2, 0.3, 0.7):
      record = task.prediction_record(names, np.float32(p), 2)
      shown = loader.describe(np.float32(p), {"task": "binary", "class_names": names, **task.export_metadata(names)}, 2)
      assert f"x: {shown}" == predict.format_line({"path": "x", "error": None, **record})
