"""Hostile input (issue 13, part 7): bad config values, hostile folders, odd file names, undefined metrics,
outputs in the way and disk faults. Each case must end in a one-line error or a listed skip: no traceback, no
hang, no silent wrong result, nothing written outside the workdir, the data folder and the user's cache folder.

Library-level cases are fast; the ones that run jaxcls commands in subprocesses ask for the `python` fixture,
which marks them slow (conftest). Disk faults without root tricks (tests run as root, so chmod stops nothing and
there is no mount): a workdir that is a file (EEXIST), a path under a file (ENOTDIR), /sys, which refuses writes
even to root (EPERM to create, EACCES to write), and RLIMIT_FSIZE set in the child (writes past the size fail with
EFBIG, SIGXFSZ ignored), which stands in for a full disk (ENOSPC goes through the same errno table). EROFS and
ENOSPC themselves cannot be produced here; `errors.disk_fault` is checked on real OSErrors of those errnos.
"""

import errno
import io
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from conftest import REPO, folder_config, subprocess_env, tiny_config
from PIL import Image

from jaxcls import models, tasks
from jaxcls.config import check as config_check
from jaxcls.config.base import get_base_config
from jaxcls.core import errors
from jaxcls.core.errors import ConfigError, DataError, WorkdirError
from jaxcls.data.sources import folder_scan
from jaxcls.evaluation import report
from jaxcls.inference import exporter as export
from jaxcls.inference import predictor as predict
from jaxcls.store import workdir as workdir_lib
from jaxcls.training import loop as train

NON_UTF8 = b"caf\xe9-\xff.png"  # Latin-1 bytes: not valid UTF-8


# --- config ranges and types --------------------------------------------------------------------------------------

BAD_VALUES = [  # (key, value, words the one-line error must hold)
  ("ema_decay", 1.5, "in [0, 1)"),
  ("ema_decay", 1.0, "freeze"),
  ("ema_decay", -0.1, "in [0, 1)"),
  ("ema_decay", float("nan"), "in [0, 1)"),
  ("log_every_steps", -1, "once per epoch"),
  ("eval_every_steps", -5, "once per epoch"),
  ("checkpoint_every_steps", -2, "only at the end"),
  ("keep_checkpoints", 0, ">= 1"),
  ("keep_checkpoints", -1, ">= 1"),
  ("batch_size", 0, ">= 1"),
  ("batch_size", -8, ">= 1"),
  ("eval_batch_size", 0, ">= 1"),
  ("num_epochs", -1.0, ">= 0"),
  ("num_train_steps", -5, ">= -1"),
  ("optimizer.learning_rate", -0.1, ">= 0"),
  ("optimizer.learning_rate", float("inf"), "finite"),
  ("optimizer.momentum", 1.0, "in [0, 1)"),
  ("optimizer.b2", 1.0, "in [0, 1)"),
  ("optimizer.eps", 0.0, "> 0"),
  ("optimizer.weight_decay", -1e-4, ">= 0"),
  ("optimizer.warmup_steps", -1, ">= 0"),
  ("optimizer.grad_clip_norm", -1.0, ">= 0"),
  ("optimizer.backbone_lr_factor", -0.5, ">= 0"),
  ("optimizer.step_boundaries", (0.5, 1.5), "strictly between 0 and 1"),
  ("optimizer.step_factor", 0.0, "> 0"),
  ("optimizer.muon_ns_steps", 0, ">= 1"),
  ("optimizer.muon_momentum", 1.0, "in [0, 1)"),
  ("task.label_smoothing", 1.0, "in [0, 1)"),
  ("task.asl_clip", 1.0, "in [0, 1)"),
  ("task.focal_gamma", -1.0, ">= 0"),
  ("dataset.test_fraction", 1.0, "strictly between 0 and 1"),
  ("dataset.test_fraction", 0.0, "strictly"),
  ("dataset.val_fraction", 1.0, "in [0, 1)"),
  ("dataset.val_fraction", -0.1, "in [0, 1)"),
  ("dataset.workers", -1, ">= 0"),
  ("dataset.shuffle_buffer", 0, ">= 1"),
  ("dataset.class_depth", 3, "1 or 2"),
  ("dataset.max_image_pixels", 0, ">= 1"),
  ("dataset.center_crop_fraction", 0.0, "in (0, 1]"),
  ("dataset.num_classes", 0, ">= 1"),
  ("dataset.channels", -1, ">= 0"),
  ("prefetch_to_device", -2, ">= -1"),
  ("fewshot.shots", (0, 5), ">= 1"),
  ("fewshot.knn_k", (1, -1), ">= 1"),
  ("fewshot.seeds", 0, ">= 1"),
  ("fewshot.l2_reg", 0.0, "> 0"),
  ("init_from_step", -2, ">= 0, -1 or 'latest', or 'best'"),
  ("init_from_step", "bestest", "or 'best'"),
  ("init_from_step", True, "or 'best'"),
]


