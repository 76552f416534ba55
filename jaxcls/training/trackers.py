"""Experiment trackers as writers: 'mlflow' and 'wandb' in `config.writers`.

Each is a `writers.Writer`: the hyper-parameters that apply as flat params (`hparams.applicable`), every scalar
at its step, and at `close()` (the end of the run) the report, the plots and config.json as files of the run.
The packages are imported only when a config names the writer; a missing one is one ConfigError with the pip
command. A resumed run (same workdir) continues the tracker run it started, whose id is kept in the workdir.
"""

import json
import logging as std_logging
import os
import time
from collections.abc import Mapping
from typing import Any

from jaxcls.core import paths
from jaxcls.core.errors import ConfigError
from jaxcls.store import workdir as workdir_lib
from jaxcls.training import hparams as hparams_lib
from jaxcls.training.writers import Writer, to_float

MLFLOW_DB_NAME = "mlflow.db"  # the default store: sqlite, inside the workdir
MLFLOW_ARTIFACTS_NAME = "mlflow-artifacts"  # its artifact folder
MLFLOW_RUN_NAME = "mlflow_run.json"  # {tracking_uri, run_id}: a resumed run continues this run
WANDB_DIR_NAME = "wandb"  # wandb's own run folders (offline-run-*/ ...)
WANDB_RUN_NAME = "wandb_run.json"  # {run_id, project}
# What a finished run sends as files: the report, the resolved config, the figures.
RUN_FILES = (workdir_lib.REPORT_JSON_NAME, workdir_lib.REPORT_MD_NAME, workdir_lib.CONFIG_NAME)


def _section(config: Any, name: str) -> Mapping[str, Any]:
  """`config.<name>` as a dict ({} without a config, or for a config saved before the section existed)."""
  if config is None:
    return {}
  section = config.get(name, None) if hasattr(config, "get") else getattr(config, name, None)
  if section is None:
    return {}
  return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def _import(name: str, pip: str, writer: str):
  try:
    return __import__(name)
  except ImportError as e:
    raise ConfigError(
      f"config.writers names {writer!r}, which needs the {name} package ({e}); install it with "
      f"`pip install {pip}` or remove {writer!r} from config.writers."
    ) from e


def _read_json(path) -> dict[str, Any]:
  try:
    return json.loads(paths.read_text(path)) if path.exists() else {}
  except (OSError, ValueError):
    return {}


def _local(workdir, writer: str, what: str) -> str:
  if paths.is_remote(workdir):
    raise ConfigError(
      f"The {writer!r} writer keeps {what} inside the workdir by default, which cannot be on an "
      f"object store ({workdir}); set config.{writer}.tracking_uri (or its environment variable)."
    )
  return os.fspath(workdir)


class MlflowWriter(Writer):
  """One MLflow run per workdir, in the store `config.mlflow.tracking_uri` or $MLFLOW_TRACKING_URI names, or by
  default `sqlite:///DIR/mlflow.db` with its artifacts in DIR/mlflow-artifacts/.

  Read it back with `mlflow.MlflowClient("sqlite:///DIR/mlflow.db")` or `mlflow ui --backend-store-uri ...`.
  """

  def __init__(self, workdir, resume_step: int | None, config: Any = None):
    mlflow = _import("mlflow", "mlflow", "mlflow")
    for name in ("mlflow", "alembic"):  # their INFO lines (creating tables, ...) stay out of the run's console
      std_logging.getLogger(name).setLevel(std_logging.WARNING)
    from mlflow.entities import Metric, Param  # pylint: disable=g-import-not-at-top

    self._metric, self._param = Metric, Param
    self._workdir = workdir
    settings = _section(config, "mlflow")
    uri = settings.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI", "")
    artifacts = None
    if not uri:
      local = _local(workdir, "mlflow", "its sqlite store")
      uri = "sqlite:///" + os.path.join(local, MLFLOW_DB_NAME)
      artifacts = "file://" + os.path.join(local, MLFLOW_ARTIFACTS_NAME)
    self.tracking_uri = uri
    name = settings.get("experiment") or "jaxcls"
    try:
      self.client = mlflow.MlflowClient(tracking_uri=uri)
      experiment = self.client.get_experiment_by_name(name)
      experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else self.client.create_experiment(name, artifact_location=artifacts)
      )
    except mlflow.exceptions.MlflowException as e:  # an unknown scheme, a store it cannot open
      raise ConfigError(
        f"The 'mlflow' writer cannot use the tracking URI {uri!r} ({str(e).splitlines()[0][:200]}); "
        "set config.mlflow.tracking_uri or MLFLOW_TRACKING_URI to a store it can open "
        "(e.g. sqlite:///PATH/mlflow.db), or leave both unset for DIR/mlflow.db."
      ) from e
    record = _read_json(workdir / MLFLOW_RUN_NAME)
    if resume_step and record.get("tracking_uri") == uri and record.get("run_id"):
      self.run_id = record["run_id"]
      self.client.update_run(self.run_id, status="RUNNING")
    else:
      run = self.client.create_run(
        experiment_id,
        run_name=os.path.basename(os.fspath(workdir).rstrip("/")),
        tags={"jaxcls.workdir": os.fspath(workdir)},
      )
      self.run_id = run.info.run_id
      paths.write_text(workdir / MLFLOW_RUN_NAME, json.dumps({"tracking_uri": uri, "run_id": self.run_id}) + "\n")
    self._closed = False

  def write_scalars(self, step, scalars):
    """Logs the scalars as MLflow metrics at `step`, at most 1,000 per batch (MLflow's limit)."""
    now = int(time.time() * 1000)
    metrics = [self._metric(key, to_float(value), now, int(step)) for key, value in scalars.items()]
    for i in range(0, len(metrics), 1000):  # MLflow takes at most 1,000 metrics per batch
      self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000], synchronous=True)

  def write_hparams(self, hparams):
    """Logs the keys that apply to this run as MLflow params (values cut to 6,000 characters), 100 per batch."""
    params = [self._param(key, str(value)[:6000]) for key, value in hparams_lib.applicable(hparams).items()]
    for i in range(0, len(params), 100):  # and at most 100 params
      self.client.log_batch(self.run_id, params=params[i : i + 100], synchronous=True)

  def write_texts(self, step, texts):
    """Logs each text as the run artifact texts/<key>_<step>.txt."""
    for key, text in texts.items():
      self.client.log_text(self.run_id, text, f"texts/{key.replace('/', '_')}_{int(step)}.txt")

  def close(self):
    """Sends report.json, report.md, config.json and plots/ as artifacts and marks the run finished."""
    if self._closed:
      return
    self._closed = True
    if not paths.is_remote(self._workdir):
      local = os.fspath(self._workdir)
      for name in RUN_FILES:
        if os.path.exists(os.path.join(local, name)):
          self.client.log_artifact(self.run_id, os.path.join(local, name))
      plots = os.path.join(local, workdir_lib.PLOTS_NAME)
      if os.path.isdir(plots) and os.listdir(plots):
        self.client.log_artifacts(self.run_id, plots, workdir_lib.PLOTS_NAME)
    self.client.set_terminated(self.run_id)


