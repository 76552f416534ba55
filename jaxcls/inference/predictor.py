"""Predictions for image files from a trained workdir: the library behind `python -m jaxcls.predict`.

Restores a trained model with its config and class names from a workdir, preprocesses image files exactly as that
workdir's evaluation did (jaxcls/data/preprocess.py, then `forward.normalize` on the device), batches them across
the local devices, and prints one line per file as soon as its batch is done: the task's `prediction_record`
(top-k classes with probabilities; binary: the positive-class probability against the threshold; multi-label: the
labels at or above their thresholds; hierarchical: the predicted path). Folders are searched recursively for
image files. A file that cannot be read gets an error line (and an error row in --output) while the others go on;
the exit status is non-zero only when every file failed.

Files stream through in batches of --batch_size (decoded a bounded number of batches ahead, in threads that start
while the model is still being restored and compiled), so memory does not grow with the number of files; a last
line on stderr gives the images per second.
"""

import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from jaxcls.core.errors import ConfigError

OUTPUT_FORMATS = (".csv", ".json")


def inference_function(restored) -> Callable:
  """probabilities(variables, uint8 images [B, H, W, C]) -> the probabilities the eval step computes.

  The eval step's own forward pass (`jaxcls.models.forward.eval_logits`: normalisation, compute dtype, eval mode
  and the workdir's `eval_tta` views), and the task's `probabilities` of the logits: [B, K] (softmax, sigmoids or
  leaf probabilities) or [B] for a binary task (the positive class). Pure and not jitted, so `predict` jits it
  and `export` exports it (views included). `variables` are `forward.model_variables(restored.variables)`.
  """
  from jaxcls.models import forward, tta  # pylint: disable=g-import-not-at-top

  task, model, info = restored.task, restored.model, restored.info
  tta_kind = tta.from_config(restored.config)

  def probabilities(variables, images):
    logits = forward.eval_logits(
      model, variables, images, mean=info.mean, std=info.std, dtype=restored.config.dtype, tta=tta_kind
    )
    return task.probabilities(logits)

  return probabilities


def padded_batch_size(config, batch_size: int | None, num_devices: int) -> int:
  """Images per forward pass: `batch_size` (default: the config's eval batch size) rounded up to a multiple of
  the device count, so every device gets the same share."""
  per_batch = batch_size or config.eval_batch_size or config.batch_size
  if per_batch < 1:
    raise ConfigError(f"--batch_size={per_batch} must be at least 1.")
  return math.ceil(per_batch / num_devices) * num_devices


