"""The path layer against a real GCS API (gcp-storage-emulator on localhost): URLs, writers without appends,
reports, plots, checkpoint listing and the data sources, each on gs:// as on a local disk."""

import io
import json
import os

import numpy as np
import pytest
from etils import epath
from gcs_emulator import gcs  # noqa: F401  pylint: disable=unused-import  (the fixture)
from tensorboard.backend.event_processing import event_accumulator

from jaxcls.core import paths
from jaxcls.core.errors import ConfigError
from jaxcls.evaluation import report
from jaxcls.store import restore
from jaxcls.training import writers


def _lines(url):
  return [json.loads(line) for line in epath.Path(url).read_text().splitlines()]


# --- URLs. ---


@pytest.mark.parametrize(
  "value, expected",
  [
    ("gs:/bucket/run", "is not a valid URL; write it as gs://BUCKET/PATH"),
    ("gs://", "is not a valid URL"),
    ("ftp://host/run", "unsupported scheme ftp://"),
    ("", "is empty"),
  ],
)
def test_bad_urls_are_one_line_config_errors(value, expected, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ConfigError, match=expected):
    paths.path(value, "workdir")
  assert os.listdir(tmp_path) == []  # nothing named after the URL appeared locally


def test_s3_without_s3fs_names_the_package():
  pytest.importorskip("etils")
  try:
    import s3fs  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

    pytest.skip("s3fs is installed here")
  except ImportError:
    pass
  with pytest.raises(ConfigError, match="needs the s3fs package.*pip install s3fs"):
    paths.path("s3://bucket/run", "workdir")


def test_local_paths_are_absolute_and_makedirs_makes_nothing_remote(gcs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(paths.path("run")) == os.path.join(str(tmp_path), "run")
  assert os.fspath(paths.makedirs("a/b")) == os.path.join(str(tmp_path), "a", "b")
  assert os.path.isdir(tmp_path / "a" / "b")
  url = gcs.url("run")
  assert os.fspath(paths.makedirs(url)) == url
  assert sorted(os.listdir(tmp_path)) == ["a"]


def test_a_folder_that_cannot_be_made_is_one_line():
  """mkdir under /proc fails with ENOENT, which is no disk fault (that errno also means a missing input)."""
  with pytest.raises(ConfigError, match=r"^Cannot create the --output_dir /proc/jaxcls-test/x \(No such file or"):
    paths.makedirs("/proc/jaxcls-test/x", "--output_dir")


def test_a_write_that_fails_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path):
  target = tmp_path / "report.json"
  paths.write_text(target, '{"old": 1}')
  with pytest.raises(TypeError):  # fails inside the temporary file's write, as a full disk would
    paths.write_bytes(target, "text, not bytes")
  assert target.read_text() == '{"old": 1}'
  assert os.listdir(tmp_path) == ["report.json"]


# --- metrics.jsonl without appends. ---


def test_remote_jsonl_keeps_every_line_and_each_is_uploaded_at_once(gcs):
  url = gcs.url("metrics.jsonl")
  writer = writers.JsonlWriter(url, resume_step=0)
  for step in (1, 2, 3):
    writer.write_scalars(step, {"train/loss": float(step)})
    # Read by another client, as after a SIGKILL right here: every line written so far is in the bucket.
    assert [r["step"] for r in _lines(url)] == list(range(1, step + 1))
  writer.close()


def test_remote_jsonl_resume_truncates_and_appends(gcs):
  url = gcs.url("metrics.jsonl")
  epath.Path(url).write_text(
    "".join(json.dumps({"step": s, "train/loss": s / 10}) + "\n" for s in range(1, 9)) + '{"step": 9, "train/lo'
  )  # a torn line cannot happen on gs, but it is dropped too
  with writers.JsonlWriter(url, resume_step=5) as writer:
    writer.write_scalars(6, {"train/loss": 0.66})
  assert [(r["step"], r["train/loss"]) for r in _lines(url)] == [(s, s / 10) for s in range(1, 6)] + [(6, 0.66)]


def test_remote_jsonl_without_resume_appends_to_existing_lines(gcs):
  url = gcs.url("metrics.jsonl")
  epath.Path(url).write_text('{"step": 7, "a": 1.0}')
  with writers.JsonlWriter(url) as writer:
    writer.write_scalars(3, {"b": 2.0})
  assert _lines(url) == [{"step": 7, "a": 1.0}, {"step": 3, "b": 2.0}]


def test_truncate_jsonl_on_gs(gcs):
  url = gcs.url("metrics.jsonl")
  epath.Path(url).write_text("".join(json.dumps({"step": s}) + "\n" for s in range(10)))
  writers._truncate_jsonl(url, 4)  # pylint: disable=protected-access
  assert [r["step"] for r in _lines(url)] == [0, 1, 2, 3, 4]


# --- TensorBoard without TensorFlow or appends. ---