@pytest.mark.parametrize("key,value,words", BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_out_of_range_values_get_one_line_naming_key_and_value(key, value, words):
  with pytest.raises(ConfigError) as e:
    config_check.validate(tiny_config(**{key: value}))
  message = str(e.value)
  assert f"config.{key}=" in message and words in message and "\n" not in message


def test_edge_values_with_a_documented_meaning_are_accepted():
  config_check.validate(
    tiny_config(
      **{
        "ema_decay": 0.0,
        "log_every_steps": 0,
        "eval_every_steps": 0,
        "checkpoint_every_steps": 0,
        "keep_checkpoints": 1,
        "num_train_steps": -1,
        "num_epochs": 1.0,
        "dataset.val_fraction": 0.0,
        "optimizer.learning_rate": 0.0,
        "task.label_smoothing": 0.0,
        "optimizer.backbone_lr_factor": 0.0,
      }
    )
  )
  config_check.validate(tiny_config(ema_decay=0.9999))
  for step in (-1, 0, 20, "latest", "best", "20"):  # what restore.parse_step reads
    config_check.validate(tiny_config(init_from_step=step))
  config_check.validate(get_base_config())


def test_cross_key_checks():
  with pytest.raises(ConfigError, match="train for no step"):
    config_check.validate(tiny_config(num_train_steps=-1, num_epochs=0.0))
  with pytest.raises(ConfigError, match="sum must be below 1"):
    config_check.validate(tiny_config(**{"dataset.test_fraction": 0.6, "dataset.val_fraction": 0.4}))


@pytest.mark.parametrize(
  "key,value,words",
  [
    ("batch_size", 12.5, "an integer"),
    ("ema_decay", "0.9", "a finite number"),
    ("async_checkpointing", 1, "True or"),
    ("log_every_steps", True, "an integer"),
    ("fewshot.shots", 5, "a tuple of integers"),
  ],
)
def test_wrong_types_are_named(key, value, words):
  """A config file can hold any Python value (ml_collections checks types only on overrides): a plain dict."""
  config = tiny_config().to_dict()
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ConfigError, match=words) as e:
    config_check.check_ranges(config)
  assert f"config.{key}={value!r}" in str(e.value)


MODEL_ARGS = [  # (model, argument, value, expected type in words)
  ("simple_cnn", "widths", "abc", "a tuple of integers"),
  ("simple_cnn", "widths", ("abc",), "a tuple of integers"),
  ("simple_cnn", "widths", (8, 16.5), "a tuple of integers"),
  ("simple_cnn", "dropout", "high", "a number"),
  ("simple_cnn", "norm", 3, "a string"),
  ("resnet18", "zero_init_residual", 1, "True or False"),
  ("vgg11", "hidden", "4096", "an integer"),
  ("vit_b16", "patch_size", 16.0, "an integer"),
]


@pytest.mark.parametrize("model,key,value,words", MODEL_ARGS, ids=[f"{m}.{k}={v!r}" for m, k, v, _ in MODEL_ARGS])
def test_model_arguments_are_typed_by_the_signature(model, key, value, words):
  with pytest.raises(ConfigError) as e:
    models.build({"name": model, key: value}, 3)
  message = str(e.value)
  assert f"config.model.{key}={value!r}" in message and repr(model) in message and words in message


def test_model_arguments_of_the_right_type_still_build():
  models.build({"name": "simple_cnn", "widths": [8, 16], "dropout": 0}, 3)  # a JSON list, an int for a float
  models.build({"name": "resnet18", "zero_init_residual": True}, 3)


# --- hostile folders ----------------------------------------------------------------------------------------------