class Predictor:
  """Probabilities for uint8 image batches, sharded over the local devices; compiled once per batch shape.

  Each batch shape is compiled ahead of time (`compiled`: rows -> `jax.stages.Compiled` of
  probabilities(weights, images), the weights a flat list), so predict's forward-pass cache can keep the very
  executables a run used (jaxcls/inference/forward_cache.py).
  """

  def __init__(self, restored, *, batch_size: int | None = None, devices=None, fresh_compiles: bool = False):
    """`fresh_compiles`: compile outside the persistent compilation cache (`compile_cache.paused`), so that every
    executable in `compiled` can be serialized."""
    import jax  # pylint: disable=g-import-not-at-top

    from jaxcls.core import parallel  # pylint: disable=g-import-not-at-top
    from jaxcls.models import forward  # pylint: disable=g-import-not-at-top

    self._mesh = parallel.make_mesh(jax.local_devices() if devices is None else devices)
    self._devices = self._mesh.devices.size
    self.batch_size = padded_batch_size(restored.config, batch_size, self._devices)
    self._sharded = parallel.batch_sharded(self._mesh)
    leaves, treedef = jax.tree_util.tree_flatten(forward.model_variables(restored.variables))
    self.host_weights = [np.asarray(leaf) for leaf in leaves]  # in the order the compiled function takes them
    self._weights = parallel.replicate(self.host_weights, self._mesh)
    probabilities = inference_function(restored)
    self._forward = jax.jit(
      lambda weights, images: probabilities(treedef.unflatten(weights), images),
      in_shardings=(parallel.replicated(self._mesh), self._sharded),
      out_shardings=parallel.replicated(self._mesh),
    )
    self._image_shape = tuple(restored.info.image_shape)
    self._fresh_compiles = fresh_compiles
    self.compiled = {}

  def executable(self, rows: int):
    """The compiled forward pass of a batch of `rows` images (compiled on first use, through the persistent
    compilation cache when it is on)."""
    if rows not in self.compiled:
      import contextlib  # pylint: disable=g-import-not-at-top

      import jax  # pylint: disable=g-import-not-at-top

      from jaxcls.core import compile_cache  # pylint: disable=g-import-not-at-top

      images = jax.ShapeDtypeStruct((rows, *self._image_shape), np.uint8, sharding=self._sharded)
      with compile_cache.paused() if self._fresh_compiles else contextlib.nullcontext():
        self.compiled[rows] = self._forward.lower(self._weights, images).compile()
    return self.compiled[rows]

  def dispatch(self, images: np.ndarray, rows: int | None = None):
    """Starts the forward pass of at most `batch_size` uint8 images and returns its (not yet ready) result.

    The batch is padded with zero images to `rows` rows (default: the next multiple of the device count); the
    caller drops the padding rows (`fetch`). Giving every batch of a long run the same `rows` compiles it once.
    """
    import jax  # pylint: disable=g-import-not-at-top

    images, padded = pad_batch(images, self.batch_size, self._devices, rows)
    return self.executable(padded)(self._weights, jax.device_put(images, self._sharded))

  @staticmethod
  def fetch(result, count: int) -> np.ndarray:
    """float32 probabilities of the first `count` rows of a `dispatch` result (waits for it)."""
    return np.asarray(result, np.float32)[:count]

  def __call__(self, images: np.ndarray, rows: int | None = None) -> np.ndarray:
    """float32 probabilities of uint8 [N, H, W, C] images, in order.

    Full batches have `batch_size` rows; the last one is padded with zero images up to `rows` (default: only up
    to a multiple of the device count), and the padding rows are dropped.
    """
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start : start + self.batch_size]
      out.append(self.fetch(self.dispatch(chunk, rows), len(chunk)))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def pad_batch(images: np.ndarray, batch_size: int, devices: int, rows: int | None) -> tuple[np.ndarray, int]:
  """(uint8 images padded with zero images, their row count): to `rows`, and at least to the next multiple of
  `devices`; a ValueError for an empty batch or one over `batch_size`."""
  count = len(images)
  if not 0 < count <= batch_size:
    raise ValueError(f"A batch of {count} images does not fit batch_size={batch_size}.")
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"Images must be uint8 [N, H, W, C] as decoded (0-255), not {images.dtype}.")
  padded = max(rows or 0, math.ceil(count / devices) * devices)
  if padded != count:
    images = np.concatenate([images, np.zeros((padded - count,) + images.shape[1:], np.uint8)])
  return images, padded


def predict_files(
  restored, paths: list[str], *, top_k: int = 5, batch_size: int | None = None, workers: int = 0
) -> list[dict]:
  """A record per image file under `paths` (the task's `prediction_record`), in order, with `path` and `error`
  (None or why)."""
  from jaxcls.data import preprocess  # pylint: disable=g-import-not-at-top

  check_top_k(top_k)
  files = preprocess.find_images(list(paths))
  predictor = Predictor(restored, batch_size=batch_size)
  rows = full_rows(files, predictor.batch_size)
  with decoding(restored.config, files, predictor.batch_size, workers) as decoded:
    return list(predict_batches(restored, predictor, decoded, top_k=top_k, rows=rows))


def check_top_k(top_k: int) -> None:
  """A one-line ConfigError for a --top_k below 1 (before anything slow runs)."""
  if top_k < 1:
    raise ConfigError(f"--top_k={top_k} must be at least 1.")


def decoding(config, files: list[str], batch_size: int, workers: int = 0):
  """`preprocess.stream` of `files` with the workdir's eval preprocessing, as many batches ahead as fit its
  memory budget: a context whose decoding starts at once, in forked processes when that is safe (before jax is
  imported: `preprocess.can_fork`), else in threads."""
  from jaxcls.data import preprocess  # pylint: disable=g-import-not-at-top

  preprocessing = preprocess.from_config(config)
  return preprocess.stream(
    files,
    preprocessing,
    batch_size,
    workers,
    ahead=preprocess.batches_ahead(batch_size, preprocessing),
    processes=preprocess.can_fork(files),
  )


def full_rows(files: list[str], batch_size: int) -> int | None:
  """Rows every batch is padded to: `batch_size` when there is more than one batch (one compiled shape for the
  whole run, the short last batch included), else None (a single batch is padded only to the device count)."""
  return batch_size if len(files) > batch_size else None


def regroup(decoded: Iterable, size: int) -> Iterator:
  """Decoded batches ((paths, images, errors), see `preprocess.stream`) regrouped into batches of `size` paths
  (the last may be shorter), in order: the batches `preprocess.stream(files, ..., size)` would have given."""
  paths, images, errors = [], [], []
  held = 0

  def take(count: int):
    nonlocal paths, images, errors, held
    out_paths, out_errors = paths[:count], errors[:count]
    readable = sum(error is None for error in out_errors)
    stacked = np.concatenate(images) if len(images) > 1 else images[0]
    out = (out_paths, stacked[:readable], out_errors)
    paths, errors, images, held = paths[count:], errors[count:], [stacked[readable:]], held - count
    return out

  for batch_paths, batch_images, batch_errors in decoded:
    paths += batch_paths
    errors += batch_errors
    images.append(batch_images)
    held += len(batch_paths)
    while held >= size:
      yield take(size)
  if held:
    yield take(held)


