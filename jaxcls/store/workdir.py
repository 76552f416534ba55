"""The workdir format: the files a run leaves besides its checkpoints, and the two guards on a workdir.

Files (all written through `jaxcls.core.paths`, so a `gs://` workdir works the same as a local one):

- `config.json`: the resolved config of the run (derived values such as normalisation, image size, class names
  and `num_train_steps` filled in);
- `classes.json`: the class names in label order;
- `config_history.jsonl`: one JSON object per line, appended (buffer and rewrite: object stores have no append)
  whenever a re-run replaces `config.json` of a workdir that already holds a checkpoint; each record keeps the
  previous config whole, so no earlier experiment description is ever lost;
- `lock.json`: who is training into the workdir now (host, pid, start, heartbeat);
- `checkpoints/<step>/` (orbax, `jaxcls.store.checkpoint`), and `corrupt_checkpoints/` for damaged steps moved aside;
- `metrics.jsonl` (every logged scalar), `tensorboard/` (event files), `report.json`, `report.md` and `plots/`
  (the final evaluation), `skipped_files.txt` (unreadable images), `cache/` (a folder source's decoded arrays),
  `fewshot.json` (`python -m jaxcls.fewshot`), `eval_<parent>_<folder>_<hash>/` (`evaluate --data FOLDER`),
  and `classical_svm.npz` (the classical baseline's classifier).

This module is the one place that knows these names: everything else asks it for a path or calls its read and
write functions, so the format (which users and scripts rely on) cannot drift between a writer and a reader.

Guard 1, the same experiment (`check_rerun`): a workdir with a config and a checkpoint is resumed only when the
new resolved config equals the saved one on every key that changes training. The keys that only change reporting,
cadence or where files go are listed, each with its reason, in `NON_TRAINING_KEYS`; every other key, including
keys added later to the base config, counts as a training key. `num_train_steps` may grow (a longer run), not
shrink. Guard 2, one run at a time (`locked`): process 0 holds `lock.json` for the whole of training. See
docs/workdir.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from absl import logging
from etils import epath

from jaxcls.core import paths
from jaxcls.core.errors import ConfigError, WorkdirBusyError

CONFIG_NAME = "config.json"
CLASSES_NAME = "classes.json"
HISTORY_NAME = "config_history.jsonl"
LOCK_NAME = "lock.json"
CHECKPOINTS_NAME = "checkpoints"
CORRUPT_CHECKPOINTS_NAME = "corrupt_checkpoints"  # beside checkpoints/, so orbax never lists or cleans it
METRICS_NAME = "metrics.jsonl"
TENSORBOARD_NAME = "tensorboard"  # the 'tensorboard' writer's event files
REPORT_JSON_NAME = "report.json"
REPORT_MD_NAME = "report.md"
PLOTS_NAME = "plots"
SKIPPED_NAME = "skipped_files.txt"
CACHE_NAME = "cache"
FEWSHOT_NAME = "fewshot.json"
EVAL_FOLDER_PREFIX = "eval_"
CLASSICAL_MODEL_NAME = "classical_svm.npz"  # the classical baseline's fitted SVM (python -m jaxcls.classical)

# Keys (or whole sections, with every key under them) that do not change what is trained, with the reason.
NON_TRAINING_KEYS = {
  "log_every_steps": "how often train metrics are logged; the loss is checked at the same points",
  "eval_every_steps": "how often the eval split is evaluated; evaluation never changes the state",
  "checkpoint_every_steps": "how often a checkpoint is written; resuming from any step is exact",
  "checkpoint_every_secs": "a wall-clock checkpoint cadence; resuming from any step is exact",
  "keep_checkpoints": "how many checkpoints are kept on disk",
  "writers": "where metrics are written, not what they are",
  "mlflow": "where the 'mlflow' writer sends metrics",
  "wandb": "where the 'wandb' writer sends metrics",
  "transfer_guard": "a debugging check on the loop's host transfers; the computation is the same",
  "best_metric": "which evaluation picks the kept best checkpoint",
  "best_mode": "whether the best metric is maximised or minimised",
  "evaluators": "extra periodic evaluations (read the state, never change it)",
  "fewshot": "the few-shot evaluator's settings",
  "knn": "the k-NN evaluator's settings",
  "eval_batch_size": "evaluation is exact at any batch size (padded rows are masked out)",
  "eval_tta": "test-time augmentation applies to evaluation and inference only",
  "task.threshold": "the binary decision threshold shapes reported decisions, not the loss",
  "task.thresholds": "the multi-label decision thresholds shape reported decisions, not the loss",
  "dataset.eval_split": "which split is evaluated",
  "dataset.eval_crop": "how eval images are cropped (the normalisation it feeds is compared as resolved)",
  "dataset.cache_dir": "where decoded arrays are cached (the default lives in the workdir, so it moves with it)",
  "dataset.data_dir": "where prepared TFDS data lives; the data itself is named by dataset.tfds_name",
  "dataset.download": "whether a missing TFDS dataset may be downloaded",
  "dataset.workers": "decode threads; the order of examples does not depend on them",
  "dataset.decode_processes": "decode worker processes; the batches do not depend on them",
  "compilation_cache_dir": "where compiled programs are cached",
  "prefetch_to_device": "how many batches are copied to the devices ahead; the batches are the same",
  "async_checkpointing": "whether checkpoints are written in the background",
  "num_epochs": "compared as the resolved num_train_steps, which may grow (see docs/workdir.md)",
  "init_from": "read only while the workdir has no checkpoint; a resumed run continues from its own (the "
  "source may have moved since)",
  "init_from_step": "read only with init_from, at the start of a workdir",
}
# Compared with their own rule instead of equality.
EXTENSIBLE_KEYS = ("num_train_steps",)
# Not compared at all: the switch that accepts a changed training config describes the re-run, not the experiment.
IGNORED_KEYS = ("allow_config_change",)


def workdir_path(workdir: paths.PathLike) -> epath.Path:
  """The workdir on the path layer (local made absolute, or gs://); every file below is named from it."""
  return paths.path(workdir, "workdir")


def config_path(workdir: paths.PathLike) -> epath.Path:
  """DIR/config.json: the resolved config."""
  return workdir_path(workdir) / CONFIG_NAME


def classes_path(workdir: paths.PathLike) -> epath.Path:
  """DIR/classes.json: the class names in label order."""
  return workdir_path(workdir) / CLASSES_NAME


def history_path(workdir: paths.PathLike) -> epath.Path:
  """DIR/config_history.jsonl: the configs a changed re-run replaced."""
  return workdir_path(workdir) / HISTORY_NAME


def lock_path(workdir: paths.PathLike) -> epath.Path:
  """DIR/lock.json: the running training's claim on the workdir."""
  return workdir_path(workdir) / LOCK_NAME


def checkpoints_path(workdir: paths.PathLike) -> epath.Path:
  """DIR/checkpoints: orbax's folder of `<step>` checkpoints."""
  return workdir_path(workdir) / CHECKPOINTS_NAME


def corrupt_checkpoints_path(workdir: paths.PathLike) -> epath.Path:
  """DIR/corrupt_checkpoints: where damaged steps are moved aside (kept for inspection, never read)."""
  return workdir_path(workdir) / CORRUPT_CHECKPOINTS_NAME


def metrics_path(workdir: paths.PathLike) -> epath.Path:
  """DIR/metrics.jsonl: one JSON object per logged step (the 'jsonl' writer; plots read the curves back)."""
  return workdir_path(workdir) / METRICS_NAME


def report_paths(folder: paths.PathLike) -> tuple[epath.Path, epath.Path]:
  """(report.json, report.md) in `folder`: the workdir, or an evaluation's --output_dir."""
  folder = paths.path(folder, "report folder")
  return folder / REPORT_JSON_NAME, folder / REPORT_MD_NAME


def plots_path(folder: paths.PathLike) -> epath.Path:
  """`folder`/plots: the report's figures."""
  return paths.path(folder, "report folder") / PLOTS_NAME


def skipped_path(folder: paths.PathLike) -> epath.Path:
  """`folder`/skipped_files.txt: the images a source could not read."""
  return paths.path(folder, "report folder") / SKIPPED_NAME


def cache_dir(workdir: str) -> str:
  """DIR/cache: the default home of a folder source's decoded arrays for a local run (a plain path string, as
  `config.dataset.cache_dir` holds it)."""
  return os.path.join(workdir, CACHE_NAME)


def fewshot_path(workdir: paths.PathLike) -> epath.Path:
  """DIR/fewshot.json: the result of `python -m jaxcls.fewshot`."""
  return workdir_path(workdir) / FEWSHOT_NAME


def eval_folder(workdir: paths.PathLike, data_dir: str) -> epath.Path:
  """DIR/eval_<parent>_<folder>_<hash>: where an evaluation of a folder of new images writes.

  The training report stays, and two data folders never share a report folder: `A/new` and `B/new` differ in
  their parent, and the 8 hex digits of the folder's absolute path (its real path when local) tell apart even
  `x/A/new` and `y/A/new`. The same folder always maps to the same name, so evaluating it again updates its report.
  """
  text = str(data_dir).rstrip("/")
  absolute = text if paths.is_remote(text) else os.path.realpath(os.path.expanduser(text))
  parts = [p for p in absolute.split("://")[-1].split("/") if p][-2:]
  readable = "_".join("".join(c if c.isalnum() or c in "-." else "-" for c in p) for p in parts) or "root"
  digest = hashlib.sha256(absolute.encode("utf-8")).hexdigest()[:8]
  return workdir_path(workdir) / f"{EVAL_FOLDER_PREFIX}{readable}_{digest}"


def is_workdir(folder: paths.PathLike) -> bool:
  """Whether `folder` holds a run's config.json (what makes a folder a workdir for init_from and commands)."""
  return config_path(folder).is_file()


# ------------------------------------------------------------------------------------------------- files


def read_config(workdir: paths.PathLike) -> dict:
  """The saved resolved config as a plain dict; ConfigError when it is missing, unreadable or not an object."""
  target = config_path(workdir)
  if not target.exists():
    raise ConfigError(
      f"{target} does not exist; --workdir must be a directory that `python -m jaxcls.main` trained into."
    )
  return _parse_config(target, _read_text(target))


def _read_text(target: epath.Path) -> str:
  """A config file's text; a one-line ConfigError when it is a folder, unreadable, or not UTF-8."""
  if not target.is_file():
    raise ConfigError(
      f"{target} is not a file; remove it and restore the file (an earlier version may be in "
      f"{HISTORY_NAME}), or train into a new --workdir."
    )
  try:
    return paths.read_text(target)
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(
      f"Cannot read {target} ({getattr(e, 'strerror', None) or e}); restore it, or train into a new --workdir."
    ) from None


def _parse_config(target, text: str) -> dict:
  try:
    value = json.loads(text)
  except ValueError as e:
    raise ConfigError(
      f"{target} is damaged ({'empty file' if not text.strip() else str(e)}); restore it (an "
      f"earlier version may be in {HISTORY_NAME}), or train into a new --workdir."
    ) from None
  if not isinstance(value, dict):
    raise ConfigError(
      f"{target} holds a JSON {type(value).__name__}, not a config object; restore it (an "
      f"earlier version may be in {HISTORY_NAME}), or train into a new --workdir."
    )
  return value


def config_json(resolved) -> str:
  """The text of config.json for a resolved ConfigDict (sorted keys, tuples as lists)."""
  return resolved.to_json_best_effort(indent=1, sort_keys=True) + "\n"


def write_config(workdir: paths.PathLike, resolved) -> None:
  """Writes config.json (atomically) from a resolved ConfigDict."""
  paths.write_text(config_path(workdir), config_json(resolved))


def write_classes(workdir: paths.PathLike, class_names) -> None:
  """Writes classes.json: the class names in label order."""
  paths.write_text(classes_path(workdir), json.dumps(list(class_names), indent=1))


def read_classes(workdir: paths.PathLike) -> list[str]:
  """The class names in label order from classes.json; ConfigError when missing or not a list of names."""
  target = classes_path(workdir)
  if not target.is_file():
    raise ConfigError(
      f"{target} does not exist; --workdir must be a directory that `python -m jaxcls.main` trained into."
    )
  try:
    names = json.loads(_read_text(target))
  except ValueError:
    names = None
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise ConfigError(
      f"{target} is damaged (not a JSON list of class names); restore it, or train into a new --workdir."
    )
  return names


def write_skipped_files(folder: paths.PathLike, dataset, is_main: bool = True) -> None:
  """Lists the images a source could not read (path, reason) in `folder`/skipped_files.txt, when there are any.

  A non-UTF-8 byte of a file name is written as \\xNN (folder_scan.display), so the listing is valid UTF-8.
  """
  skipped = getattr(dataset, "skipped_files", None)  # only sources that read files keep such a list
  if not is_main or not skipped:
    return
  from jaxcls.data.sources.folder_scan import display  # pylint: disable=g-import-not-at-top

  listing = skipped_path(folder)
  paths.write_text(listing, "".join(f"{display(path)}\t{display(reason)}\n" for path, reason in skipped))
  logging.warning("%d unreadable images were skipped; they are listed in %s.", len(skipped), listing)


def resolved_config(config, info, num_train_steps: int):
  """The config as config.json records it: with the values the run derived (normalisation, image size, class
  names, steps) filled in, so a trained model can be rebuilt without its training data."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  resolved = ml_collections.ConfigDict(config.to_dict())
  resolved.dataset.mean = tuple(info.mean)
  resolved.dataset.std = tuple(info.std)
  resolved.dataset.image_size = tuple(info.image_shape[:2])
  resolved.dataset.class_names = tuple(info.class_names)
  resolved.num_train_steps = num_train_steps
  return resolved


def read_history(workdir: paths.PathLike) -> list[dict]:
  """The records of config_history.jsonl, oldest first ([] when there is none)."""
  target = history_path(workdir)
  if not target.exists():
    return []
  return [json.loads(line) for line in paths.read_text(target).splitlines() if line.strip()]


def append_history(workdir: paths.PathLike, record: dict) -> None:
  """Adds one line to config_history.jsonl by rewriting the whole file (object stores have no append)."""
  target = history_path(workdir)
  old = paths.read_text(target) if target.exists() else ""
  if old and not old.endswith("\n"):
    old += "\n"
  paths.write_text(target, old + json.dumps(record, sort_keys=True) + "\n")


def checkpoint_steps(workdir: paths.PathLike) -> list[int]:
  """The steps of the finished checkpoints in DIR/checkpoints, local or gs:// (orbax's unfinished
  `<step>.orbax-checkpoint-tmp-*` folders are not digits, so they are left out)."""
  folder = checkpoints_path(workdir)
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


# ------------------------------------------------------------------------------------------ guard 1: re-runs


def is_non_training(key: str) -> bool:
  """Whether `key` (dotted) or a section above it is in NON_TRAINING_KEYS, so a change of it may resume."""
  parts = key.split(".")
  return any(".".join(parts[:i]) in NON_TRAINING_KEYS for i in range(1, len(parts) + 1))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(value, dict) and value:
    out = {}
    for key in sorted(value):
      out.update(_flatten(value[key], f"{prefix}{key}."))
    return out
  return {prefix[:-1]: value}


def _defaults() -> dict[str, Any]:
  from jaxcls.config import base as config_base  # pylint: disable=g-import-not-at-top

  return _flatten(json.loads(config_base.get_base_config().to_json_best_effort()))


def differences(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
  """(key, old, new) for every leaf that differs; a key missing on one side counts as the base default
  (a config.json written before the key existed ran with that default)."""
  old, new, defaults = _flatten(saved), _flatten(current), _defaults()
  missing = object()
  out = []
  for key in sorted((set(old) | set(new)) - set(IGNORED_KEYS)):
    a, b = old.get(key, defaults.get(key, missing)), new.get(key, defaults.get(key, missing))
    if a != b:
      out.append((key, None if a is missing else a, None if b is missing else b))
  return out


def _short(value: Any, limit: int = 60) -> str:
  text = json.dumps(value) if not isinstance(value, str) else repr(value)
  return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclasses.dataclass
class Rerun:
  """What a run found in its workdir: the saved config, the latest checkpoint step and what changed."""

  step: int | None = None  # latest checkpoint step; None when there is no earlier run
  previous: dict | None = None  # the saved config.json
  previous_text: str | None = None  # its raw text, when it could not be parsed
  training: list = dataclasses.field(default_factory=list)  # (key, old, new) of keys that change training
  other: list = dataclasses.field(default_factory=list)  # (key, old, new) of reporting / cadence keys

  def changed(self) -> bool:
    """Whether anything differs from the earlier run: a changed key, or a config.json that could not be parsed."""
    return bool(self.training or self.other or self.previous_text is not None)


def check_rerun(workdir: paths.PathLike, resolved, *, allow: bool = False) -> Rerun:
  """Compares the new resolved config with the one a workdir's earlier run saved, before anything is restored.

  A workdir without a config.json or without a checkpoint holds no run yet: anything goes. Otherwise a changed
  training key (every key not in NON_TRAINING_KEYS; `num_train_steps` only when it shrinks) raises a one-line
  ConfigError listing `key: old -> new`, unless `allow` (config.allow_config_change) is set.
  """
  target = config_path(workdir)
  steps = checkpoint_steps(workdir)
  if not steps:
    return Rerun()
  if not target.exists():
    logging.warning(
      "%s is missing, so this run cannot check that it continues the experiment of checkpoint "
      "step %d; only the checkpoint's own shape check applies.",
      target,
      steps[-1],
    )
    return Rerun()
  rerun = Rerun(step=steps[-1])
  text = _read_text(target)  # a folder or an unreadable file: an error even with the flag (it cannot be replaced)
  try:
    rerun.previous = _parse_config(target, text)
  except ConfigError as e:
    if not allow:
      raise ConfigError(
        f"{str(e)[:-1]}; or pass --config.allow_config_change=True to resume checkpoint step "
        f"{rerun.step} with the current config (the damaged file is kept in {HISTORY_NAME})."
      ) from None
    logging.warning("%s Resuming anyway (config.allow_config_change=True); its text goes to %s.", e, HISTORY_NAME)
    rerun.previous_text = text
    return rerun
  current = json.loads(config_json(resolved))
  for key, old, new in differences(rerun.previous, current):
    grows = key in EXTENSIBLE_KEYS and isinstance(old, (int, float)) and isinstance(new, (int, float)) and new > old
    (rerun.other if grows or is_non_training(key) else rerun.training).append((key, old, new))
  if rerun.training:
    listed = "; ".join(f"{key}: {_short(old)} -> {_short(new)}" for key, old, new in rerun.training)
    if not allow:
      raise ConfigError(
        f"The workdir {workdir_path(workdir)} holds a run (checkpoint step {rerun.step}) with another training "
        f"config ({listed}); resuming would silently change that experiment, so train into a new --workdir, "
        f"or pass --config.allow_config_change=True to continue it with the new values (recorded in "
        f"{HISTORY_NAME})."
      )
    logging.warning(
      "Continuing the run in %s from step %d with a changed training config "
      "(config.allow_config_change=True): %s. The earlier config goes to %s.",
      workdir_path(workdir),
      rerun.step,
      listed,
      HISTORY_NAME,
    )
  for key, old, new in rerun.other:
    if key in EXTENSIBLE_KEYS:
      schedule = (current.get("optimizer") or {}).get("schedule", "")
      logging.warning(
        "num_train_steps grows from %s to %s at step %d: the %r learning-rate schedule is recomputed over %s "
        "steps, so from step %d on the rate follows the longer schedule%s (docs/workdir.md).",
        old,
        new,
        rerun.step,
        schedule,
        new,
        rerun.step,
        "" if schedule == "constant" else "; the result differs from a fresh run of that length",
      )
  return rerun


def write_run_files(workdir: paths.PathLike, resolved, class_names, rerun: Rerun | None = None) -> None:
  """config.json and classes.json; when they replace an earlier run's config, its record in the history first."""
  if rerun is not None and rerun.step is not None and rerun.changed():
    record = {
      "time": _utc(time.time()),
      "step": rerun.step,
      "changes": [
        {"key": k, "old": old, "new": new, "training": training}
        for training, changes in ((True, rerun.training), (False, rerun.other))
        for k, old, new in changes
      ],
      "previous_config": rerun.previous,
    }
    if rerun.previous_text is not None:
      record["previous_config_text"] = rerun.previous_text
    append_history(workdir, record)
  write_config(workdir, resolved)
  write_classes(workdir, class_names)