def png(path, value=80):
  Image.new("RGB", (6, 6), (value,) * 3).save(path, format="PNG")


@pytest.fixture
def split_tree(tmp_path):
  """train/{cat,dog} and test/{cat,dog} with two images each."""
  root = tmp_path / "data"
  for split in ("train", "test"):
    for k, name in enumerate(("cat", "dog")):
      os.makedirs(root / split / name)
      for i in range(2):
        png(root / split / name / f"{split}{i}.png", 60 + 100 * k)
  return root


def reasons(listing):
  return {os.path.relpath(p, listing_root(listing)): why for p, why in listing.skipped}


def listing_root(listing):
  return os.path.commonpath([p for p, _ in listing.skipped] + [p for ps, _ in listing.splits.values() for p in ps])


def test_symlink_loop_is_listed_once_and_skipped_with_a_reason(split_tree):
  os.symlink("../..", split_tree / "train" / "cat" / "up")  # train/cat/up -> the dataset root
  os.symlink(".", split_tree / "train" / "dog" / "self")
  listing = folder_scan.scan(folder_config(split_tree).dataset)
  train_paths, _ = listing.splits["train"]
  assert len(train_paths) == 4 and not any("test" in os.path.basename(p) for p in train_paths)  # no leak
  skipped = dict(listing.skipped)
  assert "symbolic link loop" in skipped[str(split_tree / "train" / "cat" / "up")]
  assert "symbolic link loop" in skipped[str(split_tree / "train" / "dog" / "self")]


def test_a_link_into_another_split_cannot_leak_its_images(split_tree):
  os.symlink(split_tree / "test" / "cat", split_tree / "train" / "cat" / "more")
  listing = folder_scan.scan(folder_config(split_tree).dataset)
  train_paths, test_paths = listing.splits["train"][0], listing.splits["test"][0]
  real = lambda ps: {os.path.realpath(p) for p in ps}
  assert not real(train_paths) & real(test_paths) and len(test_paths) == 4 and len(train_paths) == 4
  assert "the same folder as" in dict(listing.skipped)[str(split_tree / "train" / "cat" / "more")]


def test_a_top_level_link_back_to_the_root_is_not_a_class(tmp_path):
  root = tmp_path / "data"
  for name in ("a", "b"):
    os.makedirs(root / name)
    for i in range(5):
      png(root / name / f"{i}.png")
  os.symlink(".", root / "loop")
  listing = folder_scan.scan(folder_config(root).dataset)
  assert listing.class_names == ("a", "b")
  assert sum(len(p) for p, _ in listing.splits.values()) == 10


def test_fifo_socket_device_and_broken_link_are_skipped_never_opened(tmp_path):
  root = tmp_path / "data"
  for name in ("a", "b"):
    os.makedirs(root / name)
    for i in range(5):
      png(root / name / f"{i}.png")
  os.mkfifo(root / "a" / "pipe.png")  # opening it for reading would block forever
  sock = socket.socket(socket.AF_UNIX)
  sock.bind(str(root / "a" / "sock.jpg"))
  os.symlink("/dev/zero", root / "b" / "zero.png")  # an endless character device
  os.symlink(root / "nowhere.png", root / "b" / "broken.png")
  result = {}
  thread = threading.Thread(target=lambda: result.update(dataset=train.data.build(folder_config(root))), daemon=True)
  thread.start()
  thread.join(120)
  sock.close()
  assert not thread.is_alive(), "the folder source hung on a FIFO or device"
  dataset = result["dataset"]
  skipped = {os.path.basename(p): why for p, why in dataset.skipped_files}
  assert "a FIFO (named pipe)" in skipped["pipe.png"] and "a socket" in skipped["sock.jpg"]
  assert "a character device" in skipped["zero.png"] and "broken symbolic link" in skipped["broken.png"]
  assert dataset.info.num_train + dataset.info.num_eval == 10


def test_hard_links_are_listed_once(tmp_path):
  root = tmp_path / "data"
  for name in ("a", "b"):
    os.makedirs(root / name)
    for i in range(3):
      png(root / name / f"{i}.png")
  os.link(root / "a" / "0.png", root / "b" / "same_as_a0.png")  # one image, two labels
  files, _ = folder_scan.image_files(str(root))
  assert len(files) == 6