def predict_batches(
  restored, predictor: Predictor, decoded: Iterable, *, top_k: int, rows: int | None = None
) -> Iterator[dict]:
  """The records of decoded batches ((paths, images, errors), see `preprocess.stream`), in order.

  A batch's forward pass is dispatched before the previous batch's records are made, so the device works while
  the host waits for decoding and formats lines.
  """
  names = list(restored.info.class_names)
  previous = None
  for paths, images, errors in decoded:
    current = (paths, errors, predictor.dispatch(images, rows) if len(images) else None, len(images))
    if previous is not None:
      yield from _records(restored.task, names, previous, top_k)
    previous = current
  if previous is not None:
    yield from _records(restored.task, names, previous, top_k)


def _records(task, names, batch, top_k: int) -> Iterator[dict]:
  """One batch's records, in file order: an error record for each unreadable file, the task's
  `prediction_record` for the others."""
  paths, errors, result, count = batch
  probs = iter(Predictor.fetch(result, count) if count else ())
  for path, error in zip(paths, errors):
    if error is not None:
      yield {"path": path, "error": error}
    else:
      yield {"path": path, "error": None, **task.prediction_record(names, next(probs), top_k)}


def format_line(record: dict) -> str:
  """One printed line per file (a non-UTF-8 byte of its name shown as \\xNN: see `folder_scan.display`)."""
  from jaxcls.data.sources.folder_scan import display  # pylint: disable=g-import-not-at-top

  path = display(record["path"])
  if record["error"]:
    return f"{path}: error: {display(record['error'])}"
  ranked = ", ".join(f"{name} {p:.4f}" for name, p in record["top_k"])
  if "threshold" in record:
    name, p = record["positive"]
    relation = ">=" if p >= record["threshold"] else "<"
    return f"{path}: {record['prediction']} (P({name}) {p:.4f} {relation} threshold {record['threshold']:g})"
  if "labels" in record:
    shown = ", ".join(f"{name} {p:.4f}" for name, p in record["labels"]) or "no label at or above its threshold"
    return f"{path}: {shown} (top: {ranked})"
  if "hierarchy" in record:
    return f"{path}: {' > '.join(record['hierarchy'])} {record['probability']:.4f} (top: {ranked})"
  return f"{path}: {ranked}"


def write_output(path: str, records: list[dict], header: dict) -> None:
  """Writes the records as JSON ({**header, 'predictions': records}) or CSV (one row per file), to a local file
  or a gs:// object, in one step."""
  from jaxcls.core import paths as path_layer  # pylint: disable=g-import-not-at-top
  from jaxcls.data.sources.folder_scan import display  # pylint: disable=g-import-not-at-top

  target = path_layer.path(path, "--output")
  path_layer.makedirs(target.parent)
  # A file name that is not valid UTF-8 is written with each undecodable byte as \xNN (`folder_scan.display`,
  # Python's 'backslashreplace') in both formats, so the output is valid UTF-8 that any reader opens.
  records = [{**r, "path": display(r["path"]), "error": r["error"] and display(r["error"])} for r in records]
  if path.lower().endswith(".json"):
    text = json.dumps({**header, "predictions": records}, indent=1)
  else:
    text = _csv_text(records)
  path_layer.write_text(target, text)


def _csv_text(records: list[dict]) -> str:
  top_k = max((len(r.get("top_k", ())) for r in records), default=0)
  columns = ["path", "prediction", "probability"]
  extras = [key for key in ("threshold", "labels", "hierarchy") if any(key in r for r in records)]
  columns += extras
  for rank in range(1, top_k + 1):
    columns += [f"class_{rank}", f"probability_{rank}"]
  columns.append("error")
  f = io.StringIO(newline="")
  writer = csv.writer(f)
  writer.writerow(columns)
  for record in records:
    row = {
      "path": record["path"],
      "error": record["error"] or "",
      "prediction": record.get("prediction", ""),
      "probability": _cell(record.get("probability")),
    }
    row["threshold"] = _cell(record.get("threshold"))
    row["labels"] = ";".join(f"{name}={p:.6g}" for name, p in record.get("labels", ()))
    row["hierarchy"] = " > ".join(record.get("hierarchy", ()))
    for rank, (name, p) in enumerate(record.get("top_k", ()), start=1):
      row[f"class_{rank}"], row[f"probability_{rank}"] = name, _cell(p)
    writer.writerow([row.get(column, "") for column in columns])
  return f.getvalue()


