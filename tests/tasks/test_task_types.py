"""Binary, multi-label and hierarchical tasks: losses, class trees, and exact metrics checked against scikit-learn.

Every metric is computed as the loop will: `eval_sums` over uneven batches with padding rows masked out, and
`eval_outputs` rows gathered where mask is True, then `finalize(sums, outputs)`.
"""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import metrics as skm

from jaxcls import tasks
from jaxcls.core.errors import ConfigError
from jaxcls.tasks import tree as tree_lib

PAD = 7


_STEPS = {}


def _eval_step(task):
  """One jitted call per batch, compiled once per task config: eager mode compiles every primitive apart."""
  if task not in _STEPS:
    _STEPS[task] = jax.jit(lambda *args: (task.eval_sums(*args), task.eval_outputs(*args)))
  return _STEPS[task]


def _evaluate(task, logits, labels, n, batch=64):
  """finalize() over the first n rows, the rest padding, fed in equal padded batches as the eval loop does."""
  pad = -len(labels) % batch
  logits = np.concatenate([logits, np.zeros((pad,) + logits.shape[1:], logits.dtype)])
  labels = np.concatenate([labels, np.zeros((pad,) + labels.shape[1:], labels.dtype)])
  mask = np.arange(len(labels)) < n
  step = _eval_step(task)
  sums, outputs = [], []
  for start in range(0, len(labels), batch):
    part = slice(start, start + batch)
    batch_sums, batch_outputs = step(jnp.asarray(logits[part]), jnp.asarray(labels[part]), jnp.asarray(mask[part]))
    sums.append({k: np.asarray(v) for k, v in batch_sums.items()})
    outputs.append({k: np.asarray(v)[mask[part]] for k, v in batch_outputs.items()})
  total = {}
  for name in sums[0]:
    dtype = np.int64 if np.issubdtype(sums[0][name].dtype, np.integer) else np.float64
    total[name] = np.sum([s[name].astype(dtype) for s in sums], axis=0)
  gathered = {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}
  return task.finalize(total, gathered)


def _padded(values, rng):
  """values followed by PAD rows of garbage that the mask must hide."""
  garbage = rng.integers(0, 2, size=(PAD,) + values.shape[1:]).astype(values.dtype)
  return np.concatenate([values, garbage])


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _close(a, b, tol=1e-6):
  assert a == pytest.approx(b, abs=tol), (a, b)


# --- binary ---


def _binary_case(case, n=150, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  logits = rng.normal(size=n) + y
  if case == "ties":
    logits = np.round(logits * 2) / 2
  elif case == "single":
    y[:] = 1
  elif case == "absent":
    y[:] = 0
  elif case == "perfect":
    logits = np.where(y == 1, 3.0, -3.0) + rng.uniform(0, 1, n)
  elif case == "worst":
    logits = np.where(y == 1, -3.0, 3.0) + rng.uniform(0, 1, n)
  return logits.astype(np.float32), y.astype(np.int32)


@pytest.mark.parametrize("case", ["random", "ties", "single", "absent", "perfect", "worst"])
def test_binary_metrics_match_sklearn(case):
  rng = np.random.default_rng(1)
  logits, y = _binary_case(case)
  n = len(y)
  task = tasks.build({"type": "binary", "threshold": 0.4, "loss_type": "ignored"}, 2)
  result = _evaluate(task, _padded(logits[:, None], rng), _padded(y, rng), n)
  probs = _sigmoid(logits.astype(np.float32))
  prob32 = np.asarray(jax.nn.sigmoid(jnp.asarray(logits)))
  pred = (prob32 >= 0.4).astype(int)
  assert result["num_examples"] == n
  np.testing.assert_array_equal(result["confusion_matrix"], skm.confusion_matrix(y, pred, labels=[0, 1]))
  _close(result["accuracy"], skm.accuracy_score(y, pred))
  for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
    _close(result[name], fn(y, pred, zero_division=0))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # one class only: scikit-learn warns, as it should
    _close(result["balanced_accuracy"], skm.balanced_accuracy_score(y, pred))
  _close(result["loss"], skm.log_loss(y, probs, labels=[0, 1]))
  _close(result["log_loss"], skm.log_loss(y, probs, labels=[0, 1]))
  if case in ("single", "absent"):
    assert result["roc_auc"] is None and "roc_auc" in result["undefined"]  # undefined, not NaN
  else:
    _close(result["roc_auc"], skm.roc_auc_score(y, logits))
    _close(result["average_precision"], skm.average_precision_score(y, logits))
  if case == "absent":
    assert result["best_f1_threshold"] is None and result["best_f1"] == 0.0
    return
  precision, recall, _ = skm.precision_recall_curve(y, prob32)
  f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0)
  _close(result["best_f1"], f1.max())
  _close(skm.f1_score(y, prob32 >= result["best_f1_threshold"]), f1.max())
  if case == "perfect":
    assert result["best_f1"] == 1.0 and result["roc_auc"] == 1.0
  confidence = np.maximum(prob32, 1 - prob32)
  bins = np.minimum((np.ceil(confidence * 15) - 1).astype(int), 14)
  correct = (prob32 >= 0.5) == y
  ece = sum(abs(correct[bins == b].sum() - confidence[bins == b].sum()) for b in range(15)) / n
  _close(result["ece"], ece)