def test_non_utf8_names_are_listed_and_written_as_valid_utf8(tmp_path):
  root = tmp_path / "data"
  os.makedirs(root / "a")
  os.makedirs(os.fsencode(root) + b"/cl\xe9s")  # a class folder name that is not UTF-8 either
  for i in range(5):
    png(root / "a" / f"{i}.png")
    png(os.fsencode(root / "a") + b"/" + str(i).encode() + NON_UTF8)
    png(os.fsencode(root) + b"/cl\xe9s/" + str(i).encode() + b".png")
  listing = folder_scan.scan(folder_config(root).dataset)
  assert listing.class_names == ("a", "cl\\xe9s")
  everything = [p for ps, _ in listing.splits.values() for p in ps]
  assert len(everything) == 15 and all(os.path.isfile(p) for p in everything)  # the surrogate names still open
  for cache in (
    "file",
    "file",
    "memory",
    "none",
  ):  # the file cache's fingerprint hashes the names: written, then reused
    dataset = train.data.build(folder_config(root, cache=cache, cache_dir=str(tmp_path / "cache")))
    assert dataset.info.num_train + dataset.info.num_eval == 15 and dataset.info.class_names == listing.class_names
  assert folder_scan.display(os.fsdecode(NON_UTF8)) == "caf\\xe9-\\xff.png"
  assert folder_scan.display("naïve ✓.png") == "naïve ✓.png"  # valid UTF-8 is kept as it is

  class Dataset:
    skipped_files = [(os.fsdecode(os.fsencode(root / "a") + NON_UTF8), "cannot be decoded")]

  workdir_lib.write_skipped_files(str(tmp_path), Dataset(), True)
  text = (tmp_path / "skipped_files.txt").read_bytes().decode("utf-8")  # strict: valid UTF-8
  assert "caf\\xe9-\\xff.png\tcannot be decoded" in text


def test_predict_output_and_lines_with_non_utf8_names(tmp_path):
  name = os.fsdecode(b"/data/" + NON_UTF8)
  records = [
    {"path": name, "error": None, "prediction": "cat", "probability": 0.9, "top_k": [["cat", 0.9]]},
    {"path": name + "2", "error": f"cannot decode {name}2"},
  ]
  for suffix in (".csv", ".json"):
    predict.write_output(str(tmp_path / f"p{suffix}"), records, {"step": 1})
    text = (tmp_path / f"p{suffix}").read_bytes().decode("utf-8")
    assert "caf\\xe9-\\xff.png" in text.replace("\\\\", "\\")
  assert json.loads((tmp_path / "p.json").read_text())["predictions"][0]["path"] == "/data/caf\\xe9-\\xff.png"
  strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
  for record in records:
    print(predict.format_line(record), file=strict)  # a strict UTF-8 stdout takes the lines
  strict.flush()


# --- one class, one example, undefined metrics --------------------------------------------------------------------


def test_one_class_is_refused_and_rare_classes_are_warned_about(caplog):
  with pytest.raises(DataError, match="needs at least 2") as e:
    tasks.check_classes("multiclass", ("cat",), (40,))
  assert "\n" not in str(e.value)
  tasks.check_classes("multilabel", ("defect",), (3,))  # a one-label detector is a real model
  with caplog.at_level("WARNING"):
    tasks.check_classes("multiclass", ("cat", "dog", "fox"), (10, 1, 0))
  text = caplog.text
  assert "single training example" in text and "'dog'" in text and "no training example" in text and "'fox'" in text


def strict_json(text):
  def refuse(name):
    raise ValueError(f"{name} in report.json")

  return json.loads(text, parse_constant=refuse)


def test_one_class_eval_split_reports_undefined_not_nan(tmp_path, caplog):
  task = tasks.build({"type": "multiclass"}, 3)
  probs = np.full((4, 3), 1 / 3)
  confusion = np.zeros((3, 3), np.int64)
  confusion[1, 1] = 4
  sums = {"count": 4, "loss_sum": 4.0, "correct": 4, "correct_top_k": 4, "confusion": confusion}
  with caplog.at_level("WARNING"):
    result = task.finalize(sums, {"probs": probs, "labels": np.ones(4, np.int64)})
  assert result["macro_roc_auc"] is None and result["roc_auc"] == [None, None, None]
  assert result["micro_roc_auc"] == 0.5  # over all (example, class) pairs there are both outcomes
  assert "all of one class" in result["undefined"]["macro_roc_auc"] and "macro_roc_auc" in caplog.text
  assert not any(isinstance(v, float) and math.isnan(v) for v in result.values())
  final = {"step": 3, "split": "test", **result}
  report.write(str(tmp_path), final, ("a", "b", "c"))
  strict_json((tmp_path / "report.json").read_text())
  assert "| macro_roc_auc | undefined (" in (tmp_path / "report.md").read_text()