def _cell(value) -> str:
  return "" if value is None else repr(float(value))


def check_output_path(path: str | None) -> None:
  """A one-line ConfigError for an --output that is neither .csv nor .json (before anything slow runs)."""
  if path and os.path.splitext(path)[1].lower() not in OUTPUT_FORMATS:
    raise ConfigError(f"--output={path} must end in {' or '.join(OUTPUT_FORMATS)}.")


def run(
  workdir: str,
  paths: list[str],
  *,
  step: int | str | None = None,
  top_k: int = 5,
  batch_size: int | None = None,
  output: str | None = None,
  workers: int = 0,
  out=None,
  err=None,
) -> int:
  """The command: prints a line per file as its batch finishes, writes --output, reports images/s on `err`
  (stderr), and returns the exit status (1 when every file failed).

  Decoding starts before the model is restored and compiled, and goes on while it is, a bounded number of
  batches ahead; the records are kept only when --output needs them.
  """
  started = time.perf_counter()
  from jaxcls.data import preprocess  # pylint: disable=g-import-not-at-top  (neither imports jax)
  from jaxcls.store import restore

  check_output_path(output)
  check_top_k(top_k)
  if batch_size is not None and batch_size < 1:
    raise ConfigError(f"--batch_size={batch_size} must be at least 1 (leave it out for the config's eval batch size).")
  if workers < 0:
    raise ConfigError(f"--workers={workers} must be 0 (one decoding thread per CPU core) or more.")
  if not paths:
    raise ConfigError(
      "Give the image files or folders to predict on after the flags, e.g. "
      "`python -m jaxcls.predict --workdir DIR photo.jpg folder/`."
    )
  out, err = out or sys.stdout, err or sys.stderr
  config = restore.load_config(workdir)
  files = preprocess.find_images(list(paths))
  # Decoding starts now, before jax is imported (restore imports it, then flax and orbax, ~1-3 s): batches of the
  # requested size, regrouped below if the device count rounds the forward pass's size up.
  requested = padded_batch_size(config, batch_size, 1)
  records, counts, first = [], {"predicted": 0, "failed": 0}, None
  with decoding(config, files, requested, workers) as decoded:
    described = restore.describe(workdir, step)  # no flax or orbax: the cache may make them unnecessary
    from jaxcls.inference import forward_cache  # pylint: disable=g-import-not-at-top  (imports jax: after the fork)

    def build(cached: bool) -> Predictor:
      """The model restored; its shapes compiled afresh for the forward-pass cache (`cached`), else through the
      persistent compilation cache."""
      if not cached:
        from jaxcls.core import compile_cache  # pylint: disable=g-import-not-at-top

        compile_cache.enable_for_workdir(described.config, workdir, announce=False)  # a rerun loads what compiles
      return Predictor(restore.complete(described), batch_size=requested, fresh_compiles=cached)

    predictor, entry = forward_cache.predictor_for(described, requested, build)
    size = predictor.batch_size
    batches = decoded if size == requested else regroup(decoded, size)
    for record in predict_batches(described, predictor, batches, top_k=top_k, rows=full_rows(files, size)):
      first = first or time.perf_counter()
      print(format_line(record), file=out, flush=False)
      counts["failed" if record["error"] else "predicted"] += 1
      if output:
        records.append(record)
  out.flush()
  if output:
    write_output(
      output,
      records,
      {
        "workdir": described.workdir,
        "step": described.step,
        "task": described.config.task.type,
        "model": described.config.model.name,
      },
    )
  finished = time.perf_counter()
  forward_cache.save(entry, predictor)  # after the output: the lines never wait for it
  print(throughput_line(counts["predicted"], started, first, finished, described), file=err)
  failed, total = counts["failed"], counts["failed"] + counts["predicted"]
  if failed:
    print(f"jaxcls: {failed} of {total} file(s) could not be read.", file=err)
  return 1 if failed == total else 0


def throughput_line(predicted: int, started: float, first: float | None, finished: float, restored) -> str:
  """The images/s summary: over the whole command, and after start-up (restore and compilation, until the first
  batch's lines), so a reader sees both what one call costs and what a long run sustains."""
  total = finished - started
  startup = (first or finished) - started
  line = (
    f"jaxcls: predicted {predicted} image(s) with {restored.config.model.name} (step {restored.step}) in "
    f"{total:.2f} s: {predicted / max(total, 1e-9):.1f} images/s"
  )
  return line + f" ({startup:.2f} s to the first batch, start-up included)."