def test_binary_loss_and_soft_labels():
  task = tasks.build({"type": "binary"}, 2)
  logits = jnp.array([[2.0], [-1.0], [0.3]])
  hard = jnp.array([1, 0, 1])
  expected = np.logaddexp(0, np.array([2.0, -1.0, 0.3])) - np.array([2.0, 0.0, 0.3])
  np.testing.assert_allclose(task.loss(logits, hard), expected, rtol=1e-6)
  np.testing.assert_allclose(task.loss(logits, jax.nn.one_hot(hard, 2)), expected, rtol=1e-6)
  assert task.num_outputs == 1
  np.testing.assert_array_equal(task.train_metrics(logits, hard)["accuracy"], [1, 1, 1])


def test_binary_config_errors():
  with pytest.raises(ConfigError, match="2 classes"):
    tasks.build({"type": "binary"}, 3)
  with pytest.raises(ConfigError, match="threshold"):
    tasks.build({"type": "binary", "threshold": 1.5}, 2)


# --- multi-label ---


def _multilabel_case(case, n=120, k=5, seed=0):
  rng = np.random.default_rng(seed)
  y = (rng.uniform(size=(n, k)) < 0.3).astype(np.int32)
  logits = rng.normal(size=(n, k)) + 1.5 * y
  if case == "ties":
    logits = np.round(logits)
  elif case == "absent":
    y[:, 1] = 0
    y[:, 3] = 1  # a label always present: no negatives
  elif case == "perfect":
    logits = np.where(y == 1, 4.0, -4.0) + rng.uniform(0, 1, (n, k))
  elif case == "worst":
    logits = np.where(y == 1, -4.0, 4.0) + rng.uniform(0, 1, (n, k))
  return logits.astype(np.float32), y


