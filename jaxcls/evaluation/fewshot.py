"""Few-shot linear and k-NN evaluation of a model's penultimate features, periodically in training or on a workdir.

For n shots and seed s, n training examples per class are drawn (nested: the 1-shot set is inside the 5-shot
set of the same seed), a closed-form ridge regression with one-vs-all targets in {-1, +1} is fitted to their
standardised features (as big_vision's few-shot evaluator does; the intercept is not penalised), and its argmax
accuracy on the eval split is measured; mean and spread over the seeds are reported. k-NN accuracy uses every
cached training example. The ridge classifier is scikit-learn's
`make_pipeline(StandardScaler(), RidgeClassifier(alpha=l2_reg))` in closed form; tests check they agree.

The settings and their defaults have one home, the `config.fewshot` section of `jaxcls.config.base`; the
training evaluator, `evaluate_workdir` and `python -m jaxcls.fewshot` all read them from there.
"""

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxcls.core.errors import ConfigError, DataError
from jaxcls.evaluation import evaluators, knn
from jaxcls.store import workdir as workdir_lib

RESULT_NAME = workdir_lib.FEWSHOT_NAME  # DIR/fewshot.json, named by store.workdir


def default_config() -> ml_collections.ConfigDict:
  """The `config.fewshot` section with its defaults (jaxcls.config.base, the one place they are written)."""
  from jaxcls.config import base as config_base  # pylint: disable=g-import-not-at-top

  return config_base.get_base_config().fewshot


def _defaults() -> dict[str, Any]:
  return default_config().to_dict()


# ---------------------------------------------------------------------------------------------------------------
# The math: ridge classifier, shot sampling, accuracies. Plain numpy (float64), host-side.


@dataclasses.dataclass(frozen=True)
class RidgeClassifier:
  """A fitted one-vs-all ridge classifier: scores = ((x - mean) / scale) @ weights + bias."""

  mean: np.ndarray  # [D]
  scale: np.ndarray  # [D]
  weights: np.ndarray  # [D, C]
  bias: np.ndarray  # [C]

  def scores(self, features: np.ndarray) -> np.ndarray:
    """The class scores [N, C] of features [N, D] (float64), standardised with the fitted mean and scale."""
    return ((np.asarray(features, np.float64) - self.mean) / self.scale) @ self.weights + self.bias

  def predict(self, features: np.ndarray) -> np.ndarray:
    """The class of the highest score, per example."""
    return self.scores(features).argmax(-1)


def fit_ridge(features: np.ndarray, labels: np.ndarray, num_classes: int, l2_reg: float) -> RidgeClassifier:
  """Closed-form ridge regression of {-1, +1} one-vs-all targets on standardised features.

  The intercept is fitted by centring (so it is not penalised). With fewer examples than dimensions, as in
  few-shot, the dual form solves an N x N system instead of a D x D one; both give the same weights.
  """
  if not l2_reg > 0:
    raise ConfigError(f"fewshot.l2_reg={l2_reg} must be positive (it keeps the few-shot system solvable).")
  x = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  mean = x.mean(axis=0)
  std = x.std(axis=0)
  scale = np.where(std > 1e-10 * (1.0 + np.abs(mean)), std, 1.0)  # constant features stay put, as in sklearn
  z = (x - mean) / scale
  targets = 2.0 * np.eye(num_classes)[labels] - 1.0
  z_mean, t_mean = z.mean(axis=0), targets.mean(axis=0)
  zc, tc = z - z_mean, targets - t_mean
  n, d = zc.shape
  if n >= d:
    weights = np.linalg.solve(zc.T @ zc + l2_reg * np.eye(d), zc.T @ tc)
  else:
    weights = zc.T @ np.linalg.solve(zc @ zc.T + l2_reg * np.eye(n), tc)
  return RidgeClassifier(mean=mean, scale=scale, weights=weights, bias=t_mean - z_mean @ weights)