class WandbWriter(Writer):
  """One W&B run per workdir, its files in DIR/wandb/; offline (nothing leaves the machine) when WANDB_MODE=offline.

  `config.wandb.project` and `config.wandb.entity` name where it goes; wandb's console capture is off, so the
  run's output stays as jaxcls writes it.
  """

  def __init__(self, workdir, resume_step: int | None, config: Any = None):
    wandb = self._wandb = _import("wandb", "wandb", "wandb")
    std_logging.getLogger("wandb").setLevel(std_logging.WARNING)
    self._workdir = workdir
    local = _local(workdir, "wandb", "its run folder")
    settings = _section(config, "wandb")
    record = _read_json(workdir / WANDB_RUN_NAME)
    run_id = record.get("run_id") if resume_step else None
    os.makedirs(os.path.join(local, WANDB_DIR_NAME), exist_ok=True)
    try:
      self.run = wandb.init(
        project=settings.get("project") or "jaxcls",
        entity=settings.get("entity") or None,
        dir=local,
        id=run_id,
        resume="allow" if run_id else None,
        name=os.path.basename(local.rstrip("/")),
        settings=wandb.Settings(console="off", silent=True, save_code=False, disable_git=True),
      )
    except wandb.errors.UsageError as e:  # no API key, a bad entity: the user's to fix, in one line
      raise ConfigError(
        f"The 'wandb' writer could not start a run ({e}); log in with `wandb login` (or set "
        "WANDB_API_KEY), or set WANDB_MODE=offline to keep the run in DIR/wandb/."
      ) from e
    self.run_id = self.run.id
    paths.write_text(workdir / WANDB_RUN_NAME, json.dumps({"run_id": self.run_id, "project": self.run.project}) + "\n")
    self._closed = False

  def write_scalars(self, step, scalars):
    """Logs the scalars, as floats, to the W&B run at `step`."""
    self.run.log({key: to_float(value) for key, value in scalars.items()}, step=int(step))

  def write_hparams(self, hparams):
    """Sets the keys that apply to this run as the W&B run's config, replacing earlier values."""
    self.run.config.update(hparams_lib.applicable(hparams), allow_val_change=True)

  def write_texts(self, step, texts):
    """Logs the texts to the W&B run at `step`."""
    self.run.log(dict(texts), step=int(step))

  def close(self):
    """Saves report.json, report.md, config.json and the plots with the run, then finishes it."""
    if self._closed:
      return
    self._closed = True
    local = os.fspath(self._workdir)
    names = [n for n in RUN_FILES if os.path.exists(os.path.join(local, n))]
    plots = os.path.join(local, workdir_lib.PLOTS_NAME)
    if os.path.isdir(plots):
      names += [os.path.join(workdir_lib.PLOTS_NAME, n) for n in sorted(os.listdir(plots))]
    for name in names:
      self.run.save(os.path.join(local, name), base_path=local, policy="now")
    self.run.finish()
    self._wandb.teardown()  # finish() returns before wandb-core has written the log; teardown waits for it