# ------------------------------------------------------------------------------------------- guard 2: the lock

HEARTBEAT_EVERY_S = 60.0  # the holder rewrites its heartbeat this often (a background thread)
STALE_AFTER_S = 900.0  # another host's lock whose heartbeat is older than this is stale
_REREAD_AFTER_S = 1.0  # an unreadable lock is read again after this long before it counts as damaged
_held: dict[str, WorkdirLock] = {}  # token -> lock held by this process


def _utc(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _process_start(pid: int) -> str | None:
  """The start time of `pid` (clock ticks since boot, Linux /proc), which tells a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat", "rb") as f:
      fields = f.read().rsplit(b")", 1)[-1].split()
    return fields[19].decode()  # field 22 of stat; the fields after the command name start at field 3
  except (OSError, IndexError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # e.g. PermissionError: it exists, under another user
    return True
  return True


def stale_reason(holder: dict, now: float | None = None) -> str | None:
  """Why the lock `holder` wrote is stale, or None while its run may still be alive."""
  now = time.time() if now is None else now
  pid = holder.get("pid")
  if holder.get("host") == socket.gethostname() and isinstance(pid, int):
    if holder.get("token") in _held:
      return None
    if not _pid_alive(pid):
      return f"its process {pid} on this host is gone"
    start, current = holder.get("pid_start"), _process_start(pid)
    if start and current and start != current:
      return f"pid {pid} now belongs to another process"
    if pid == os.getpid():
      return "an earlier run in this process left it behind"
    return None
  beat = holder.get("heartbeat")
  if not isinstance(beat, (int, float)):
    return "it has no heartbeat time"
  if now - beat > STALE_AFTER_S:
    return f"its last heartbeat was {now - beat:.0f} s ago (stale after {STALE_AFTER_S:.0f} s)"
  return None


def describe(holder: dict, now: float | None = None) -> str:
  """Who holds a lock, for the messages: host, pid, start and the age of the last heartbeat."""
  now = time.time() if now is None else now
  beat = holder.get("heartbeat")
  since = holder.get("started")
  return (
    f"host {holder.get('host')}, pid {holder.get('pid')}, since "
    f"{_utc(since) if isinstance(since, (int, float)) else '?'}"
    + (f", last heartbeat {max(now - beat, 0):.0f} s ago" if isinstance(beat, (int, float)) else "")
  )


class WorkdirLock:
  """DIR/lock.json, held by one process for a whole training run.

  Local: created with O_CREAT|O_EXCL, so of two runs exactly one wins. gs://: created with gcsfs's exclusive
  upload (`ifGenerationMatch=0`: real GCS refuses a second creation) and read back; without gcsfs (or on a store
  that ignores the precondition, such as the local emulator) two runs starting within the same second can both
  believe they won (see docs/workdir.md). A background thread refreshes the heartbeat every HEARTBEAT_EVERY_S.
  """

  def __init__(self, workdir: paths.PathLike, *, heartbeat_every_s: float = HEARTBEAT_EVERY_S):
    self.workdir = workdir_path(workdir)
    self.path = self.workdir / LOCK_NAME
    self.token = uuid.uuid4().hex
    self._every = heartbeat_every_s
    self._stop = threading.Event()
    self._thread = None
    self._record = None

  # -- acquire / release

  def acquire(self) -> None:
    """Takes the lock and starts its heartbeat; a stale lock is taken over, a live one raises WorkdirBusyError."""
    _prepare(self.workdir)
    now = time.time()
    self._record = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "pid_start": _process_start(os.getpid()),
      "started": now,
      "heartbeat": now,
      "token": self.token,
      "command": " ".join(sys.argv)[:500],
    }
    for _ in range(3):
      if self._create():
        _held[self.token] = self
        self._thread = threading.Thread(target=self._beat_loop, name="jaxcls-workdir-lock", daemon=True)
        self._thread.start()
        return
      holder = self._read_settled()
      if holder is None:  # released between our attempt and the read: try again
        continue
      reason = "it is unreadable" if holder == {} else stale_reason(holder)
      if reason is None:
        raise WorkdirBusyError(
          f"The workdir {self.workdir} is in use by another training run ({describe(holder)}); wait for it to "
          f"finish or stop it, or train into a new --workdir (if that run is gone, delete {self.path})."
        )
      logging.warning(
        "Taking over the stale workdir lock %s (%s): %s.",
        self.path,
        describe(holder) if holder else "unreadable",
        reason,
      )
      self._remove_if(holder.get("token") if holder else None)
    raise WorkdirBusyError(
      f"The workdir lock {self.path} changed hands three times while this run tried to take "
      f"it; another run is starting there, so train into a new --workdir."
    )

  def release(self) -> None:
    """Removes the lock if it is still ours (never another run's), after stopping the heartbeat."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=30)
    _held.pop(self.token, None)
    try:
      holder = self._read()
    except ConfigError as e:
      logging.warning("Could not read the workdir lock %s to release it (%s).", self.path, e)
      return
    if holder is None:
      return
    if holder.get("token") != self.token:
      logging.warning(
        "The workdir lock %s now belongs to another run (%s); it is left in place.",
        self.path,
        describe(holder) if holder else "unreadable",
      )
      return
    try:
      self.path.unlink()
    except FileNotFoundError:
      pass
    except OSError as e:  # never hide the run's own outcome behind a failed clean-up
      logging.warning("Could not remove the workdir lock %s (%s); delete it by hand.", self.path, e)

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()

  # -- heartbeat

  def heartbeat(self) -> bool:
    """Rewrites the heartbeat time; False (and a warning) when the lock is no longer ours."""
    holder = self._read()
    if not holder or holder.get("token") != self.token:
      logging.warning(
        "The workdir lock %s was taken over by another run (%s); this run keeps going, but both may now write into %s.",
        self.path,
        describe(holder) if holder else "removed",
        self.workdir,
      )
      return False
    self._record["heartbeat"] = time.time()
    paths.write_text(self.path, json.dumps(self._record, sort_keys=True))
    return True

  def _beat_loop(self) -> None:
    while not self._stop.wait(self._every):
      try:
        if not self.heartbeat():
          return
      except Exception as e:  # pylint: disable=broad-except  (a transient store error must not stop training)
        logging.warning("Could not refresh the workdir lock %s (%s); retrying in %.0f s.", self.path, e, self._every)

  # -- file operations

  def _data(self) -> bytes:
    return json.dumps(self._record, sort_keys=True).encode("utf-8")

  def _create(self) -> bool:
    try:
      if not paths.is_remote(self.path):
        try:
          fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
          return False
        with os.fdopen(fd, "wb") as f:
          f.write(self._data())
          f.flush()
          os.fsync(f.fileno())
        return True
      return self._create_remote()
    except OSError as e:
      raise ConfigError(
        f"Cannot write the workdir lock {self.path} ({e.strerror or e}); --workdir must be a writable folder."
      ) from None

  def _create_remote(self) -> bool:
    if self.path.exists():
      return False
    try:
      import fsspec  # pylint: disable=g-import-not-at-top

      fs = fsspec.filesystem(paths.scheme(self.path))
      fs.pipe_file(str(self.path), self._data(), mode="create")  # gcsfs: ifGenerationMatch=0
    except FileExistsError:
      return False
    except (ImportError, ValueError, TypeError):  # no fsspec backend, or one without exclusive creation
      paths.write_bytes(self.path, self._data())
    holder = self._read()  # a store that ignored the precondition: the last writer wins, and we may have lost
    return bool(holder) and holder.get("token") == self.token

  def _read(self) -> dict | None:
    """The lock's record; None when there is no lock file; {} when it cannot be parsed."""
    try:
      text = paths.read_text(self.path)
    except FileNotFoundError:
      return None
    except UnicodeDecodeError:  # garbage bytes: as unparsable as bad JSON
      return {}
    except OSError as e:  # e.g. a folder named lock.json
      raise ConfigError(
        f"Cannot read the workdir lock {self.path} ({e.strerror or e}); it must be a file that "
        "only jaxcls writes, so remove it."
      ) from None
    try:
      value = json.loads(text)
    except ValueError:
      return {}
    return value if isinstance(value, dict) else {}

  def _read_settled(self) -> dict | None:
    holder = self._read()
    if holder == {}:  # possibly caught between O_EXCL creation and its write
      time.sleep(_REREAD_AFTER_S)
      holder = self._read()
    return holder

  def _remove_if(self, token: str | None) -> None:
    """Removes the stale lock unless it changed since it was read (another run took it over meanwhile)."""
    current = self._read()
    if current is None or (current or {}).get("token") != token:
      return
    try:
      self.path.unlink()
    except FileNotFoundError:
      pass


def _prepare(workdir: epath.Path) -> None:
  """The workdir as a folder: created when missing; a one-line error when it is a file or cannot be created."""
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(
      f"The workdir {workdir} is a file; --workdir must be a folder (a new one, or one a run trained into)."
    )
  try:
    paths.makedirs(workdir, "workdir")  # local only: an object store has no folders to create
  except OSError as e:
    raise ConfigError(
      f"Cannot create the workdir {workdir} ({e.strerror or e}); --workdir must be a writable folder."
    ) from None


@contextlib.contextmanager
def locked(workdir: paths.PathLike, *, is_main: bool = True, num_processes: int = 1) -> Iterator[Any]:
  """Holds the workdir lock on process 0 while the block runs (released on any exit, never someone else's).

  With several processes, all of them learn whether process 0 got the lock (one broadcast), so a busy workdir
  stops every process instead of leaving the others waiting in a collective.
  """
  lock = WorkdirLock(workdir) if is_main else None
  error = None
  if lock is not None:
    try:
      lock.acquire()
    except Exception as e:  # pylint: disable=broad-except  (re-raised below, after the other processes know)
      error = e
  if num_processes > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      raise WorkdirBusyError(f"Process 0 could not take the workdir lock {lock_path(workdir)}; its error says why.")
  if error is not None:
    raise error
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
