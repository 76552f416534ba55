"""Metric writers for the training loop: one small interface, and the writers `config.writers` names.

`create_writer` builds the writers `config.writers` names, from `WRITERS`, behind one `MultiWriter` with clu's
`MetricWriter` methods: 'tensorboard' (event files in `workdir/tensorboard/`, written with the tensorboard package's
protos only), 'jsonl' (`workdir/metrics.jsonl`), 'log' (short console lines), 'mlflow' and 'wandb' (the
experiment trackers, `training/trackers.py`) and 'clu' (clu's TensorFlow summary writer). The trackers, clu and
TensorFlow are imported only when named, so a default run starts without them (docs/writers.md).
"""

import inspect
import io
import itertools
import json
import math
import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from jaxcls.core import paths, registry
from jaxcls.core.errors import ConfigError
from jaxcls.core.registry import Registry
from jaxcls.store.workdir import METRICS_NAME as JSONL_NAME  # one owner
from jaxcls.store.workdir import TENSORBOARD_NAME as TENSORBOARD_DIR
from jaxcls.training import hparams as hparams_lib
from jaxcls.training import progress as progress_lib


class Writer:
  """clu's `MetricWriter` interface, every method a no-op: the base of jaxcls's writers and the non-main writer.

  Not clu's own class, because importing `clu.metric_writers` imports TensorFlow.
  """

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    """Scalars of one step ({'train/loss': 0.31, ...}); a no-op here."""
    pass

  def write_texts(self, step: int, texts: Mapping[str, str]):
    """Texts of one step ({name: text}); a no-op here."""
    pass

  def write_images(self, step: int, images: Mapping[str, Any]):
    """Images of one step ({name: [N, H, W, C] array}); a no-op here."""
    pass

  def write_histograms(self, step: int, arrays: Mapping[str, Any], num_buckets: Mapping[str, int] | None = None):
    """Histograms of arrays at one step (part of clu's interface); a no-op here."""
    pass

  def write_hparams(self, hparams: Mapping[str, Any]):
    """The run's hyper-parameters; a no-op here."""
    pass

  def flush(self):
    """Pushes buffered writes to their files; a no-op here."""
    pass

  def close(self):
    """Flushes and releases the writer's files or runs; a no-op here."""
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def to_float(value: Any) -> float:
  """A Python float from a Python, numpy or jax scalar (or a one-element array)."""
  return float(np.asarray(value).item())


def flatten_hparams(config: Any, prefix: str = "") -> dict[str, Any]:
  """A flat {'a.b': value} dict whose values TensorBoard's hparams accept (bool, int, float, str)."""
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
    config = config.to_dict()
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if hasattr(value, "to_dict") or isinstance(value, Mapping):
      flat.update(flatten_hparams(value, name + "."))
    elif isinstance(value, (bool, int, float, str)):
      flat[name] = value
    elif isinstance(value, (np.number, np.bool_)):
      flat[name] = value.item()
    else:  # tuples, lists, None: a string keeps them readable and comparable between runs
      flat[name] = str(value)
  return flat


class MultiWriter(Writer):
  """Converts scalars to floats once and hands every call to each of its writers."""

  def __init__(self, writers: Iterable[Any]):
    self.writers = list(writers)

  def write_scalars(self, step, scalars):
    """Converts the values to floats once, then hands them to every writer."""
    step = int(step)
    scalars = {key: to_float(value) for key, value in scalars.items()}
    for writer in self.writers:
      writer.write_scalars(step, scalars)

  def write_texts(self, step, texts):
    """Hands the texts to every writer."""
    for writer in self.writers:
      writer.write_texts(int(step), texts)

  def write_images(self, step, images):
    """Hands the images to every writer."""
    for writer in self.writers:
      writer.write_images(int(step), images)

  def write_histograms(self, step, arrays, num_buckets=None):
    """Hands the histograms to every writer."""
    for writer in self.writers:
      writer.write_histograms(int(step), arrays, num_buckets)

  def write_hparams(self, hparams):
    """Flattens the config once ('optimizer.learning_rate': 0.1), then hands it to every writer."""
    hparams = flatten_hparams(hparams)
    for writer in self.writers:
      writer.write_hparams(hparams)

  def flush(self):
    """Flushes every writer."""
    for writer in self.writers:
      writer.flush()

  def close(self):
    """Closes every writer."""
    for writer in self.writers:
      writer.close()


