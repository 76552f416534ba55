"""A classical baseline run: features of every train and eval image, a linear SVM or k-NN, the standard report.

The data come from `jaxcls.data.build(config)`, so any source works; the eval split is scored with the multiclass
task's own `eval_sums` / `finalize`, so report.json and report.md carry the same keys as a CNN run. Scores become
the task's logits: the SVM's one-vs-rest decision values (so 'loss' is the cross entropy of their softmax), or
the log of k-NN vote fractions (floored at 1e-6, so 'loss' is the cross entropy of the vote fractions).

`classical.standardize='auto'` (the default) standardises the SVM's features and lets validation decide for k-NN
(`choose_standardize`): on digits pixels, standardising gives rare, nearly constant border pixels the weight of
the strokes, and 1-NN falls from 98.96% to 96.53% on a held-out fifth of the training split (98.33% to 97.78% on
the test split), while on other features it may help.
"""

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxcls import data, tasks
from jaxcls.classical import handcrafted, settings, svm
from jaxcls.core.errors import ConfigError
from jaxcls.data import split
from jaxcls.evaluation import knn
from jaxcls.evaluation import loop as eval_loop
from jaxcls.store import workdir as workdir_lib

_MIN_VOTE_FRACTION = 1e-6
VALIDATION_FRACTION = 0.2  # of the training split, held out to choose k-NN's standardisation
MODEL_FILE = workdir_lib.CLASSICAL_MODEL_NAME


def split_features(dataset, spec: handcrafted.FeatureSpec, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D], labels [N]) of every example of the dataset's eval split, each once, in order."""
  features, labels = [], []
  for batch in dataset.eval_batches(batch_size):
    mask = np.asarray(batch["mask"], bool)
    features.append(np.asarray(handcrafted.extract(jnp.asarray(batch["image"]), spec))[mask])
    labels.append(np.asarray(batch["label"])[mask])
  return np.concatenate(features), np.concatenate(labels)


def _check_supported(config) -> None:
  if config.task.type != "multiclass":
    raise ConfigError(f"The classical baseline supports task.type='multiclass' only, not {config.task.type!r}.")
  if jax.process_count() > 1:
    raise ConfigError("The classical baseline runs in one process; start it without jax.distributed.")
  if config.dataset.sampling != "uniform" or config.task.class_weights != "none":
    raise ConfigError(
      "dataset.sampling and task.class_weights do not apply to the classical baseline; leave them "
      "at 'uniform' and 'none'."
    )


def _training_split_dataset(config):
  """The source again, serving the training split as its (finite, exactly-once) eval stream."""
  train_config = ml_collections.ConfigDict(config.to_dict())
  train_config.dataset.eval_split = config.dataset.train_split
  return data.build(train_config)


def _knn_accuracy(options, num_classes, train_x, train_y, query_x, query_y) -> float:
  votes = knn.knn_scores(
    train_x,
    train_y,
    query_x,
    k=options.knn_k,
    num_classes=num_classes,
    metric=options.knn_metric,
    batch_size=options.batch_size,
  )
  return float(np.mean(np.argmax(votes, axis=1) == query_y))


def choose_standardize(
  options: settings.Settings, features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int
) -> tuple[bool, dict]:
  """(standardise?, what decided it for report.json) under `classical.standardize`.

  True or False is used as given. 'auto': the SVM standardises (its one C and L-BFGS assume features of one
  scale); k-NN holds out a seeded stratified fifth of the training split, scores the configured k and metric on
  raw and on standardised features (statistics of the other four fifths), and keeps the better; a tie keeps raw.
  """
  if options.standardize != "auto":
    return bool(options.standardize), {}
  if options.classifier != "knn":
    return True, {}
  try:
    keep, val = split.held_out_split(labels, VALIDATION_FRACTION, seed)
  except ConfigError:  # too few training examples to hold any out: standardise, as before 'auto'
    return True, {}
  raw = _knn_accuracy(options, num_classes, features[keep], labels[keep], features[val], labels[val])
  scaler = handcrafted.Standardizer.fit(features[keep])
  scaled = _knn_accuracy(options, num_classes, scaler(features[keep]), labels[keep], scaler(features[val]), labels[val])
  chosen = scaled > raw
  logging.info(
    "k-NN on a held-out fifth of the training split (%d images): accuracy %.4f on raw features, %.4f "
    "standardised; using %s features (classical.standardize='auto').",
    len(val),
    raw,
    scaled,
    "standardised" if chosen else "raw",
  )
  return chosen, {"standardize_validation": {"raw": raw, "standardized": scaled, "num_examples": int(len(val))}}