@pytest.mark.parametrize("case", ["random", "ties", "absent", "perfect", "worst"])
def test_multilabel_metrics_match_sklearn(case):
  rng = np.random.default_rng(2)
  logits, y = _multilabel_case(case)
  n, k = y.shape
  thresholds = (0.5, 0.3, 0.6, 0.5, 0.45)
  task = tasks.build({"type": "multilabel", "thresholds": thresholds}, k)
  result = _evaluate(task, _padded(logits, rng), _padded(y, rng), n, batch=50)
  prob32 = np.asarray(jax.nn.sigmoid(jnp.asarray(logits)))
  pred = (prob32 >= np.asarray(thresholds, np.float32)).astype(int)
  assert result["num_examples"] == n
  _close(result["accuracy"], skm.accuracy_score(y, pred))
  _close(result["hamming_loss"], skm.hamming_loss(y, pred))
  for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
    np.testing.assert_allclose(result[name], fn(y, pred, average=None, zero_division=0), atol=1e-6)
    for average in ("macro", "micro"):
      _close(result[f"{average}_{name}"], fn(y, pred, average=average, zero_division=0))
  np.testing.assert_array_equal(result["support"], y.sum(0))
  probs = _sigmoid(logits)
  _close(result["log_loss"], np.mean([skm.log_loss(y[:, j], probs[:, j], labels=[0, 1]) for j in range(k)]))
  assert result["loss"] == pytest.approx(k * result["log_loss"], rel=1e-5)  # BCE summed over labels
  both = [j for j in range(k) if 0 < y[:, j].sum() < n]
  for j in range(k):
    if j in both:
      _close(result["roc_auc"][j], skm.roc_auc_score(y[:, j], logits[:, j]))
      _close(result["average_precision"][j], skm.average_precision_score(y[:, j], logits[:, j]))
    else:
      assert result["roc_auc"][j] is None
  _close(result["macro_roc_auc"], skm.roc_auc_score(y[:, both], logits[:, both], average="macro"))
  _close(result["micro_roc_auc"], skm.roc_auc_score(y, logits, average="micro"))
  _close(result["micro_average_precision"], skm.average_precision_score(y, logits, average="micro"))
  if len(both) == k:
    _close(result["macro_average_precision"], skm.average_precision_score(y, logits, average="macro"))
  for j in both:  # each label's best threshold reaches its best F1 on the precision-recall curve
    precision, recall, _ = skm.precision_recall_curve(y[:, j], prob32[:, j])
    best = np.max(
      np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0)
    )
    _close(result["best_f1"][j], best)
    _close(skm.f1_score(y[:, j], prob32[:, j] >= result["best_f1_thresholds"][j]), best)
  if case == "perfect":
    assert result["accuracy"] == 1.0 and result["hamming_loss"] == 0.0 and result["micro_roc_auc"] == 1.0
  if case == "worst":
    assert result["accuracy"] == 0.0 and result["micro_f1"] == 0.0


def _numpy_losses(x, y, gamma, gamma_neg, gamma_pos, clip):
  """Reference per-example losses written from the papers' formulas, in float64."""
  p = _sigmoid(x)
  bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
  p_t = y * p + (1 - y) * (1 - p)
  focal = bce * (1 - p_t) ** gamma
  p_m = np.maximum(p - clip, 0)
  asl = -(y * (1 - p) ** gamma_pos * np.log(p) + (1 - y) * p_m**gamma_neg * np.log(1 - p_m))
  return {"bce": bce.sum(-1), "focal": focal.sum(-1), "asymmetric": asl.sum(-1)}


@pytest.mark.parametrize("loss_type", ["bce", "focal", "asymmetric"])
def test_multilabel_losses(loss_type):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(8, 4)).astype(np.float32) * 2
  y = (rng.uniform(size=(8, 4)) < 0.4).astype(np.float32)
  config = {
    "type": "multilabel",
    "loss_type": loss_type,
    "focal_gamma": 1.5,
    "asl_gamma_neg": 3.0,
    "asl_gamma_pos": 1.0,
    "asl_clip": 0.1,
  }
  task = tasks.build(config, 4)
  expected = _numpy_losses(x, y, 1.5, 3.0, 1.0, 0.1)[loss_type]
  loss = jax.jit(task.loss)(jnp.asarray(x), jnp.asarray(y))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  if loss_type == "focal":
    optax_focal = jax.jit(optax.sigmoid_focal_loss)(jnp.asarray(x), jnp.asarray(y), gamma=1.5).sum(-1)
    np.testing.assert_allclose(loss, optax_focal, rtol=1e-5)
  # Saturated logits keep finite gradients, for every gamma (0 and below 1 included).
  for gamma in (0.0, 0.5):
    task = tasks.build({**config, "focal_gamma": gamma, "asl_gamma_pos": gamma, "asl_gamma_neg": gamma}, 4)
    grad = jax.jit(jax.grad(lambda z, t=task: t.loss(z, jnp.asarray(y)).sum()))(jnp.asarray(x) * 50)
    assert np.all(np.isfinite(grad))