MAX_LOG_LINE = 130  # characters of one scalars message: with absl's prefix (about 70), a log line stays under 200
# The metrics a log line shows first, in this order; the others follow while the line has room.
HEADLINE = (
  "loss",
  "accuracy",
  "top5_accuracy",
  "balanced_accuracy",
  "macro_f1",
  "f1",
  "macro_roc_auc",
  "roc_auc",
  "mean_average_precision",
  "learning_rate",
  "steps_per_sec",
)


def scalars_line(step: int, scalars: Mapping[str, Any], limit: int = MAX_LOG_LINE) -> str:
  """'[300] eval: accuracy=0.2861 loss=2.116 ... (+12 more in metrics.jsonl)', at most `limit` characters.

  Scalars sharing a prefix ('eval/', 'train/') are written once under it; the headline metrics come first and
  the ones that do not fit are counted, not shown, so an evaluation with per-class values stays one short line.
  """
  prefixes = {k.split("/", 1)[0] for k in scalars if "/" in k}
  prefix = prefixes.pop() if len(prefixes) == 1 and all("/" in k for k in scalars) else ""
  names = {k: (k[len(prefix) + 1 :] if prefix else k) for k in scalars}

  def rank(key: str) -> tuple[int, int]:  # headline first, counts (num_examples) and per-class values last
    name = names[key]
    return (HEADLINE.index(name) if name in HEADLINE else len(HEADLINE) + name.startswith("num_"), name.count("/"))

  order = sorted(scalars, key=rank)
  head = f"[{step}] {prefix}: " if prefix else f"[{step}] "
  shown: list[str] = []
  for i, key in enumerate(order):
    part = f"{names[key]}={to_float(scalars[key]):.4g}"
    rest = len(order) - i - 1
    tail = f" (+{rest} more in metrics.jsonl)" if rest else ""
    if len(head) + len(" ".join([*shown, part])) + len(tail) > limit:
      return head + " ".join(shown) + f" (+{len(order) - i} more in metrics.jsonl)"
    shown.append(part)
  return head + " ".join(shown)


class LogWriter(Writer):
  """Short absl log lines, so a run can be followed from its console: one line of at most 200 characters per
  `write_scalars`, and the hyper-parameters that apply in at most 10 lines (every key is in config.json)."""

  def write_scalars(self, step, scalars):
    """One log line of at most 200 characters (`scalars_line`)."""
    logging.info("%s", scalars_line(step, scalars))

  def write_texts(self, step, texts):
    """One log line per text: '[step] name: text'."""
    for key, text in texts.items():
      logging.info("[%d] %s: %s", step, key, text)

  def write_hparams(self, hparams):
    """The short summary of the keys that apply (`hparams.summary`) in the log."""
    logging.info("%s", hparams_lib.summary(hparams))


class JsonlWriter(Writer):
  """Appends `{"step": s, ...}` to a JSONL file, one line per `write_scalars`, flushed at once.

  With `resume_step` set (the step a training run starts or resumes from), lines with a later step are dropped
  first: they were written after the checkpoint the run resumes from (or by a run killed before its first
  checkpoint), and this run writes those steps again. `None` appends (for evaluation-only entry points).

  On an object store (`gs://`), which has no append, the lines are kept in memory and the whole object is
  rewritten at every `write_scalars` (each one is a log or eval point), so a kill loses nothing written before it.
  """

  def __init__(self, path, resume_step: int | None = None):
    self.path = paths.path(path, "metrics file")
    self._remote = paths.is_remote(self.path)
    if self._remote:
      text = paths.read_text(self.path) if self.path.exists() else ""
      self._lines = _kept_lines(text, resume_step)
      self._dirty = False
      return
    if resume_step is not None and self.path.exists():
      _truncate_jsonl(self.path, resume_step)
    _end_with_newline(os.fspath(self.path))
    self._file = open(self.path, "a", encoding="utf-8")

  def write_scalars(self, step, scalars):
    """Appends one line and flushes it (on an object store: rewrites the object), so a kill loses nothing written."""
    line = json.dumps({"step": int(step), **scalars}) + "\n"
    if self._remote:
      self._lines.append(line)
      self._dirty = True
      self.flush()
      return
    self._file.write(line)
    self._file.flush()

  def flush(self):
    """Flushes the local file, or rewrites the object-store file when a line came since the last write."""
    if not self._remote:
      self._file.flush()
    elif self._dirty:
      paths.write_text(self.path, "".join(self._lines))
      self._dirty = False

  def close(self):
    """Closes the local file, or writes the object-store file a last time."""
    if self._remote:
      self.flush()
    else:
      self._file.close()