def model_name(options: settings.Settings) -> str:
  """report.json's model name: the classifier and its features, e.g. 'svm[hog+color]'."""
  return f"{options.classifier}[{'+'.join(options.spec.names)}]"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fits the configured classifier on the training split, evaluates the eval split, writes the report."""
  options = settings.check(config)
  _check_supported(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if not config.dataset.cache_dir:  # a folder source's decoded-array cache lives with the run, as in training
    config = ml_collections.ConfigDict(config.to_dict())
    config.dataset.cache_dir = workdir_lib.cache_dir(workdir)
  start = time.perf_counter()
  eval_dataset = data.build(config)
  train_dataset = _training_split_dataset(config)
  info = eval_dataset.info
  options.spec.check_image_shape(info.image_shape)
  logging.info(
    "Data: %d train / %d eval examples, %d classes, images %s; features %s (%d values).",
    info.num_train,
    info.num_eval,
    info.num_classes,
    info.image_shape,
    ",".join(options.spec.names),
    options.spec.num_features(info.image_shape),
  )

  t0 = time.perf_counter()
  train_x, train_y = split_features(train_dataset, options.spec, options.batch_size)
  standardize, choice = choose_standardize(
    options, train_x, train_y, info.num_classes, int(config.dataset.split_seed) + 2
  )
  scaler = handcrafted.Standardizer.fit(train_x) if standardize else None
  if scaler is not None:
    train_x = scaler(train_x)
  feature_seconds = time.perf_counter() - t0
  fit_info = {"standardized": standardize, **choice}
  t0 = time.perf_counter()
  if options.classifier == "svm":
    model = svm.fit(
      train_x, train_y, info.num_classes, c=options.svm_c, max_iter=options.svm_max_iter, tol=options.svm_tol
    )
    fit_info = {"svm_iterations": model.iterations, "svm_objective": model.objective}
    logging.info("SVM: %d L-BFGS iterations, objective %.6g.", model.iterations, model.objective)
  fit_seconds = time.perf_counter() - t0

  t0 = time.perf_counter()
  eval_x, eval_y = split_features(eval_dataset, options.spec, options.batch_size)
  if scaler is not None:
    eval_x = scaler(eval_x)
  if options.classifier == "svm":
    logits = model.scores(eval_x)
  else:
    votes = knn.knn_scores(
      train_x,
      train_y,
      eval_x,
      k=options.knn_k,
      num_classes=info.num_classes,
      metric=options.knn_metric,
      batch_size=options.batch_size,
    )
    logits = np.log(np.maximum(votes, _MIN_VOTE_FRACTION))
  result, outputs = _score(config, info.num_classes, logits, eval_y)
  eval_seconds = time.perf_counter() - t0

  final = eval_loop.final_report(0, config, result, model_name(options))
  final.update(
    {
      "num_features": int(train_x.shape[1]),
      "train_seconds": feature_seconds + fit_seconds,
      "feature_seconds": feature_seconds,
      "fit_seconds": fit_seconds,
      "eval_seconds": eval_seconds,
      "run_seconds": time.perf_counter() - start,
      **fit_info,
    }
  )
  _write_run_files(workdir, config, info)
  if options.classifier == "svm":
    np.savez(
      os.path.join(workdir, MODEL_FILE),
      weights=model.weights,
      bias=model.bias,
      feature_mean=scaler.mean if scaler else np.zeros(0),
      feature_std=scaler.std if scaler else np.zeros(0),
    )
  eval_loop.write_report(
    workdir,
    final,
    outputs,
    info.class_names,
    dataset=eval_dataset,
    batch_size=options.batch_size,
    task=tasks.build(dict(config.task), info.num_classes),
  )
  logging.info(
    "%s on the %s split: accuracy %.4f; train %.1f s (features %.1f s, fit %.1f s), eval %.1f s.",
    final["model"],
    final["split"],
    final["accuracy"],
    final["train_seconds"],
    feature_seconds,
    fit_seconds,
    eval_seconds,
  )
  return final


def _score(config, num_classes: int, logits: np.ndarray, labels: np.ndarray) -> tuple[dict, dict]:
  """The multiclass task's metrics of these scores, exactly as a CNN's eval would compute them."""
  task = tasks.build(dict(config.task), num_classes)
  logits, labels = jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.int32)
  mask = jnp.ones(labels.shape, bool)
  sums, outputs = jax.tree.map(np.asarray, _sums_and_outputs(task, logits, labels, mask))
  return task.finalize(sums, outputs), outputs


@functools.partial(jax.jit, static_argnums=0)
def _sums_and_outputs(task, logits, labels, mask):
  return task.eval_sums(logits, labels, mask), task.eval_outputs(logits, labels, mask)


def _write_run_files(workdir: str, config, info) -> None:
  """config.json (with the data's derived values) and classes.json, as a training run leaves them."""
  resolved = workdir_lib.resolved_config(config, info, num_train_steps=0)
  workdir_lib.write_config(workdir, resolved)
  workdir_lib.write_classes(workdir, info.class_names)