def test_multilabel_reduces_to_bce():
  x, y = jnp.array([[1.0, -2.0, 0.5]]), jnp.array([[1.0, 0.0, 0.0]])
  bce = tasks.build({"type": "multilabel"}, 3).loss(x, y)
  focal = tasks.build({"type": "multilabel", "loss_type": "focal", "focal_gamma": 0.0}, 3).loss(x, y)
  asl = tasks.build(
    {"type": "multilabel", "loss_type": "asymmetric", "asl_gamma_neg": 0.0, "asl_gamma_pos": 0.0, "asl_clip": 0.0}, 3
  ).loss(x, y)
  np.testing.assert_allclose(focal, bce, rtol=1e-6)
  np.testing.assert_allclose(asl, bce, rtol=1e-6)


def test_multilabel_config_errors():
  with pytest.raises(ConfigError, match="loss_type"):
    tasks.build({"type": "multilabel", "loss_type": "focall"}, 3)
  with pytest.raises(ConfigError, match="thresholds"):
    tasks.build({"type": "multilabel", "thresholds": (0.5, 0.5)}, 3)
  with pytest.raises(ConfigError, match="thresholds"):
    tasks.build({"type": "multilabel", "thresholds": 1.0}, 3)
  assert tasks.build({"type": "multilabel", "thresholds": "(0.2, 0.5, 0.7)"}, 3).thresholds == (0.2, 0.5, 0.7)


# --- class trees ---

ANCESTORS = (("animal", "mammal"), ("animal", "mammal"), ("animal", "bird"), ("vehicle", "car"), ("vehicle", "car"))
NAMES = ("cat", "dog", "owl", "sedan", "coupe")
PARENTS = {
  "cat": "mammal",
  "dog": "mammal",
  "owl": "bird",
  "sedan": "car",
  "coupe": "car",
  "mammal": "animal",
  "bird": "animal",
  "car": "vehicle",
  "animal": None,
}


def _check_example_tree(tree):
  assert tree.level_sizes == (2, 3, 5)
  assert tree.level_names[-1] == NAMES
  assert tree.paths[2] == (0, 1, 2) and tree.paths[4] == (1, 2, 4)
  assert tree.distance(0, 1) == 2 and tree.distance(0, 2) == 4 and tree.distance(0, 3) == 6
  assert tree.distance(3, 3) == 0


def test_tree_forms(tmp_path):
  _check_example_tree(tree_lib.parse(ANCESTORS, NAMES))
  _check_example_tree(tree_lib.parse(PARENTS, NAMES))
  by_id = {str(i): ANCESTORS[i][1] for i in range(5)}
  by_id.update({"mammal": "animal", "bird": "animal", "car": "vehicle"})
  assert tree_lib.parse(by_id, NAMES).paths == tree_lib.parse(ANCESTORS, NAMES).paths
  path = tmp_path / "tree.json"
  path.write_text(json.dumps(PARENTS))
  _check_example_tree(tree_lib.parse(str(path), NAMES))
  two_level = tree_lib.parse(("a", "a", "b"), ("x", "y", "z"))
  assert two_level.level_sizes == (2, 3) and two_level.paths[2] == (1, 2)
  folders = tree_lib.parse("folders", ("animal/cat", "animal/dog", "vehicle/car"))
  assert folders.level_names == (("animal", "vehicle"), ("animal/cat", "animal/dog", "vehicle/car"))
  assert tree_lib.from_folders(["a/b/c", "a/d/e"]).level_sizes == (1, 2, 2)