def _kept_lines(text: str, resume_step: int | None) -> list[str]:
  """The lines of a JSONL text, each newline-terminated; with `resume_step`, only the parsable ones with
  step <= resume_step (a torn last line is dropped)."""
  kept = []
  for line in text.splitlines(keepends=True):
    if resume_step is not None:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict) and record.get("step", 0) > resume_step:
        continue
    kept.append(line if line.endswith("\n") else line + "\n")
  return kept


def _truncate_jsonl(path, resume_step: int) -> None:
  """Keeps the lines with step <= resume_step (and drops a torn last line), replacing the file atomically (one
  upload on an object store)."""
  paths.write_text(path, "".join(_kept_lines(paths.read_text(path), resume_step)))


def _end_with_newline(path: str) -> None:
  """Terminates a line torn by a crash, so the next line is not glued to it."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return
  with open(path, "rb+") as f:
    f.seek(-1, os.SEEK_END)
    if f.read(1) != b"\n":
      f.write(b"\n")


class _EventWriter(Writer):
  """Turns writer calls into TensorBoard `Event` protos, framed as TFRecords; subclasses store the records.

  Built from the tensorboard package's protos and record framing only: its own `EventFileWriter` goes through
  `tensorboard.compat.tf`, which imports TensorFlow (seconds of start-up) whenever TensorFlow is installed.
  Scalars are `simple_value`s, so `EventAccumulator.Scalars(tag)` reads them back (TF2 summaries store tensors).
  """

  def __init__(self, resume_step: int | None = None):
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top

    self._event_pb2 = event_pb2
    self._summary_pb2 = summary_pb2
    self._resume_step = resume_step

  def _start_events(self) -> list[Any]:
    """The events a new file starts with: the format version and, on a resumed run, a restart marker.

    The marker (SessionLog.START at `resume_step + 1`) makes TensorBoard drop the events of later steps that
    earlier files hold (written after the checkpoint this run resumes from), as `JsonlWriter` drops those lines.
    """
    events = [self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")]
    if self._resume_step is not None:
      events.append(
        self._event_pb2.Event(
          wall_time=time.time(),
          step=int(self._resume_step) + 1,
          session_log=self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START),
        )
      )
    return events

  def _write_record(self, data: bytes) -> None:
    raise NotImplementedError

  def _add(self, step: int, summary) -> None:
    event = self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
    self._write_record(event.SerializeToString())

  def write_scalars(self, step, scalars):
    values = [self._summary_pb2.Summary.Value(tag=k, simple_value=to_float(v)) for k, v in scalars.items()]
    self._add(step, self._summary_pb2.Summary(value=values))

  def write_texts(self, step, texts):
    from tensorboard.plugins.text import summary_v2  # pylint: disable=g-import-not-at-top

    for key, text in texts.items():
      self._add(step, summary_v2.text_pb(key, text))

  def write_hparams(self, hparams):
    from tensorboard.plugins.hparams import summary_v2  # pylint: disable=g-import-not-at-top

    self._add(0, summary_v2.hparams_pb(flatten_hparams(hparams)))

  def write_images(self, step, images):
    for key, batch in images.items():
      batch = np.asarray(batch)
      for i, image in enumerate(batch):
        tag = key if len(batch) == 1 else f"{key}/{i}"
        height, width, channels = image.shape
        value = self._summary_pb2.Summary.Value(
          tag=tag,
          image=self._summary_pb2.Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=_png_bytes(image)
          ),
        )
        self._add(step, self._summary_pb2.Summary(value=[value]))


_FILE_NUMBERS = itertools.count()


def _event_file_name() -> str:
  """TensorBoard's naming (`events.out.tfevents.<time>.<host>.<pid>.<n>`), `n` padded so that the files of one
  folder sort in the order they were written (TensorBoard reads them in name order)."""
  return f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILE_NUMBERS):05d}"


class EventFileWriter(_EventWriter):
  """TensorBoard event files in a local folder, one new file per writer, flushed at every write.

  Writes come at log and eval points, so flushing each one costs little and a kill loses nothing written.
  """

  def __init__(self, logdir: str, resume_step: int | None = None):
    super().__init__(resume_step)
    from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top

    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, _event_file_name())
    self._file = open(self.path, "wb")
    self._records = record_writer.RecordWriter(self._file)
    for event in self._start_events():
      self._records.write(event.SerializeToString())
    self._file.flush()

  def _write_record(self, data: bytes) -> None:
    self._records.write(data)
    self._file.flush()

  def flush(self):
    """Flushes the event file unless it is closed (every write flushes already)."""
    if not self._file.closed:
      self._file.flush()

  def close(self):
    """Closes the event file."""
    self._file.close()


class RemoteEventWriter(_EventWriter):
  """TensorBoard event files on an object store (`gs://`), written without TensorFlow and without appends.

  Events are framed as TFRecords (tensorboard's own record writer and crc32c) into an in-memory chunk, and the
  chunk's object is rewritten whole at every write, so a kill loses nothing already written. A chunk past
  `chunk_bytes` is closed and the next events go to a new object (`...<pid>.00001`, ...): TensorBoard reads
  every event file of a folder in name order, and no upload ever grows beyond one chunk.
  """

  def __init__(self, logdir, chunk_bytes: int = 1 << 20, resume_step: int | None = None):
    super().__init__(resume_step)
    self._logdir = paths.path(logdir, "TensorBoard folder")
    self._chunk_bytes = chunk_bytes
    self._prefix = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    self._number = -1
    self._new_chunk(self._start_events())

  def _new_chunk(self, first_events: list[Any]) -> None:
    from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top

    self._number += 1
    self._buffer = io.BytesIO()
    self._records = record_writer.RecordWriter(self._buffer)
    for event in first_events:
      self._records.write(event.SerializeToString())
    self._dirty = True

  def _write_record(self, data: bytes) -> None:
    if self._buffer.tell() > self._chunk_bytes:
      self.flush()
      self._new_chunk(self._start_events()[:1])  # the file version; the restart marker only in the first chunk
    self._records.write(data)
    self._dirty = True
    self.flush()

  def flush(self):
    """Uploads the current chunk whole if an event came since its last upload."""
    if self._dirty:
      paths.write_bytes(self._logdir / f"{self._prefix}.{self._number:05d}", self._buffer.getvalue())
      self._dirty = False

  def close(self):
    """Uploads what is left; there is no open file to close."""
    self.flush()


def _png_bytes(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
  return buffer.getvalue()


def write_figures(writer: Writer, step: int, figure_paths: Iterable[str]) -> None:
  """The report's PNG figures as TensorBoard images (tag `figures/<file name>`), beside the scalars."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  images = {}
  for path in figure_paths:
    with paths.path(path).open("rb") as f, Image.open(f) as figure:
      images["figures/" + os.path.splitext(os.path.basename(path))[0]] = np.asarray(figure.convert("RGB"))[None]
  if images:
    writer.write_images(step, images)
    writer.flush()


# --- The writers by name: `factory(workdir, resume_step) -> Writer`, `workdir` an epath on the path layer. ---
# `jaxcls.register_writer` files one's own here (docs/extensions.md). A factory that also takes `config` gets the
# run's config (the trackers read their `config.mlflow` / `config.wandb` section from it).

WRITERS = Registry("writer")
DEFAULT_WRITERS = ("tensorboard", "jsonl", "log")


@WRITERS.register("tensorboard")
def _tensorboard(workdir, resume_step: int | None) -> Writer:
  """Event files in `workdir/tensorboard/` without TensorFlow; `RemoteEventWriter` on an object store, where
  appending writers would lose events."""
  logdir = workdir / TENSORBOARD_DIR
  if paths.is_remote(logdir):
    return RemoteEventWriter(os.fspath(logdir), resume_step=resume_step)
  return EventFileWriter(os.fspath(logdir), resume_step=resume_step)


@WRITERS.register("jsonl")
def _jsonl(workdir, resume_step: int | None) -> Writer:
  """`workdir/metrics.jsonl`, trimmed to `resume_step` on a resumed run."""
  return JsonlWriter(workdir / JSONL_NAME, resume_step)


@WRITERS.register("log")
def _log(workdir, resume_step: int | None) -> Writer:
  """The absl log (the console)."""
  del workdir, resume_step
  return LogWriter()


@WRITERS.register("mlflow")
def _mlflow(workdir, resume_step: int | None, config: Any = None) -> Writer:
  """An MLflow run (`training/trackers.py`): params that apply, metrics per step, the report and config as
  artifacts at the end; the store is `config.mlflow.tracking_uri`, $MLFLOW_TRACKING_URI or DIR/mlflow.db."""
  from jaxcls.training import trackers  # pylint: disable=g-import-not-at-top

  return trackers.MlflowWriter(workdir, resume_step, config)


@WRITERS.register("wandb")
def _wandb(workdir, resume_step: int | None, config: Any = None) -> Writer:
  """A Weights & Biases run in DIR/wandb/ (`training/trackers.py`); offline when WANDB_MODE=offline."""
  from jaxcls.training import trackers  # pylint: disable=g-import-not-at-top

  return trackers.WandbWriter(workdir, resume_step, config)


@WRITERS.register("clu")
def _clu(workdir, resume_step: int | None) -> Any:
  """clu's `SummaryWriter` (TF2 summaries: scalars are stored as tensors) in `workdir/tensorboard/`; the only
  writer that imports TensorFlow and clu."""
  del resume_step  # TF's writer has no restart marker; jsonl is the record a resumed run is trimmed in.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError(
      f"config.writers names 'clu', which needs clu and TensorFlow ({e}); install them with "
      "`pip install 'jaxcls[tf]'` or use 'tensorboard'."
    ) from e
  try:
    tf.config.set_visible_devices([], "GPU")  # TensorFlow must not reserve the accelerator memory JAX uses.
  except RuntimeError:
    pass  # TensorFlow was initialised earlier by someone else; their choice stands.
  return metric_writers.SummaryWriter(os.fspath(workdir / TENSORBOARD_DIR))