def test_binary_without_positives_reports_undefined():
  task = tasks.build({"type": "binary", "threshold": 0.5}, 2)
  confusion = np.array([[5, 0], [0, 0]])
  outputs = {"logits": np.linspace(-2, 2, 5), "probs": np.linspace(0.1, 0.9, 5), "labels": np.zeros(5, np.int64)}
  result = task.finalize({"count": 5, "loss_sum": 1.0, "confusion": confusion}, outputs)
  assert result["roc_auc"] is None and result["average_precision"] is None and result["best_f1_threshold"] is None
  assert result["undefined"]["best_f1_threshold"] == "the eval split has no positive example"
  strict_json(json.dumps(result))


# --- outputs in the way, reads and writes outside the workdir -----------------------------------------------------


def test_export_onto_an_existing_file_or_export_is_one_line(tmp_path):
  (tmp_path / "model.bin").write_text("not a folder")
  with pytest.raises(ConfigError, match="is an existing file"):
    export.check_output(str(tmp_path / "model.bin"), overwrite=True)  # a file is never replaced
  (tmp_path / "out").mkdir()
  export.check_output(str(tmp_path / "out"))  # an empty folder is fine
  (tmp_path / "out" / "model.json").write_text("{}")
  with pytest.raises(ConfigError, match="--overwrite"):
    export.check_output(str(tmp_path / "out"))
  export.check_output(str(tmp_path / "out"), overwrite=True)


def test_evaluate_keeps_the_cache_in_the_workdir_or_the_user_cache(tmp_path):
  from jaxcls.evaluation import workdir_eval as evaluate

  workdir = tmp_path / "run"
  workdir.mkdir()
  os.symlink("/etc", workdir / "escape")
  user_cache = os.path.join(os.path.expanduser("~"), ".cache", "jaxcls", "folder-x")
  for given, kept in [
    ("/etc/jaxcls", str(workdir / "cache")),
    (str(tmp_path / "elsewhere"), str(workdir / "cache")),
    (str(workdir / "escape" / "c"), str(workdir / "cache")),
    (str(workdir / "cache"), None),
    (user_cache, None),
    ("", None),
  ]:
    config = get_base_config()
    config.dataset.cache_dir = given
    evaluate.confine_cache_dir(config, str(workdir))
    assert config.dataset.cache_dir == (given if kept is None else kept), given


# --- disk faults ---------------------------------------------------------------------------------------------------


def _real_os_error(action):
  try:
    action()
  except OSError as e:
    return e
  raise AssertionError("the action did not fail")


def _write_past_the_size_limit(path):
  """In a child with RLIMIT_FSIZE 1000: the write fails with EFBIG; returns the child's errno."""
  code = textwrap.dedent(f"""
      import os, resource, signal
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
      fd = os.open({str(path)!r}, os.O_WRONLY | os.O_CREAT)
      os.write(fd, b'x' * 1000)  # up to the limit
      try:
        os.write(fd, b'x')
      except OSError as e:
        print(e.errno)
  """)
  return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout)