@pytest.mark.parametrize(
  "value,names,message",
  [
    (ANCESTORS[:4], NAMES, "4 entries"),
    ((("a", "b"), ("a",), ("c", "d"), ("c", "d"), ("c", "d")), NAMES, "same number"),
    ((("a", "m"), ("b", "m"), ("a", "x"), ("a", "x"), ("a", "x")), NAMES, "two parents"),
    ({**PARENTS, "animal": "mammal"}, NAMES, "cycle"),
    ({k: v for k, v in PARENTS.items() if k != "owl"}, NAMES, "missing \\['owl'\\]"),
    ({**{k: v for k, v in PARENTS.items() if k != "bird"}, "owl": "animal"}, NAMES, "same number"),
    ("folders", ("cat", "dog"), "nested folder"),
    ("/no/such/tree.json", NAMES, "JSON file"),
    (3, NAMES, "not valid"),
  ],
)
def test_tree_errors(value, names, message):
  with pytest.raises(ConfigError, match=message):
    tree_lib.parse(value, names)


# --- hierarchical ---


def _hierarchical(**kwargs):
  return tasks.build({"type": "hierarchical", "tree": ANCESTORS, "class_names": NAMES, **kwargs}, 5)


def _level_log_probs(task, logits):
  bounds = np.cumsum((0,) + task.tree.level_sizes)
  out = []
  for i in range(task.tree.depth):
    block = np.asarray(logits[:, bounds[i] : bounds[i + 1]], np.float64)
    out.append(block - np.log(np.exp(block).sum(1, keepdims=True)))
  return out


def test_hierarchical_loss_and_consistent_prediction():
  task = _hierarchical(level_weights=(0.5, 1.0, 2.0))
  assert task.num_outputs == 10
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(6, 10)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 4, 2])
  paths = task.tree.path_array()
  log_probs = _level_log_probs(task, logits)
  expected = sum(
    w * -lp[np.arange(6), paths[labels, level]] for level, (w, lp) in enumerate(zip((0.5, 1.0, 2.0), log_probs))
  )
  loss = jax.jit(task.loss)
  np.testing.assert_allclose(loss(jnp.asarray(logits), jnp.asarray(labels)), expected, rtol=1e-5)
  soft = np.eye(5, dtype=np.float32)[labels]
  np.testing.assert_allclose(loss(jnp.asarray(logits), jnp.asarray(soft)), expected, rtol=1e-5)
  # The rule: the leaf with the largest sum of log-probabilities along its path.
  path_score = sum(lp[:, paths[:, level]] for level, lp in enumerate(log_probs))
  predict = jax.jit(task.predict)
  np.testing.assert_array_equal(predict(jnp.asarray(logits)), path_score.argmax(1))
  # Even when the coarse head alone disagrees, the prediction is one path of the tree.
  logits = np.zeros((1, 10), np.float32)
  logits[0, 0] = 1.0  # 'animal' slightly
  logits[0, 4] = 5.0  # 'car' strongly
  logits[0, 8] = 5.0  # 'sedan' strongly
  assert int(predict(jnp.asarray(logits))[0]) == 3


def test_hierarchical_metrics_match_sklearn():
  task = _hierarchical()
  rng = np.random.default_rng(5)
  n = 140
  labels = rng.integers(0, 5, n).astype(np.int32)
  labels[labels == 1] = 0  # 'dog' absent from the eval split
  logits = rng.normal(size=(n, 10)).astype(np.float32)
  logits[np.arange(n), 5 + labels] += 1.0
  result = _evaluate(task, _padded(logits, rng), _padded(labels, rng), n)
  paths = task.tree.path_array()
  pred = np.asarray(jax.jit(task.predict)(jnp.asarray(logits)))
  for level in range(3):
    true_l, pred_l = paths[labels, level], paths[pred, level]
    _close(result[f"level{level}_accuracy"], skm.accuracy_score(true_l, pred_l))
    _close(
      result[f"level{level}_macro_f1"],
      skm.f1_score(true_l, pred_l, labels=np.unique(true_l), average="macro", zero_division=0),
    )
  _close(result["accuracy"], skm.accuracy_score(labels, pred))
  # Hierarchical P/R/F1 from explicit ancestor sets (the leaf included, the root excluded).
  ancestors = lambda leaf: {(level, paths[leaf, level]) for level in range(3)}
  shared = sum(len(ancestors(t) & ancestors(p)) for t, p in zip(labels, pred))
  h_p = shared / sum(len(ancestors(p)) for p in pred)
  h_r = shared / sum(len(ancestors(t)) for t in labels)
  _close(result["hierarchical_precision"], h_p)
  _close(result["hierarchical_recall"], h_r)
  _close(result["hierarchical_f1"], 2 * h_p * h_r / (h_p + h_r))
  distances = np.array([task.tree.distance(t, p) for t, p in zip(labels, pred)])
  assert result["mistake_severity"] == {str(d): int((distances == d).sum()) for d in (2, 4, 6)}
  _close(result["mean_mistake_severity"], distances[distances > 0].mean())
  # Ranking metrics of the leaf distribution: the normalised product of the level probabilities.
  log_probs = _level_log_probs(task, logits)
  joint = np.exp(sum(lp[:, paths[:, level]] for level, lp in enumerate(log_probs)))
  joint /= joint.sum(1, keepdims=True)
  _close(result["log_loss"], skm.log_loss(labels, joint, labels=range(5)))
  present = [0, 2, 3, 4]
  onehot = np.eye(5)[labels]
  _close(result["macro_roc_auc"], skm.roc_auc_score(onehot[:, present], joint[:, present], average="macro"))
  _close(result["micro_average_precision"], skm.average_precision_score(onehot, joint, average="micro"))
  assert result["roc_auc"][1] is None
  assert result["per_class_recall"][1] is None