def _scalars(local_dir):
  acc = event_accumulator.EventAccumulator(local_dir, size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_remote_event_writer_reads_back_with_tensorboard(gcs, tmp_path):
  url = gcs.url("tensorboard")
  writer = writers.RemoteEventWriter(url, chunk_bytes=200)  # a small chunk: several objects
  for step in range(1, 21):
    writer.write_scalars(step, {"train/loss": 1.0 / step, "eval/accuracy": step / 20})
  writer.write_texts(20, {"note": "done"})
  # No close(): what a SIGKILL leaves must already be complete.
  objects = sorted(p.name for p in epath.Path(url).iterdir())
  assert len(objects) > 2 and all(name.startswith("events.out.tfevents.") for name in objects), objects
  scalars = _scalars(gcs.download(url, str(tmp_path / "tb")))
  assert scalars["train/loss"] == [(s, pytest.approx(1.0 / s)) for s in range(1, 21)]
  assert [s for s, _ in scalars["eval/accuracy"]] == list(range(1, 21))


def test_create_writer_on_gs_writes_jsonl_and_events(gcs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  url = gcs.url("run")
  with writers.create_writer(url, is_main=True, resume_step=0) as writer:
    writer.write_scalars(1, {"train/loss": 0.5})
    writer.write_hparams({"lr": 0.1})
  assert _lines(url + "/metrics.jsonl") == [{"step": 1, "train/loss": 0.5}]
  assert _scalars(gcs.download(url + "/tensorboard", str(tmp_path / "tb")))["train/loss"] == [(1, 0.5)]
  assert sorted(os.listdir(tmp_path)) == ["tb"]  # no local ./gs: folder


# --- Reports, plots, checkpoints. ---


def test_report_and_plots_on_gs(gcs, tmp_path, monkeypatch):
  pytest.importorskip("matplotlib")
  from jaxcls.evaluation import plots  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(tmp_path)
  url = gcs.url("run")
  epath.Path(url + "/metrics.jsonl").write_text('{"step": 1, "train/loss": 1.0}\n{"step": 2, "train/loss": 0.5}\n')
  final = {
    "step": 2,
    "split": "test",
    "loss": 0.5,
    "accuracy": 0.75,
    "confusion_matrix": [[3, 1], [0, 4]],
    "f1": [0.8, 0.9],
    "precision": [1.0, 0.8],
    "recall": [0.75, 1.0],
    "support": [4, 4],
  }
  written = plots.write_all(url + "/plots", final, None, ["a", "b"], url + "/metrics.jsonl")
  assert {os.path.basename(p) for p in written} == {"confusion.png", "per_class_f1.png", "training_curves.png"}
  for p in written:
    assert epath.Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  report.write(url, final, ["a", "b"], written)
  assert json.loads(epath.Path(url + "/report.json").read_text())["accuracy"] == 0.75
  assert "](plots/confusion.png)" in epath.Path(url + "/report.md").read_text()
  with writers.MultiWriter([writers.RemoteEventWriter(url + "/tensorboard")]) as writer:
    writers.write_figures(writer, 2, written)
  assert os.listdir(tmp_path) == []


def test_checkpoint_on_gs_lists_and_restores(gcs):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from jaxcls.store import checkpoint  # pylint: disable=g-import-not-at-top

  url = gcs.url("run")
  with pytest.raises(Exception, match="holds no checkpoint"):
    restore.resolve_step(url, None)
  ckpt = checkpoint.Checkpointer(url, keep=2, async_save=False, fingerprint={"a": 1})
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.asarray(3)}
  for step in (3, 6, 9):
    ckpt.save(step, state, {"next_batch": step}, force=True)
  ckpt.close()
  assert restore.checkpoint_steps(url) == [6, 9]
  assert restore.resolve_step(url, None) == 9
  read = checkpoint.Checkpointer(url, keep=2, async_save=False, fingerprint={}).read_state(6)
  np.testing.assert_array_equal(read["w"], np.arange(6.0).reshape(2, 3))


# --- Data sources. ---


def _arrays_config(path, **extra):
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top

  return tiny_config(**{"dataset.name": "arrays", "dataset.path": path, "dataset.num_classes": 0, **extra})


def _images_and_labels(n=40):
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 4


def test_arrays_source_reads_an_npz_object_as_the_local_file(gcs, tmp_path):
  from jaxcls import data  # pylint: disable=g-import-not-at-top

  images, labels = _images_and_labels()
  np.savez(tmp_path / "d.npz", images=images, labels=labels)
  url = gcs.url("d.npz")
  epath.Path(url).write_bytes((tmp_path / "d.npz").read_bytes())
  local = data.build(_arrays_config(str(tmp_path / "d.npz")))
  remote = data.build(_arrays_config(url))
  assert remote.info.num_train == local.info.num_train > 0 and remote.info.class_names == local.info.class_names
  batch_l = next(iter(local.eval_batches(16)))
  batch_r = next(iter(remote.eval_batches(16)))
  np.testing.assert_array_equal(batch_r["image"], batch_l["image"])
  np.testing.assert_array_equal(batch_r["label"], batch_l["label"])


def test_arrays_source_reads_a_folder_of_npy_objects(gcs):
  from jaxcls import data  # pylint: disable=g-import-not-at-top

  images, labels = _images_and_labels()
  url = gcs.url("arrays")
  for split, rows in (("train", slice(0, 32)), ("test", slice(32, 40))):
    for name, values in (("images", images[rows]), ("labels", labels[rows])):
      buffer = io.BytesIO()
      np.save(buffer, values)
      epath.Path(f"{url}/{split}_{name}.npy").write_bytes(buffer.getvalue())
  dataset = data.build(_arrays_config(url, **{"dataset.train_split": "train", "dataset.eval_split": "test"}))
  assert (dataset.info.num_train, dataset.info.num_eval) == (32, 8)
  with pytest.raises(Exception, match="Split 'val' is missing.*test_images.npy"):
    data.build(_arrays_config(url, **{"dataset.train_split": "train", "dataset.eval_split": "val"}))


def test_idx_source_reads_gs_objects(gcs):
  import gzip  # pylint: disable=g-import-not-at-top

  from jaxcls import data  # pylint: disable=g-import-not-at-top
  from jaxcls.data.sources import idx  # pylint: disable=g-import-not-at-top

  images, labels = _images_and_labels()
  url = gcs.url("idx")

  def idx_bytes(array, code):
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()

  gray = images[..., 0]
  for split, rows in (("train", slice(0, 32)), ("t10k", slice(32, 40))):
    epath.Path(f"{url}/{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(gray[rows], 0x08)))
    epath.Path(f"{url}/{split}-labels-idx1-ubyte").write_bytes(idx_bytes(labels[rows], 0x08))
  np.testing.assert_array_equal(idx.read(f"{url}/train-images-idx3-ubyte.gz"), gray[:32])
  config = _arrays_config(
    url,
    **{
      "dataset.name": "idx",
      "dataset.channels": 1,
      "dataset.train_split": "train",
      "dataset.eval_split": "test",
      "dataset.class_names": ("0", "1", "2", "3"),
    },
  )
  dataset = data.build(config)
  assert (dataset.info.num_train, dataset.info.num_eval) == (32, 8)


def test_decode_reads_a_gs_image(gcs, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from jaxcls.data import decode  # pylint: disable=g-import-not-at-top

  pixels = _images_and_labels(1)[0][0]
  Image.fromarray(pixels).save(tmp_path / "x.png")
  url = gcs.url("x.png")
  epath.Path(url).write_bytes((tmp_path / "x.png").read_bytes())
  crop = decode.Crop((8, 8), "resize")
  np.testing.assert_array_equal(
    decode.decode(url, crop, 3, 10**6), decode.decode(str(tmp_path / "x.png"), crop, 3, 10**6)
  )
  with pytest.raises(decode.DecodeError, match="unreadable"):
    decode.decode(gcs.url("missing.png"), crop, 3, 10**6)


def _upload_folder(local_root, url):
  for dirpath, _, files in os.walk(local_root):
    for name in files:
      relative = os.path.relpath(os.path.join(dirpath, name), local_root)
      epath.Path(f"{url}/{relative}").write_bytes(open(os.path.join(dirpath, name), "rb").read())


@pytest.mark.parametrize("cache", ["memory", "none"])  # decoded up front, and streamed batch by batch
def test_folder_source_reads_gs_images_as_local_ones(gcs, tmp_path, cache):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from jaxcls import data  # pylint: disable=g-import-not-at-top
  from jaxcls.config import base as config_base

  rng = np.random.default_rng(1)
  root = tmp_path / "images"
  for name in ("cat", "dog"):
    os.makedirs(root / name)
    for i in range(6):
      Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
  url = gcs.url("images")
  _upload_folder(root, url)

  def build(path):
    config = config_base.get_base_config()
    config.dataset.update(
      name="folder", path=path, image_size=(8, 8), workers=2, cache=cache, cache_dir=str(tmp_path / "cache")
    )
    return data.build(config)

  local, remote = build(str(root)), build(url)
  assert remote.info.class_names == local.info.class_names == ("cat", "dog")
  assert (remote.info.num_train, remote.info.num_eval) == (local.info.num_train, local.info.num_eval)
  for a, b in zip(local.eval_batches(4), remote.eval_batches(4)):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not any(name.startswith("gs:") for name in os.listdir(tmp_path))


def test_tensorstore_reads_a_generation_and_writes_conditionally(gcs):
  """orbax's OCDBT manifest is read, then rewritten only if unchanged: the emulator must give real generations."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  url = gcs.url()
  bucket, _, prefix = url[len("gs://") :].partition("/")
  spec = {"driver": "gcs", "bucket": bucket, "path": prefix + "/"}
  ts.KvStore.open(spec).result().write("manifest", b"one").result()
  other = ts.KvStore.open(spec).result()  # another client: no cached generation
  read = other.read("manifest").result()
  assert read.value == b"one" and read.stamp.generation.strip(b"\x00")
  other.write("manifest", b"two", if_equal=read.stamp.generation).result()
  assert ts.KvStore.open(spec).result().read("manifest").result().value == b"two"
