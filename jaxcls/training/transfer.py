"""Transfer learning: start a run from another model's weights and train its backbone slower, or not at all.

`config.init_from` names the weights: a jaxcls workdir (its latest checkpoint, or `init_from_step`), one of its
`checkpoints/<step>` folders, or a `.msgpack`/`.npz` file from `python -m jaxcls.convert` (torchvision weights).
They apply only when the run's workdir has no checkpoint of its own, so a resumed fine-tune continues from its own
state; `init_from` is therefore not part of the checkpoint fingerprint.

The *head* is the last layer(s) whose parameter shapes depend on the class count: found by building the model for
two class counts, so every model family is covered without a list of layer names (`config.head_modules` overrides
it). Everything else is the *backbone*. The head is re-initialised when the class count (or, from a workdir, the
class names) differ, as `config.init_head` says; `config.optimizer.backbone_lr_factor` scales the backbone's
learning rate, and 0 freezes it: no update at all (see `optim.build_optimizer`), and the training forward pass runs
in inference mode, so batch-norm statistics stay those of the pretrained model (dropout is then off too).
"""

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from jaxcls import models
from jaxcls.core import parallel, paths
from jaxcls.core.errors import CheckpointError, ConfigError
from jaxcls.models import pretrained
from jaxcls.models import torchvision as convert
from jaxcls.store import restore
from jaxcls.store import workdir as workdir_lib

HEAD_POLICIES = ("auto", "keep", "reinit")
WEIGHT_FILES = (".msgpack", ".npz")

ModulePath = tuple[str, ...]


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