def test_hierarchical_perfect_predictions_and_errors():
  task = _hierarchical()
  labels = np.arange(5, dtype=np.int32)
  logits = np.full((5, 10), -5.0, np.float32)
  paths = task.tree.path_array()
  for level, offset in enumerate((0, 2, 5)):
    logits[labels, offset + paths[labels, level]] = 5.0
  result = _evaluate(task, _padded(logits, np.random.default_rng(0)), _padded(labels, np.random.default_rng(0)), 5)
  assert result["accuracy"] == 1.0 and result["hierarchical_f1"] == 1.0
  assert result["mistake_severity"] == {"2": 0, "4": 0, "6": 0} and result["mean_mistake_severity"] is None
  with pytest.raises(ConfigError, match="level_weights"):
    _hierarchical(level_weights=(1.0, 1.0))
  with pytest.raises(ConfigError, match="5 entries|4 entries"):
    tasks.build({"type": "hierarchical", "tree": ANCESTORS[:4]}, 5)


# --- the Task contract: the host and device views of each built-in task agree -------------------------------------


@pytest.mark.parametrize(
  "config, k",
  [
    ({"type": "multiclass"}, 4),
    ({"type": "binary", "threshold": 0.3}, 2),
    ({"type": "multilabel", "thresholds": (0.2, 0.5, 0.7)}, 3),
    ({"type": "hierarchical", "tree": ("a", "a", "b", "b")}, 4),
  ],
)
def test_host_decisions_and_outputs_agree_with_the_device(config, k):
  task = tasks.build(config, k)
  assert isinstance(task, tasks.Task) and task.single_label == (config["type"] != "multilabel")
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(64, task.num_outputs)).astype(np.float32) * 2)
  probs = np.asarray(task.probabilities(logits))
  assert probs.shape == ((64,) if config["type"] == "binary" else (64, k))
  np.testing.assert_array_equal(task.decide(probs), np.asarray(task.predict(logits)))
  outputs = task.eval_outputs(logits, jnp.zeros(64, jnp.int32), jnp.ones(64, bool))
  np.testing.assert_allclose(np.asarray(outputs["probs"]), probs, rtol=1e-6)
  scores, shown = task.attribution_scores(logits)
  assert scores.shape == shown.shape == (64, k)
  if task.single_label:  # explain's default class is the decided one
    assert [task.explained_class(row) for row in np.asarray(shown)] == list(task.decide(probs))
  names = [f"c{i}" for i in range(k)]
  record = task.prediction_record(names, probs[0], top_k=2)
  assert len(record["top_k"]) == 2 and {"prediction", "probability"} <= set(record)
  assert "output" in task.export_metadata(names)
  assert set(task.decision_thresholds()) <= {"threshold", "thresholds"}