def writer_names(value: Any = DEFAULT_WRITERS) -> tuple[str, ...]:
  """`config.writers` as a tuple of known names: a tuple, or 'a,b' / "('a', 'b')" from a command line.

  Raises ConfigError for an unknown name (with the known ones), a name listed twice, or 'tensorboard' with
  'clu' (both write `workdir/tensorboard/`, and TensorBoard would show every scalar twice).
  """
  names = registry.name_list(DEFAULT_WRITERS if value is None else value)
  for name in names:
    WRITERS.get(name)
  if len(set(names)) != len(names):
    raise ConfigError(f"config.writers={names} names a writer twice; list each once.")
  if {"tensorboard", "clu"} <= set(names):
    raise ConfigError(
      f"config.writers={names} names both 'tensorboard' and 'clu', which write the same TensorBoard folder; keep one."
    )
  return names


def _takes_config(factory: Any) -> bool:
  try:
    return "config" in inspect.signature(factory).parameters
  except (TypeError, ValueError):
    return False


def create_writer(
  workdir: str, *, is_main: bool, resume_step: int | None = None, names: Any = DEFAULT_WRITERS, config: Any = None
) -> Writer:
  """The run's writer: the writers `names` lists (`config.writers`), in order, on the main process; a no-op
  elsewhere, so hosts never race on the same files (and do not even fetch the values).

  `resume_step` is the step a training run starts or resumes from (its later records are dropped), `None` for
  entry points that only append. `config` reaches the factories that take it (the trackers' settings).
  """
  names = writer_names(names)
  if not is_main:
    return Writer()
  workdir = paths.path(workdir, "workdir")
  paths.makedirs(workdir)
  made = []
  try:
    for name in names:
      factory = WRITERS.get(name)
      made.append(
        factory(workdir, resume_step, config=config) if _takes_config(factory) else factory(workdir, resume_step)
      )
  except BaseException:
    for writer in made:  # a tracker that cannot start must not leave the others' files open
      writer.close()
    raise
  return MultiWriter(made)