def _flat(tree: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
  return {_names(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(dict(tree))}


def _size(leaves) -> int:
  return int(sum(np.prod(np.shape(x), dtype=np.int64) for x in leaves))


def in_head(path: Sequence[str], head: Sequence[ModulePath]) -> bool:
  """Whether the parameter at `path` (inside 'params' or 'batch_stats') belongs to one of the head modules."""
  return any(tuple(path[: len(h)]) == h for h in head)


def find_head(model_config, num_outputs: int, image_shape) -> tuple[ModulePath, ...]:
  """The modules holding the parameters whose shapes change with the number of outputs (each model's last Dense)."""
  a, b = (
    convert.abstract_variables(models.build(model_config, n), tuple(image_shape))["params"]
    for n in (num_outputs, num_outputs + 1)
  )
  heads = sorted({path[:-1] for (path, x), y in zip(_flat(a).items(), _flat(b).values()) if x.shape != y.shape})
  if not heads:
    raise ConfigError(
      f"Model {model_config['name']!r} has no layer whose shape depends on the class count; name "
      "its head with config.head_modules, e.g. ('head',)."
    )
  return tuple(heads)


def resolve_head(config, num_outputs: int, image_shape) -> tuple[ModulePath, ...]:
  """`config.head_modules` ('/'-separated module paths) checked against the model, or the detected head."""
  if not config.head_modules:
    return find_head(config.model, num_outputs, image_shape)
  model = models.build(config.model, num_outputs)
  params = _flat(convert.abstract_variables(model, tuple(image_shape))["params"])
  head = tuple(tuple(str(name).strip("/").split("/")) for name in config.head_modules)
  for module in head:
    if not any(path[: len(module)] == module for path in params):
      modules = sorted({path[0] for path in params})
      raise ConfigError(
        f"config.head_modules names {'/'.join(module)!r}, which model {config.model.name!r} does "
        f"not have; its top-level modules are: {', '.join(modules)}."
      )
  return head


@dataclasses.dataclass(frozen=True)
class Source:
  """Weights to start from, and what is known of the run that produced them (None for converted files)."""

  description: str
  variables: dict  # {'params': ..., 'batch_stats': ...} of host arrays
  class_names: tuple[str, ...] | None = None
  model_config: dict | None = None
  image_shape: tuple[int, ...] | None = None


def _workdir_and_step(path: str, step: int | str | None) -> tuple[str, int | str | None]:
  """(workdir, step, 'best' or None for the latest) for a workdir or one of its checkpoints/<step> folders."""
  name, parent = os.path.basename(path), os.path.dirname(path)
  if name.isdigit() and os.path.basename(parent) == workdir_lib.CHECKPOINTS_NAME:
    if step is not None and step != int(name):
      raise ConfigError(
        f"config.init_from={path!r} is the checkpoint of step {name} but config.init_from_step="
        f"{step!r}; set init_from_step=-1 or point init_from at the workdir."
      )
    return os.path.dirname(parent), int(name)
  if workdir_lib.is_workdir(path):
    return path, step
  raise ConfigError(
    f"config.init_from={path!r} is a folder but neither a jaxcls workdir (it has no config.json) "
    "nor a workdir's checkpoints/<step> folder."
  )


def read_source(path: str, step: int | str | None = -1) -> Source:
  """The weights `config.init_from` names (at `step`: an int, -1 / 'latest' or 'best'); ConfigError/CheckpointError
  say what is wrong with the path."""
  step = restore.parse_step(step, "config.init_from_step")
  path = os.fspath(paths.path(path, "config.init_from"))  # a local path or a gs:// URL
  if paths.path(path).is_dir():
    workdir, step = _workdir_and_step(path, step)
    run = restore.restore(workdir, step)
    return Source(
      description=f"workdir {workdir}, step {run.step}",
      variables=run.variables,
      class_names=tuple(run.info.class_names),
      model_config=run.config.model.to_dict(),
      image_shape=tuple(run.info.image_shape),
    )
  if not paths.path(path).is_file():
    raise ConfigError(
      f"config.init_from={path!r} does not exist; give a jaxcls workdir, one of its "
      "checkpoints/<step> folders, or a .msgpack/.npz file from `python -m jaxcls.convert`."
    )
  if not path.endswith(WEIGHT_FILES):
    raise ConfigError(
      f"config.init_from={path!r} is not a weights file jaxcls reads; use a .msgpack or .npz file "
      "written by `python -m jaxcls.convert`, or a jaxcls workdir."
    )
  if step is not None:
    raise ConfigError(
      f"config.init_from_step={step!r} applies to workdirs only; {path!r} is a weights file, so set init_from_step=-1."
    )
  try:
    variables = convert.load(path)
  except Exception as e:  # msgpack and zip readers raise many types on a damaged file
    raise CheckpointError(
      f"Cannot read the weights file {path!r} ({type(e).__name__}: {str(e)[:200]}); "
      "write it again with `python -m jaxcls.convert`."
    ) from e
  if not isinstance(variables, Mapping) or "params" not in variables:
    raise CheckpointError(f"{path!r} holds no 'params'; it was not written by `python -m jaxcls.convert`.")
  return Source(
    description=f"weights file {path}",
    variables={"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}},
  )


def pretrained_source(init_from: str, step, model_config, image_shape) -> Source:
  """The pretrained weights `init_from` names (hf-hub:, torchvision: or a .safetensors file; see models/pretrained)."""
  if restore.parse_step(step, "config.init_from_step") is not None:
    raise ConfigError(
      f"config.init_from_step={step!r} applies to workdirs only; {init_from!r} names pretrained "
      "weights, so set init_from_step=-1."
    )
  weights = pretrained.load(init_from, models.build(model_config, 1), image_shape, model_config["name"])
  size = weights.preprocessing.image_size if weights.preprocessing else None
  return Source(
    description=weights.description, variables=weights.variables, image_shape=(*size, image_shape[-1]) if size else None
  )


# The weights' preprocessing into the config's dataset keys left at their defaults, before the data is built.
with_weights_preprocessing = pretrained.with_preprocessing


def _model_differences(source: Source, model_config) -> str:
  if source.model_config is None:
    return ""
  now = dict(model_config)
  keys = sorted(set(source.model_config) | set(now))
  diffs = [
    f"model.{k}: {source.model_config.get(k)!r} in the source, {now.get(k)!r} now"
    for k in keys
    if _plain(source.model_config.get(k)) != _plain(now.get(k))
  ]
  return f" Config differences: {'; '.join(diffs)}." if diffs else ""


def _plain(value):
  return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass(frozen=True)
class Merged:
  """Variables holding the source's weights, and what happened to each part (for the log)."""

  variables: dict
  loaded_params: int
  loaded_stats: int
  head_kept: bool
  head_params: int
  reason: str


def merge(
  fresh: Mapping[str, Any],
  source: Source,
  head: Sequence[ModulePath],
  policy: str,
  class_names: Sequence[str],
  model_config,
) -> Merged:
  """`fresh` (a new model's variables) with the backbone, and the head if `policy` allows, from `source`.

  Every backbone leaf must be in the source with the same shape and the source must hold nothing else: a
  CheckpointError names the differing paths and shapes (and, from a workdir, the differing model config keys).
  """
  if policy not in HEAD_POLICIES:
    raise ConfigError(f"config.init_head={policy!r} is not valid; use one of {', '.join(HEAD_POLICIES)}.")
  fresh = {"params": fresh["params"], "batch_stats": fresh.get("batch_stats") or {}}
  wanted, given = _flat(fresh), _flat(source.variables)
  is_head = lambda path: in_head(path[1:], head)
  problems = []
  for path, leaf in wanted.items():
    if is_head(path):
      continue
    if path not in given:
      problems.append(f"{'/'.join(path)} {tuple(np.shape(leaf))} is missing from the source")
    elif np.shape(given[path]) != np.shape(leaf):
      problems.append(f"{'/'.join(path)} is {tuple(np.shape(given[path]))} in the source, {tuple(np.shape(leaf))} now")
  problems += [
    f"{'/'.join(p)} {tuple(np.shape(v))} is in the source only"
    for p, v in given.items()
    if p not in wanted and not is_head(p)
  ]
  if problems:
    more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
    image = f" The source saw images {source.image_shape}." if source.image_shape else ""
    raise CheckpointError(
      f"config.init_from ({source.description}) does not fit config.model "
      f"{model_config['name']!r}: {'; '.join(problems[:6])}{more}."
      f"{_model_differences(source, model_config)}{image} Use the source's model settings "
      "(and, for ViTs, its image size)."
    )

  head_paths = [p for p in wanted if is_head(p)]
  mismatched = [
    f"{'/'.join(p)} is {tuple(np.shape(given[p])) if p in given else 'missing'} in the source, "
    f"{tuple(np.shape(wanted[p]))} now"
    for p in head_paths
    if p not in given or np.shape(given[p]) != np.shape(wanted[p])
  ]
  same_classes = source.class_names is None or tuple(source.class_names) == tuple(class_names)
  if policy == "keep" and mismatched:
    raise ConfigError(
      f"config.init_head='keep' but the source's head does not fit: {'; '.join(mismatched)}; "
      "use init_head='auto' or 'reinit' for another class count."
    )
  keep = policy == "keep" or (policy == "auto" and not mismatched and same_classes)
  if keep:
    reason = "it fits the same classes" if policy == "auto" else "init_head='keep'"
  elif policy == "reinit":
    reason = "init_head='reinit'"
  elif mismatched:
    reason = f"its shape differs ({mismatched[0]})"
  else:
    reason = "the source was trained on other class names"
  pretrained = source.variables if keep else _without(source.variables, head)
  variables, skipped = convert.load_pretrained(fresh, pretrained)
  assert all(is_head(tuple(s.split("/"))) for s in skipped), skipped  # the checks above leave only the head
  loaded = [p for p in wanted if "/".join(p) not in skipped]
  return Merged(
    variables=variables,
    loaded_params=_size(wanted[p] for p in loaded if p[0] == "params"),
    loaded_stats=_size(wanted[p] for p in loaded if p[0] == "batch_stats"),
    head_kept=keep,
    head_params=_size(wanted[p] for p in head_paths if p[0] == "params"),
    reason=reason,
  )


def _without(tree: Mapping[str, Any], head: Sequence[ModulePath]) -> dict:
  """`{collection: tree}` without the leaves under the head modules."""
  out: dict = {}
  for path, leaf in _flat(tree).items():
    if in_head(path[1:], head):
      continue
    node = out
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = leaf
  return out


class InferenceModeForward:
  """A model whose training forward pass runs in inference mode: batch norm uses (and keeps) its running statistics.

  Used when the backbone is frozen, so the frozen part computes exactly what it computed for the source task and
  its statistics stay bit-identical; dropout and drop-path are off as well. Only `apply` is wrapped, which is all
  the train step calls.
  """

  def __init__(self, model):
    self.model = model

  def apply(self, variables, *args, train: bool = False, **kwargs):
    """The model's `apply` with `train` forced to False, so batch norm, dropout and drop-path stay in inference mode."""
    del train
    return self.model.apply(variables, *args, train=False, **kwargs)

  def __getattr__(self, name):
    return getattr(self.model, name)


class Plan:
  """What a run takes from `config.init_from` and how its parameter groups train; inert for a plain run."""

  def __init__(self, config, num_outputs: int, image_shape, class_names: Sequence[str]):
    self.init_from = str(config.init_from or "")
    self.init_from_step = restore.parse_step(config.init_from_step, "config.init_from_step")  # int|'best'|None
    self.policy = str(config.init_head)
    self.factor = float(config.optimizer.get("backbone_lr_factor", 1.0))
    self.class_names = tuple(class_names)
    self.image_shape = tuple(int(d) for d in image_shape)
    self.model_config = config.model
    if self.policy not in HEAD_POLICIES:
      raise ConfigError(f"config.init_head={self.policy!r} is not valid; use one of {', '.join(HEAD_POLICIES)}.")
    # The optimizer needs the head to treat it apart: a slower/frozen backbone, or Muon (the head is not Muon's).
    self.splits_head = self.factor != 1.0 or config.optimizer.name == "muon"
    needs_head = bool(self.init_from) or self.splits_head or bool(config.head_modules)
    self.head = resolve_head(config, num_outputs, image_shape) if needs_head else ()
    if self.factor != 1.0 and not self.init_from:
      logging.warning(
        "config.optimizer.backbone_lr_factor=%g without config.init_from: the backbone starts from random weights.",
        self.factor,
      )

  @property
  def frozen(self) -> bool:
    """Whether the backbone is frozen (backbone_lr_factor 0): it gets no update and runs in inference mode."""
    return self.factor == 0.0

  @property
  def is_head(self) -> Callable[[Sequence[str]], bool] | None:
    """The head predicate the optimizer needs to split parameters into groups (None: one group)."""
    if not self.splits_head:
      return None
    head = self.head
    return lambda path: in_head(path, head)

  def train_model(self, model):
    """The model the train step applies: in inference mode when the backbone is frozen."""
    return InferenceModeForward(model) if self.frozen else model

  def fingerprint(self) -> dict:
    """Extra checkpoint fingerprint keys: parameter groups change the optimizer state's structure."""
    if self.factor == 1.0:
      return {}
    return {
      "param_groups": {"backbone": "frozen" if self.frozen else "scaled", "head": ["/".join(h) for h in self.head]}
    }

  def describe_groups(self, params) -> str:
    """One log line: the backbone's and the head's parameter counts and how each group trains."""
    flat = _flat(params)
    head = _size(v for p, v in flat.items() if in_head(p, self.head))
    backbone = _size(flat.values()) - head
    if self.frozen:
      return (
        f"frozen backbone: {backbone:,} parameters get no update (batch norm in inference mode); "
        f"head {', '.join('/'.join(h) for h in self.head)}: {head:,} parameters trained."
      )
    return (
      f"backbone: {backbone:,} parameters at {self.factor:g} x the learning rate; head "
      f"{', '.join('/'.join(h) for h in self.head)}: {head:,} parameters at the full rate."
    )

  def load_into(self, state, tx, mesh):
    """`state` (freshly initialised) with the source's weights; fresh optimizer state and moving average."""
    if self.factor != 1.0:
      logging.info("Parameter groups: %s", self.describe_groups(parallel.to_host(state.params)))
    if not self.init_from:
      return state
    source = (
      pretrained_source(self.init_from, self.init_from_step, self.model_config, self.image_shape)
      if pretrained.handles(self.init_from)
      else read_source(self.init_from, self.init_from_step)
    )
    fresh = {"params": parallel.to_host(state.params), "batch_stats": parallel.to_host(state.batch_stats)}
    merged = merge(fresh, source, self.head, self.policy, self.class_names, self.model_config)
    head_names = ", ".join("/".join(h) for h in self.head)
    logging.info(
      "init_from %s: loaded %s parameters and %s batch-norm statistics; head %s (%s parameters) %s because %s.",
      source.description,
      f"{merged.loaded_params:,}",
      f"{merged.loaded_stats:,}",
      head_names,
      f"{merged.head_params:,}",
      "kept" if merged.head_kept else "re-initialised",
      merged.reason,
    )
    differences = _model_differences(source, self.model_config)
    if differences:
      logging.warning(
        "init_from: the weights fit, so they are loaded, but the model config differs from the source's.%s", differences
      )
    if source.image_shape and tuple(source.image_shape) != self.image_shape:
      logging.warning(
        "init_from: the source saw images %s, this run %s; the weights fit, but features learnt at "
        "one scale transfer less well to another.",
        source.image_shape,
        self.image_shape,
      )
    variables = parallel.replicate(merged.variables, mesh)
    params = variables["params"]
    opt_state = jax.jit(tx.init, out_shardings=parallel.replicated(mesh))(params)
    ema = jax.tree.map(lambda p: p.copy(), params) if state.ema_params else state.ema_params
    return state.replace(
      params=params,
      batch_stats=variables["batch_stats"] if state.batch_stats else {},
      opt_state=opt_state,
      ema_params=ema,
    )
