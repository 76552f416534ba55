"""`python -m jaxcls.predict`: eval preprocessing, batching over devices, per-task records, per-file errors."""

import concurrent.futures
import csv
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import REPO, eval_step_outputs, subprocess_env, tiny_config
from PIL import Image
from sklearn.metrics import accuracy_score

from jaxcls import tasks
from jaxcls.core.errors import CheckpointError, ConfigError, DataError
from jaxcls.data import preprocess
from jaxcls.data.sources import folder_scan
from jaxcls.inference import predictor as predict
from jaxcls.store import restore
from jaxcls.training import loop as train

CLASSES = ("cat", "dog", "fox")


def write_photos(root, per_class=8, seed=0):
  """Noisy images whose brightness depends on the class, in varied sizes and formats (PNG and JPEG)."""
  rng = np.random.default_rng(seed)
  for k, name in enumerate(CLASSES):
    os.makedirs(root / name, exist_ok=True)
    for i in range(per_class):
      pixels = np.clip(rng.normal(60 * (k + 1), 30, (12 + 2 * (i % 3), 18 - 2 * (i % 2), 3)), 0, 255)
      Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.{('png', 'jpg')[i % 2]}")
  return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A folder-trained workdir with a centre-cropped eval split (so cropping is checked, not only resizing)."""
  photos = write_photos(tmp_path_factory.mktemp("photos"))
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(
    **{
      "dataset.name": "folder",
      "dataset.path": str(photos),
      "dataset.eval_crop": "center",
      "dataset.center_crop_fraction": 0.8,
      "dataset.workers": 2,
      "dataset.test_fraction": 0.25,
    },
    augment="",
    num_train_steps=4,
    checkpoint_every_steps=4,
    eval_every_steps=4,
    eval_batch_size=8,
  )
  train.train_and_evaluate(config, workdir)
  return workdir, photos


def eval_outputs(workdir):
  """Every eval example's probabilities as the training code's eval step computes them, and the eval files."""
  config = restore.load_config(workdir)
  outputs = eval_step_outputs(workdir, 8)
  _, (paths, labels) = folder_scan.chosen(folder_scan.scan(config.dataset), config.dataset)
  return outputs, paths, labels


def test_predictions_equal_what_evaluation_computes(trained):
  workdir, _ = trained
  outputs, paths, labels = eval_outputs(workdir)
  restored = restore.restore(workdir)
  records = predict.predict_files(restored, paths, top_k=len(CLASSES), batch_size=4)
  assert [r["path"] for r in records] == paths and not any(r["error"] for r in records)
  probs = np.array([[dict(r["top_k"])[name] for name in CLASSES] for r in records])
  np.testing.assert_array_equal(outputs["labels"], labels)
  np.testing.assert_allclose(probs, outputs["probs"], rtol=0, atol=1e-6)
  predicted = [CLASSES.index(r["prediction"]) for r in records]
  np.testing.assert_array_equal(predicted, outputs["probs"].argmax(1))
  # The accuracy training reported on this split, recomputed from predict's top-1 classes by scikit-learn.
  with open(os.path.join(workdir, "report.json")) as f:
    assert accuracy_score(labels, predicted) == pytest.approx(json.load(f)["accuracy"], abs=1e-12)


def test_batches_are_padded_over_the_devices_and_compiled_once_per_shape(trained):
  restored = restore.restore(trained[0])
  files = preprocess.find_images([str(trained[1])])
  assert len(files) == 24 and files == sorted(files)
  images, errors = preprocess.load(files, preprocess.from_config(restored.config))
  assert images.shape == (24, 8, 8, 3) and errors == [None] * 24
  predictor = predict.Predictor(restored, batch_size=12)  # rounded up to 16 on 8 devices
  assert predictor.batch_size == 16
  together = predictor(images)
  one_by_one = np.concatenate([predictor(images[i : i + 1]) for i in range(3)])
  assert together.shape == (24, 3)
  np.testing.assert_allclose(together.sum(1), 1.0, atol=1e-5)
  np.testing.assert_allclose(one_by_one, together[:3], atol=1e-6)
  assert sorted(predictor.compiled) == [8, 16]  # 16 rows, and 8 (the padded last batch and the single images)
  with pytest.raises(ValueError, match="must be uint8 .* not float32"):  # never silently rescaled
    predictor(images.astype(np.float32) / 255)
  with pytest.raises(ValueError, match="A batch of 17 images does not fit batch_size=16"):
    predictor.dispatch(np.concatenate([images, images])[:17])


def test_batches_are_consecutive_runs_of_at_most_batch_size():
  items = [f"f{i}.png" for i in range(7)]
  assert [len(b) for b in preprocess.batches(items, 3)] == [3, 3, 1]
  assert sum(preprocess.batches(items, 3), []) == items
  assert list(preprocess.batches(items, 7)) == [items] and list(preprocess.batches([], 4)) == []
  with pytest.raises(ConfigError, match="--batch_size=0 must be at least 1"):
    list(preprocess.batches(items, 0))


def test_stream_decodes_a_bounded_number_of_batches_ahead(trained, monkeypatch):
  """However many files, no more than `ahead` batches beyond the one in use are ever handed to the decoders."""
  submitted = []

  class Counting(concurrent.futures.ThreadPoolExecutor):
    def submit(self, fn, /, *args, **kwargs):
      if fn is preprocess._load_some:  # pylint: disable=protected-access  (image files handed to a decoder)
        submitted.extend(args[0])
      return super().submit(fn, *args, **kwargs)

  prep = preprocess.from_config(restore.load_config(trained[0]))
  monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", Counting)
  files = preprocess.find_images([str(trained[1])]) + [str(trained[1] / "missing.png")]  # 25 files
  reference, reasons = preprocess.load(files, prep)
  submitted.clear()
  seen, rows = [], 0
  with preprocess.stream(files, prep, batch_size=4, workers=2, ahead=2) as decoded:
    for used, (paths, images, errors) in enumerate(decoded, start=1):
      assert len(submitted) == min(len(files), 4 * (used + 2))  # the used batches and 2 ahead, never more
      assert len(paths) == len(errors) <= 4 and len(images) == sum(e is None for e in errors)
      np.testing.assert_array_equal(images, reference[rows : rows + len(images)])  # the pixels `load` gives
      seen += paths
      rows += len(images)
  assert seen == files == submitted and errors == ["no such file"] and reasons[-1] == "no such file"
  assert preprocess.batches_ahead(64, prep, budget_bytes=64 * 8 * 8 * 3 * 5) == 5
  assert preprocess.batches_ahead(64, prep, budget_bytes=1) == 2


def test_streamed_batches_equal_evaluation_with_one_compiled_shape(trained):
  """A run of several batches pads its short last batch to the full batch size: one shape, the same outputs."""
  workdir, _ = trained
  outputs, paths, _ = eval_outputs(workdir)
  restored = restore.restore(workdir)
  predictor = predict.Predictor(restored, batch_size=4)  # rounded up to 8 on 8 devices; 6 eval files: one batch
  assert predict.full_rows(paths, predictor.batch_size) is None
  files = paths * 3  # 18 files: batches of 8, 8 and 2
  rows = predict.full_rows(files, predictor.batch_size)
  assert rows == 8
  with predict.decoding(restored.config, files, predictor.batch_size, workers=2) as decoded:
    records = list(predict.predict_batches(restored, predictor, decoded, top_k=len(CLASSES), rows=rows))
  probs = np.array([[dict(r["top_k"])[name] for name in CLASSES] for r in records])
  np.testing.assert_allclose(probs, np.tile(outputs["probs"], (3, 1)), rtol=0, atol=1e-6)
  assert [r["path"] for r in records] == files
  assert list(predictor.compiled) == [8]


def test_unreadable_files_get_error_rows_and_the_rest_go_on(trained, tmp_path, capsys):
  workdir, photos = trained
  new = tmp_path / "new"
  os.makedirs(new / "nested")
  shutil.copy(photos / "cat" / "0.png", new / "a.png")
  shutil.copy(photos / "fox" / "1.jpg", new / "nested" / "b.jpg")
  good = (photos / "dog" / "1.jpg").read_bytes()
  (new / "nested" / "truncated.jpg").write_bytes(good[: len(good) // 2])
  (new / "garbage.png").write_bytes(b"not a png at all")
  (new / "notes.txt").write_text("ignored: not an image extension")
  missing = str(tmp_path / "missing.jpg")
  status = predict.run(workdir, [str(new), missing], top_k=2, output=str(tmp_path / "out.csv"))
  captured = capsys.readouterr()
  lines = captured.out.splitlines()
  assert status == 0 and len(lines) == 5
  assert re.search(
    r"^jaxcls: predicted 2 image\(s\) with simple_cnn \(step 4\) in \d+\.\d\d s: \d+\.\d images/s "
    r"\(\d+\.\d\d s to the first batch, start-up included\)\.$",
    captured.err,
    re.M,
  ), captured.err
  assert "jaxcls: 3 of 5 file(s) could not be read." in captured.err
  assert lines[0].startswith(f"{new / 'a.png'}: ") and "error" not in lines[0]
  assert (
    lines[1] == f"{new / 'garbage.png'}: error: unreadable or truncated image "
    f"(UnidentifiedImageError: cannot identify image file '{new / 'garbage.png'}')"
  )
  assert lines[2].startswith(f"{new / 'nested' / 'b.jpg'}: ")
  assert lines[3].startswith(f"{new / 'nested' / 'truncated.jpg'}: error: unreadable or truncated image")
  assert lines[4] == f"{missing}: error: no such file"
  with open(tmp_path / "out.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == [
    "path",
    "prediction",
    "probability",
    "class_1",
    "probability_1",
    "class_2",
    "probability_2",
    "error",
  ]
  assert [bool(r["error"]) for r in rows] == [False, True, False, True, True]
  assert rows[0]["prediction"] == rows[0]["class_1"] and float(rows[0]["probability"]) > 1 / 3
  assert rows[4]["error"] == "no such file" and rows[4]["prediction"] == ""
  # Only unreadable files: exit status 1, and the JSON output still lists each one with its error.
  status = predict.run(workdir, [str(new / "garbage.png"), missing], output=str(tmp_path / "out.json"))
  assert status == 1
  written = json.loads((tmp_path / "out.json").read_text())
  assert written["step"] == 4 and written["task"] == "multiclass"
  assert [r["error"] for r in written["predictions"]][1] == "no such file"


def test_bad_workdirs_and_options_are_named(trained, tmp_path):
  with pytest.raises(ConfigError, match="config.json does not exist; --workdir must be a directory"):
    predict.run(str(tmp_path / "nothing"), ["x.jpg"])
  os.makedirs(tmp_path / "untrained")
  shutil.copy(os.path.join(trained[0], "config.json"), tmp_path / "untrained")
  with pytest.raises(CheckpointError, match="holds no checkpoint; train first"):
    predict.run(str(tmp_path / "untrained"), [str(trained[1])])
  with pytest.raises(CheckpointError, match="No checkpoint at step 3 .* available: 4"):
    predict.run(trained[0], [str(trained[1])], step=3)
  with pytest.raises(ConfigError, match="--output=out.txt must end in .csv or .json"):
    predict.run(trained[0], [str(trained[1])], output="out.txt")
  with pytest.raises(DataError, match="No image files in"):
    predict.run(trained[0], [str(tmp_path / "untrained")])
  with pytest.raises(ConfigError, match=r"^--batch_size=0 must be at least 1 \(leave it out for the config's"):
    predict.run(trained[0], [str(trained[1])], batch_size=0)  # 0 was taken as "the default" without a word
  with pytest.raises(ConfigError, match=r"^--workers=-1 must be 0 \(one decoding thread per CPU core\) or more"):
    predict.run(trained[0], [str(trained[1])], workers=-1)


def test_command_line(trained, tmp_path, python):
  workdir, photos = trained
  out = tmp_path / "predictions.json"
  proc = subprocess.run(
    [python, "-m", "jaxcls.predict", "--workdir", workdir, "--top_k", "2", "--output", str(out), str(photos / "dog")],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  records = json.loads(out.read_text())["predictions"]
  assert len(lines) == len(records) == 8
  assert lines == [predict.format_line(r) for r in records]
  assert all(len(r["top_k"]) == 2 for r in records)
  assert re.search(r"jaxcls: predicted 8 image\(s\) .* images/s", proc.stderr)  # flushed before the prompt exit
  proc = subprocess.run(
    [python, "-m", "jaxcls.predict", "--workdir", str(tmp_path / "nowhere"), "x.jpg"],
    env=subprocess_env(1),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2 and "jaxcls: error: " in proc.stderr and "config.json does not exist" in proc.stderr


# --- records of each task type (no training needed) ----------------------------------------------------------------


def test_binary_record_compares_the_positive_probability_with_the_threshold():
  task = tasks.build({"type": "binary", "threshold": 0.7}, 2)
  record = task.prediction_record(["ok", "defect"], np.float32(0.65), top_k=5)
  assert record["prediction"] == "ok" and record["probability"] == pytest.approx(0.35)
  assert record["top_k"] == [["defect", pytest.approx(0.65)], ["ok", pytest.approx(0.35)]]
  line = predict.format_line({"path": "x.png", "error": None, **record})
  assert line == "x.png: ok (P(defect) 0.6500 < threshold 0.7)"
  assert task.prediction_record(["ok", "defect"], np.float32(0.7), top_k=1)["prediction"] == "defect"


def test_multilabel_record_lists_the_labels_at_or_above_their_thresholds(tmp_path):
  names = ["sky", "tree", "car", "road"]
  task = tasks.build({"type": "multilabel", "thresholds": (0.5, 0.3, 0.9, 0.5)}, 4)
  probs = np.array([0.6, 0.3, 0.8, 0.1], np.float32)
  # The task's own decision on the device (logits whose sigmoids are these probabilities) agrees.
  decided = np.asarray(task.predict(np.log(probs / (1 - probs))[None]))[0]
  record = task.prediction_record(names, probs, top_k=2)
  assert [name for name, _ in record["labels"]] == ["sky", "tree"] == [n for n, d in zip(names, decided) if d]
  assert record["prediction"] == "sky;tree" and record["probability"] is None
  assert [name for name, _ in record["top_k"]] == ["car", "sky"]
  line = predict.format_line({"path": "p.jpg", "error": None, **record})
  assert line == "p.jpg: sky 0.6000, tree 0.3000 (top: car 0.8000, sky 0.6000)"
  none = task.prediction_record(names, np.zeros(4, np.float32), top_k=1)
  assert none["prediction"] == "" and "no label at or above its threshold" in predict.format_line(
    {"path": "q.jpg", "error": None, **none}
  )
  predict.write_output(str(tmp_path / "m.csv"), [{"path": "p.jpg", "error": None, **record}], {})
  row = next(csv.DictReader(io.StringIO((tmp_path / "m.csv").read_text())))
  assert row["labels"] == "sky=0.6;tree=0.3" and row["class_1"] == "car" and row["probability"] == ""


def test_hierarchical_record_gives_the_predicted_path():
  names = ["animal/cat", "animal/dog", "vehicle/car"]
  task = tasks.build({"type": "hierarchical", "tree": "folders", "class_names": names}, 3)
  record = task.prediction_record(names, np.array([0.2, 0.5, 0.3], np.float32), top_k=3)
  assert record["hierarchy"] == ["animal", "animal/dog"] and record["prediction"] == "animal/dog"
  line = predict.format_line({"path": "h.png", "error": None, **record})
  assert line == "h.png: animal > animal/dog 0.5000 (top: animal/dog 0.5000, vehicle/car 0.3000, animal/cat 0.2000)"