class _ProgressFeed(Writer):
  """Hands the train scalars the loop writes to the progress display, which shows the last loss."""

  def __init__(self, progress):
    self._progress = progress

  def write_scalars(self, step, scalars):
    self._progress.note(step, scalars)

  def close(self):
    self._progress.close()


def create_progress(
  num_train_steps: int,
  writer: Any,
  *,
  is_main: bool,
  batch_size: int | None = None,
  steps_per_epoch: int | None = None,
  **kwargs,
) -> Any:
  """Called as `progress(step)` after every step: `progress.Progress` on the main process (a bar on a terminal,
  lines otherwise), fed the logged loss by `writer`; a no-op elsewhere. `kwargs` go to `Progress` (stream,
  interactive, every_secs, clock, ...)."""
  if not is_main:
    return progress_lib.NoProgress()
  shown = progress_lib.Progress(num_train_steps, batch_size=batch_size, steps_per_epoch=steps_per_epoch, **kwargs)
  if isinstance(writer, MultiWriter):
    writer.writers.append(_ProgressFeed(shown))
  return shown


def _path_name(path: tuple[Any, ...]) -> str:
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def parameter_overview(params: Any, max_rows: int = 24) -> str:
  """A table of the parameters (path, shape, size, dtype) and the total count, to log at the start of a run.

  A model with more than `max_rows` arrays (a ResNet-50 has 161) is shown by module instead, as deep as fits in
  `max_rows` rows ('layer1', 'layer2', ...: the number of arrays, their size and dtypes), so the log stays short.
  """
  leaves = []
  total = total_bytes = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    shape = tuple(np.shape(leaf))
    dtype = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    size = math.prod(shape)
    total += size
    total_bytes += size * dtype.itemsize
    leaves.append((_path_name(path), shape, size, dtype))
  if len(leaves) <= max_rows:
    header = ("Name", "Shape", "Size", "Dtype")
    rows = [(name, str(shape), f"{size:,}", str(dtype)) for name, shape, size, dtype in leaves]
  else:
    depth = 1
    while len({"/".join(n.split("/")[: depth + 1]) for n, *_ in leaves}) <= max_rows and depth < 8:
      depth += 1
    groups: dict[str, list] = {}
    for name, _, size, dtype in leaves:
      groups.setdefault("/".join(name.split("/")[:depth]), []).append((size, str(dtype)))
    header = ("Module", "Arrays", "Size", "Dtype")
    rows = [
      (name, str(len(items)), f"{sum(s for s, _ in items):,}", ",".join(sorted({d for _, d in items})))
      for name, items in groups.items()
    ]
  widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]

  def line(cells):
    return "| " + " | ".join(c.ljust(w) if i != 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

  rule = "+-" + "-+-".join("-" * w for w in widths) + "-+"
  table = [rule, line(header), rule, *(line(row) for row in rows), rule]
  size_text = f"{total_bytes / 2**20:.1f} MiB" if total_bytes >= 2**20 else f"{total_bytes / 2**10:.1f} KiB"
  table.append(f"Total: {total:,} parameters ({size_text})")
  return "\n".join(table)