def sample_shots(labels: np.ndarray, shots: Sequence[int], seed: int, num_classes: int) -> dict[int, np.ndarray]:
  """{n: sorted indices of n examples of every class}, nested across n, a pure function of (labels, seed)."""
  labels = np.asarray(labels)
  counts = np.bincount(labels, minlength=num_classes)
  most = max(shots)
  if counts.min() < most:
    short = [c for c in range(num_classes) if counts[c] < most]
    raise DataError(
      f"{most}-shot evaluation needs {most} training examples of every class, but class(es) "
      f"{short[:10]} have only {counts[short[:10]].tolist()} among the {len(labels)} cached; raise "
      "fewshot.train_examples (0 = a whole epoch) or use fewer shots."
    )
  rng = np.random.default_rng(seed)
  order = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
  return {n: np.sort(np.concatenate([o[:n] for o in order])) for n in shots}


def check_labels(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
  """The labels as one class index per example in [0, num_classes); a DataError otherwise (e.g. multi-label)."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(
      f"Few-shot and k-NN evaluation need one integer class label per {what} example; got labels of "
      f"shape {labels.shape} and dtype {labels.dtype} (multi-label sets are not supported)."
    )
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise DataError(f"{what} labels range over [{labels.min()}, {labels.max()}], outside [0, {num_classes}).")
  return labels


def check_settings(shots: Sequence[int], seeds: int, knn_k: Sequence[int], knn_metric: str) -> None:
  """Refuses settings that cannot run (before any feature is extracted), naming the fewshot key."""
  if not shots and not knn_k:
    raise ConfigError("Few-shot evaluation has nothing to do: give fewshot.shots and/or fewshot.knn_k.")
  if any(int(n) < 1 for n in shots):
    raise ConfigError(f"fewshot.shots={tuple(shots)} must all be positive integers, e.g. (1, 5, 10, 25).")
  if shots and int(seeds) < 1:
    raise ConfigError(f"fewshot.seeds={seeds} must be at least 1.")
  if any(int(k) < 1 for k in knn_k):
    raise ConfigError(f"fewshot.knn_k={tuple(knn_k)} must all be positive integers, e.g. (1, 10).")
  if knn_metric not in knn.METRICS:
    raise ConfigError(f"fewshot.knn_metric={knn_metric!r} is unknown; use one of {knn.METRICS}.")


def evaluate_features(
  train_features,
  train_labels,
  eval_features,
  eval_labels,
  *,
  num_classes: int,
  shots: Sequence[int] | None = None,
  seeds: int | None = None,
  l2_reg: float | None = None,
  knn_k: Sequence[int] | None = None,
  knn_metric: str | None = None,
  seed: int = 0,
) -> dict[str, Any]:
  """Ridge few-shot accuracies per shot count and seed, and k-NN accuracies, from precomputed features.

  A setting left None takes its `config.fewshot` default. Returns {"shots": {n: {"mean", "std", "per_seed":
  [...]}}, "knn": {k: accuracy}}. The std is over seeds with ddof=1 (0 for one seed). Shot draw i uses
  `np.random.default_rng([seed, i])`.
  """
  d = _defaults()
  shots = d["shots"] if shots is None else shots
  seeds = d["seeds"] if seeds is None else seeds
  l2_reg = d["l2_reg"] if l2_reg is None else l2_reg
  knn_k = d["knn_k"] if knn_k is None else knn_k
  knn_metric = d["knn_metric"] if knn_metric is None else knn_metric
  check_settings(shots, seeds, knn_k, knn_metric)
  train_labels = check_labels(train_labels, num_classes, "training")
  eval_labels = check_labels(eval_labels, num_classes, "eval")
  if len(eval_labels) == 0:
    raise DataError("The eval split is empty; few-shot accuracy needs eval examples.")
  shots = sorted({int(n) for n in shots})
  per_shot = {n: [] for n in shots}
  for i in range(int(seeds) if shots else 0):
    draws = sample_shots(train_labels, shots, [seed, i], num_classes)
    for n, idx in draws.items():
      ridge = fit_ridge(train_features[idx], train_labels[idx], num_classes, l2_reg)
      per_shot[n].append(float(np.mean(ridge.predict(eval_features) == eval_labels)))
  results = {"shots": {}, "knn": {}}
  for n, accs in per_shot.items():
    results["shots"][n] = {
      "mean": float(np.mean(accs)),
      "std": float(np.std(accs, ddof=1) if len(accs) > 1 else 0.0),
      "per_seed": accs,
    }
  for k in sorted({int(k) for k in knn_k}):
    scores = knn.knn_scores(
      train_features, train_labels, eval_features, k=k, num_classes=num_classes, metric=knn_metric
    )
    results["knn"][k] = float(np.mean(scores.argmax(-1) == eval_labels))
  return results


def scalars(results: Mapping[str, Any], prefix: str = "fewshot/") -> dict[str, float]:
  """Flat metric names: 'fewshot/5shot_mean', 'fewshot/5shot_std', 'fewshot/knn10'."""
  out = {}
  for n, r in results["shots"].items():
    out[f"{prefix}{n}shot_mean"] = r["mean"]
    out[f"{prefix}{n}shot_std"] = r["std"]
  for k, acc in results["knn"].items():
    out[f"{prefix}knn{k}"] = acc
  return out


# ---------------------------------------------------------------------------------------------------------------
# Data: a fixed set of training batches (no augmentation) and the eval split.


def uniform_sampling(dataset):
  """The dataset with uniform sampling: class-balanced draws would repeat examples of rare classes."""
  if getattr(dataset, "sampling", "uniform") != "uniform" and hasattr(dataset, "with_sampling"):
    return dataset.with_sampling("uniform")
  return dataset


def train_batches(dataset, batch_size: int, max_examples: int, seed: int) -> Iterator[dict]:
  """The first ceil(max_examples / batch_size) batches of epoch 0 of the shuffled training stream (at most one
  epoch; max_examples=0 = the whole epoch, i.e. the split rounded down to whole batches)."""
  per_epoch = dataset.steps_per_epoch(batch_size)
  num = per_epoch if max_examples <= 0 else min(per_epoch, math.ceil(max_examples / batch_size))
  stream = uniform_sampling(dataset).train_batches(batch_size, start_step=0, seed=seed)
  for _ in range(num):
    yield next(stream)


class FewShotEvaluator(evaluators.Evaluator):
  """Few-shot ridge and k-NN accuracies of the current parameters, for the training loop.

  The training batches are read once, at construction, and kept on the host (uint8, about
  `train_examples` x image bytes), so every evaluation sees the same examples and the same shot draws; the eval
  split is read again each time, exactly (padding masked out).

  Call it with the parameters to evaluate: `evaluator(eval_params(state), state.batch_stats)` returns
  {'fewshot/1shot_mean': ..., 'fewshot/1shot_std': ..., 'fewshot/knn10': ..., ...}.
  """

  def __init__(
    self,
    fewshot_config: Mapping[str, Any],
    model,
    dataset,
    mesh,
    dtype: str,
    *,
    batch_size: int | None = None,
    seed: int = 0,
    every: int = 0,
    prefix: str = "fewshot/",
  ):
    from jaxcls.core import parallel
    from jaxcls.evaluation import features  # pylint: disable=g-import-not-at-top

    given = fewshot_config.to_dict() if hasattr(fewshot_config, "to_dict") else dict(fewshot_config)
    defaults = _defaults()
    unknown = sorted(set(given) - set(defaults))
    if unknown:
      raise ConfigError(f"Unknown fewshot config key(s) {unknown}; valid: {sorted(defaults)}.")
    self.config = c = dict(defaults, **given)
    self.prefix = prefix
    check_settings(c["shots"], c["seeds"], c["knn_k"], c["knn_metric"])
    self.batch_size = int(c["batch_size"] or batch_size or 0)
    if self.batch_size < 1:
      raise ConfigError("fewshot.batch_size is 0 and no eval batch size was given; set fewshot.batch_size.")
    parallel.check_batch_size(self.batch_size, mesh, "fewshot.batch_size")
    self.dataset, self.seed = dataset, int(seed)
    self.num_classes = dataset.info.num_classes
    self.extractor = features.FeatureExtractor(
      model, mean=dataset.info.mean, std=dataset.info.std, dtype=dtype, mesh=mesh
    )
    self._train = list(train_batches(dataset, self.batch_size, int(c["train_examples"]), self.seed))
    # Check now, not at the first evaluation, that every class has enough examples and k fits.
    labels = np.concatenate(
      [parallel.to_host(parallel.to_global({"label": b["label"]}, mesh))["label"] for b in self._train]
    )
    labels = check_labels(labels, self.num_classes, "training")
    if c["shots"]:
      sample_shots(labels, [int(n) for n in c["shots"]], 0, self.num_classes)
    if c["knn_k"] and max(c["knn_k"]) > len(labels):
      raise ConfigError(
        f"fewshot.knn_k={tuple(c['knn_k'])} exceeds the {len(labels)} cached training examples; "
        "lower k or raise fewshot.train_examples."
      )
    self.num_train_examples = len(labels)
    self.every = int(c["every_steps"]) or int(every)  # its own cadence, else the loop's evaluation cadence

  def results(self, params, batch_stats=None) -> dict[str, Any]:
    """{"shots": ..., "knn": ...} of these variables (see `evaluate_features`)."""
    variables = {"params": params, "batch_stats": batch_stats or {}}
    train_features, train_labels = self.extractor(variables, iter(self._train))
    eval_features, eval_labels = self.extractor(variables, self.dataset.eval_batches(self.batch_size))
    c = self.config
    return evaluate_features(
      train_features,
      train_labels,
      eval_features,
      eval_labels,
      num_classes=self.num_classes,
      shots=c["shots"],
      seeds=c["seeds"],
      l2_reg=c["l2_reg"],
      knn_k=c["knn_k"],
      knn_metric=c["knn_metric"],
      seed=self.seed,
    )

  def __call__(self, params, batch_stats=None) -> dict[str, float]:
    """The accuracies of `results` as flat scalars under `prefix` ('fewshot/' or 'knn/')."""
    return scalars(self.results(params, batch_stats), self.prefix)


def build_evaluator(config, model, dataset, mesh, eval_every: int = 0, *, knn_only: bool = False) -> FewShotEvaluator:
  """The evaluator `config.fewshot` describes; it runs every `fewshot.every_steps`, or with each evaluation.

  `knn_only` (the 'knn' evaluator) measures only the k-NN accuracies, logged as `knn/knn<k>`.
  """
  section = (config.get("fewshot") or ml_collections.ConfigDict()).to_dict()
  if knn_only:
    section["shots"] = ()
  return FewShotEvaluator(
    section,
    model,
    dataset,
    mesh,
    config.dtype,
    batch_size=config.eval_batch_size or config.batch_size,
    seed=config.seed,
    every=eval_every,
    prefix="knn/" if knn_only else "fewshot/",
  )


# ---------------------------------------------------------------------------------------------------------------
# The command.


def evaluate_workdir(
  workdir: str,
  *,
  step=None,
  shots: Sequence[int] | None = None,
  seeds: int | None = None,
  knn_k: Sequence[int] | None = None,
  knn_metric: str | None = None,
  l2_reg: float | None = None,
  train_examples: int = 0,
  batch_size: int = 0,
) -> dict[str, Any]:
  """Few-shot and k-NN accuracies of checkpoint `step` (default: latest) of `workdir`; writes DIR/fewshot.json.

  A setting left None takes its `config.fewshot` default; `train_examples=0` uses the whole training split.
  """
  from jaxcls import data  # pylint: disable=g-import-not-at-top
  from jaxcls.core import parallel, paths
  from jaxcls.evaluation import features
  from jaxcls.store import restore

  d = _defaults()
  shots = tuple(d["shots"] if shots is None else shots)
  seeds = int(d["seeds"] if seeds is None else seeds)
  knn_k = tuple(d["knn_k"] if knn_k is None else knn_k)
  knn_metric = d["knn_metric"] if knn_metric is None else knn_metric
  l2_reg = float(d["l2_reg"] if l2_reg is None else l2_reg)
  check_settings(shots, seeds, knn_k, knn_metric)
  if batch_size < 0:
    raise ConfigError(f"--batch_size={batch_size} must be 0 (the config's eval batch size) or more.")
  restored = restore.restore(workdir, step)
  config = restored.config
  config.dataset.train_crop = "resize"  # no random host crops: the features of an example are fixed
  if not config.dataset.cache_dir and not paths.is_remote(restored.workdir):  # where training keeps it
    config.dataset.cache_dir = workdir_lib.cache_dir(restored.workdir)
  dataset = data.build(config)
  if dataset.info.num_classes != restored.info.num_classes:
    raise DataError(
      f"The dataset now has {dataset.info.num_classes} classes but the model in {workdir} was "
      f"trained on {restored.info.num_classes}; point the config at the training data."
    )
  mesh = parallel.make_mesh()
  given = batch_size
  batch_size = int(batch_size or config.eval_batch_size or config.batch_size)
  source = "--batch_size" if given else "eval_batch_size" if config.eval_batch_size else "batch_size"
  parallel.check_batch_size(batch_size, mesh, source)
  info = restored.info
  extractor = features.FeatureExtractor(restored.model, mean=info.mean, std=info.std, dtype=config.dtype, mesh=mesh)
  variables = parallel.replicate(restored.variables, mesh)
  train_features, train_labels = extractor(variables, train_batches(dataset, batch_size, train_examples, config.seed))
  eval_features, eval_labels = extractor(variables, dataset.eval_batches(batch_size))
  results = evaluate_features(
    train_features,
    train_labels,
    eval_features,
    eval_labels,
    num_classes=info.num_classes,
    shots=shots,
    seeds=seeds,
    l2_reg=l2_reg,
    knn_k=knn_k,
    knn_metric=knn_metric,
    seed=config.seed,
  )
  final = {
    "step": restored.step,
    "model": config.model.name,
    "split": config.dataset.eval_split,
    "feature_dim": int(train_features.shape[1]),
    "num_train_examples": int(len(train_labels)),
    "num_eval_examples": int(len(eval_labels)),
    "seeds": int(seeds),
    "l2_reg": float(l2_reg),
    "knn_metric": knn_metric,
    "shots": {str(n): r for n, r in results["shots"].items()},
    "knn": {str(k): acc for k, acc in results["knn"].items()},
    "metrics": scalars(results),
  }
  if parallel.is_main_process():
    paths.write_text(workdir_lib.fewshot_path(restored.workdir), json.dumps(final, indent=1))
  return final


def table(final: Mapping[str, Any]) -> str:
  """The results as a small text table."""
  lines = [
    f"{final['model']} at step {final['step']}: {final['feature_dim']}-d features, "
    f"{final['num_train_examples']} train / {final['num_eval_examples']} {final['split']} examples",
    f"{'evaluator':<26}{'accuracy':>10}{'std':>9}",
  ]
  for n, r in final["shots"].items():
    name = f"ridge {n}-shot ({final['seeds']} seeds)"
    lines.append(f"{name:<26}{r['mean']:>10.4f}{r['std']:>9.4f}")
  for k, acc in final["knn"].items():
    name = f"k-NN k={k} ({final['knn_metric']})"
    lines.append(f"{name:<26}{acc:>10.4f}")
  return "\n".join(lines)