def test_disk_faults_map_to_one_line(tmp_path):
  (tmp_path / "file").write_text("x")
  os.makedirs(tmp_path / "run" / "checkpoints" / "8")
  cases = [  # (real error, errno name)
    (_real_os_error(lambda: os.makedirs(tmp_path / "file")), "EEXIST"),
    (_real_os_error(lambda: os.makedirs(tmp_path / "file" / "run")), "ENOTDIR"),
    (_real_os_error(lambda: os.mkdir("/sys/jaxcls-test")), "EPERM"),
    (_real_os_error(lambda: open("/sys/kernel/jaxcls-test", "w")), "EACCES"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/run/config.json"), "EROFS"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/full/run/metrics.jsonl"), "ENOSPC"),
  ]
  assert _write_past_the_size_limit(tmp_path / "big") == errno.EFBIG
  cases.append((OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(tmp_path / "big")), "EFBIG"))
  wrapped = ValueError(
    'OUT_OF_RANGE: Error writing "x" in OCDBT database at local file "/w/checkpoints/9.orbax-'
    "checkpoint-tmp/\": Failed to write 2141 bytes to file 16: File too large [os_error_code='27']"
  )
  cases.append((wrapped, "EFBIG"))
  try:
    try:
      raise cases[-2][0]
    except OSError as inner:
      raise RuntimeError("save failed") from inner
  except RuntimeError as outer:
    cases.append((outer, "EFBIG"))  # found in the cause
  for error, name in cases:
    fault = errors.disk_fault(error, str(tmp_path / "run"))
    assert isinstance(fault, WorkdirError), (error, name)
    assert f"({name}:" in str(fault) and "\n" not in str(fault)
  assert errors.disk_fault(ValueError("a bug")) is None and errors.disk_fault(KeyError("x")) is None
  assert "checkpoint" not in str(errors.disk_fault(cases[0][0]))  # no workdir: nothing said about checkpoints
  # The fix names what to change: the workdir for a file in it, the output's own path (predict --output,
  # evaluate --output_dir) for one outside it.
  inside = OSError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "run" / "report.json"))
  outside = OSError(errno.EACCES, os.strerror(errno.EACCES), "/elsewhere/predictions.csv")
  message = str(errors.disk_fault(inside, str(tmp_path / "run")))
  assert "give a --workdir that is a writable folder" in message and "the last checkpoint (step 8)" in message
  linked = tmp_path / "linked"
  linked.symlink_to(tmp_path / "run")  # the workdir given through a symlink, the file named by its real path
  assert "give a --workdir that is a writable folder" in str(errors.disk_fault(inside, str(linked)))
  above = _real_os_error(lambda: os.makedirs("/sys/jaxcls-test/run"))  # names /sys/jaxcls-test, the workdir's parent
  assert "give a --workdir that is a writable folder" in str(errors.disk_fault(above, "/sys/jaxcls-test/run"))
  for workdir in (str(tmp_path / "run"), None):
    message = str(errors.disk_fault(outside, workdir))
    assert "give that output a path in a writable folder" in message and "--workdir" not in message, message
    assert "checkpoint" not in message  # the run's checkpoints are beside the point of a failed --output


# --- subprocess cases (slow) ---------------------------------------------------------------------------------------


def _config_file(tmp_path, name="tiny_config.py", **overrides) -> str:
  path = tmp_path / name
  path.write_text(
    textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {os.path.join(REPO, "tests")!r})
      from conftest import tiny_config

      def get_config():
        return tiny_config(**{overrides!r})
  """)
  )
  return str(path)


def _run(args, *, fsize=None, timeout=600):
  """A jaxcls command in a subprocess (optionally under RLIMIT_FSIZE, SIGXFSZ ignored): (rc, stderr + stdout)."""
  start = ["-m"]
  if fsize:  # set in the child itself (no preexec_fn: forking a process that runs JAX threads is unsafe)
    start = [
      "-c",
      "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
      f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize})); sys.argv = sys.argv[1:]; "
      "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)",
    ]
  proc = subprocess.run(
    [sys.executable, *start, *args], env=subprocess_env(2), cwd=REPO, capture_output=True, timeout=timeout
  )
  return proc.returncode, proc.stderr.decode("utf-8", "replace") + proc.stdout.decode("utf-8", "replace")


def _error_lines(output):
  return [line for line in output.splitlines() if line.startswith("jaxcls: error:")]


def _one_line_error(rc, output, words):
  assert rc not in (0, None) and "Traceback" not in output, output[-3000:]
  lines = _error_lines(output)
  assert len(lines) == 1 and words in lines[0], output[-3000:]
  return lines[0]


@pytest.mark.parametrize(
  "override,words",
  [
    ("--config.ema_decay=1.5", "config.ema_decay=1.5"),
    ("--config.keep_checkpoints=0", "keep_checkpoints=0"),
    ("--config.model.widths=abc", "config.model.widths="),
    ("--config.model.widths=(8,x)", "config.model.widths"),
    ("--config.batch_size=0", "config.batch_size=0"),
  ],
)
def test_bad_values_on_the_command_line_are_one_line(python, tmp_path, override, words):
  del python
  config = _config_file(tmp_path)
  rc, output = _run(["jaxcls.main", "--config", config, "--workdir", str(tmp_path / "run"), override], timeout=300)
  _one_line_error(rc, output, words)
  assert not (tmp_path / "run" / "checkpoints").exists() or not os.listdir(tmp_path / "run" / "checkpoints")


def test_log_every_steps_zero_logs_once_per_epoch(python, tmp_path):
  del python
  config = _config_file(
    tmp_path,
    log_every_steps=0,
    num_train_steps=16,
    eval_every_steps=0,
    checkpoint_every_steps=0,
    **{"dataset.num_train_examples": 64},
  )  # 4 steps per epoch
  rc, output = _run(["jaxcls.main", "--config", config, "--workdir", str(tmp_path / "run")])
  assert rc == 0, output[-3000:]
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert sorted({r["step"] for r in rows if "train/loss" in r}) == [4, 8, 12, 16]


def _images(root, classes, per_class=6):
  for k, name in enumerate(classes):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      png(os.path.join(root, name, f"{i}.png"), 40 + 60 * k)


def test_one_class_folder_is_refused_in_one_line(python, tmp_path):
  del python
  _images(str(tmp_path / "data"), ["only"])
  config = _config_file(tmp_path, **{"dataset.name": "folder", "dataset.path": str(tmp_path / "data")})
  rc, output = _run(["jaxcls.main", "--config", config, "--workdir", str(tmp_path / "run")], timeout=300)
  _one_line_error(rc, output, "needs at least 2")


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
  """A run on a folder with a FIFO, a symlink loop, a link into the eval split and non-UTF-8 names."""
  tmp = tmp_path_factory.mktemp("hostile")
  root = tmp / "data"
  _images(str(root / "train"), ["cat", "dog"])
  _images(str(root / "test"), ["cat", "dog"], per_class=3)
  os.mkfifo(root / "train" / "cat" / "pipe.png")
  os.symlink("../..", root / "train" / "dog" / "loop")
  os.symlink(root / "test" / "cat", root / "train" / "cat" / "leak")
  for i in range(3):
    png(os.fsencode(root / "train" / "dog") + b"/" + str(i).encode() + NON_UTF8)
  (root / "train" / "cat" / "bad.png").write_bytes(b"not a png")  # a decode failure goes to the listing too
  os.symlink(root / "nowhere.png", os.fsencode(root / "train" / "cat") + b"/gone-\xff.png")
  config = _config_file(
    tmp,
    **{
      "dataset.name": "folder",
      "dataset.path": str(root),
      "dataset.cache": "file",
      "batch_size": 8,
      "eval_batch_size": 8,
      "num_train_steps": 4,
      "eval_every_steps": 4,
      "checkpoint_every_steps": 4,
    },
  )
  rc, output = _run(["jaxcls.main", "--config", config, "--workdir", str(tmp / "run")], timeout=300)
  return tmp, root, rc, output


def test_hostile_folder_trains_and_lists_every_skip(python, hostile_run):
  del python
  tmp, root, rc, output = hostile_run
  assert rc == 0 and "Traceback" not in output, output[-3000:]
  listing = (tmp / "run" / "skipped_files.txt").read_bytes().decode("utf-8")  # valid UTF-8
  assert "pipe.png\ta FIFO (named pipe)" in listing and "loop\ta symbolic link loop" in listing
  assert "leak\tthe same folder as" in listing and "bad.png\t" in listing
  assert "gone-\\xff.png\ta broken symbolic link" in listing
  meta = json.loads((tmp / "run" / "report.json").read_text())
  assert meta["num_examples"] == 6  # the 6 test images once each, none of them also in train


def test_predict_writes_non_utf8_names_safely(python, hostile_run):
  del python
  tmp, root, _, _ = hostile_run
  folder = str(root / "train" / "dog")
  for suffix in (".csv", ".json"):
    out = tmp / f"predictions{suffix}"
    rc, output = _run(["jaxcls.predict", "--workdir", str(tmp / "run"), "--output", str(out), folder], timeout=300)
    assert rc == 0 and "Traceback" not in output, output[-3000:]
    text = out.read_bytes().decode("utf-8")
    assert "caf\\xe9-\\xff.png" in text.replace("\\\\", "\\") and "caf\\xe9-\\xff.png" in output


def test_export_onto_an_export_needs_overwrite(python, hostile_run):
  del python
  tmp, _, _, _ = hostile_run
  out = tmp / "exported"
  base = ["jaxcls.export", "--workdir", str(tmp / "run"), "--output", str(out), "--platforms", "cpu"]
  rc, output = _run(base, timeout=300)
  assert rc == 0, output[-3000:]
  _one_line_error(*_run(base, timeout=300), "--overwrite")
  rc, output = _run(base + ["--overwrite"], timeout=300)
  assert rc == 0, output[-3000:]
  (tmp / "a_file").write_text("x")
  _one_line_error(
    *_run(["jaxcls.export", "--workdir", str(tmp / "run"), "--output", str(tmp / "a_file")], timeout=300),
    "is an existing file",
  )


def test_crafted_cache_dir_in_config_json_stays_inside(python, hostile_run, tmp_path):
  del python
  tmp, _, _, _ = hostile_run
  outside = tmp_path / "outside"
  config_path = tmp / "run" / "config.json"
  original = config_path.read_text()
  crafted = json.loads(original)
  crafted["dataset"]["cache_dir"] = str(outside)
  config_path.write_text(json.dumps(crafted))
  try:
    rc, output = _run(["jaxcls.evaluate", "--workdir", str(tmp / "run")], timeout=300)
  finally:
    config_path.write_text(original)
  assert rc == 0 and "Traceback" not in output, output[-3000:]
  assert not outside.exists() and "outside the workdir" in output


@pytest.mark.parametrize(
  "limit,what", [(10_000, "the first checkpoint"), (20_000, "the plots, after the last checkpoint")]
)
def test_full_disk_is_one_line_and_the_run_resumes(python, tmp_path, limit, what):
  """RLIMIT_FSIZE makes the first file larger than `limit` fail with EFBIG, as a full disk would (the tiny run's
  checkpoint data file is about 12 kB, its plots above 20 kB). Then the same command without the limit resumes
  from what was intact and finishes."""
  del python, what
  config = _config_file(tmp_path)
  args = ["jaxcls.main", "--config", config, "--workdir", str(tmp_path / "run")]
  rc, output = _run(args, fsize=limit)
  line = _one_line_error(rc, output, "Cannot write")
  assert "(EFBIG:" in line and "left as they were" in line
  rc, output = _run(args)
  assert rc == 0 and "Traceback" not in output, output[-3000:]
  assert json.loads((tmp_path / "run" / "report.json").read_text())["step"] == 12


@pytest.mark.parametrize(
  "workdir,words",
  [
    ("FILE", "is a file"),
    ("FILE/run", "Not a directory"),
    ("/sys/jaxcls-run", "Operation not permitted"),
    ("/sys/kernel", "Permission denied"),
  ],
)
def test_unwritable_workdirs_are_one_line(python, tmp_path, workdir, words):
  del python
  (tmp_path / "file").write_text("x")
  workdir = workdir.replace("FILE", str(tmp_path / "file"))
  config = _config_file(tmp_path)
  _one_line_error(*_run(["jaxcls.main", "--config", config, "--workdir", workdir], timeout=300), words)
  assert (tmp_path / "file").read_text() == "x"


def test_predict_inputs_that_are_not_regular_files_get_their_reason(tmp_path):
  """A FIFO named on predict's command line is never opened (it would hang); a folder or a gap is named as such."""
  from jaxcls.data import (
    decode,  # pylint: disable=g-import-not-at-top
    preprocess,  # pylint: disable=g-import-not-at-top
  )

  fifo = tmp_path / "pipe.png"
  os.mkfifo(fifo)
  (tmp_path / "folder.png").mkdir()
  settings = preprocess.Preprocessing(crop=decode.Crop((8, 8), "resize"), channels=3, max_pixels=10**6)
  images, reasons = preprocess.load([str(fifo), str(tmp_path / "folder.png"), str(tmp_path / "none.png")], settings)
  assert len(images) == 0
  assert reasons == [
    "not a regular file (a FIFO, socket or device is never opened)",
    "a folder, not an image file",
    "no such file",
  ]
