"""Penultimate features, the ridge few-shot classifier (against scikit-learn), the evaluator and the command."""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CHEAP_COMPILE, REPO, subprocess_env, tiny_config
from sklearn.linear_model import RidgeClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from jaxcls import data, models
from jaxcls.core import parallel
from jaxcls.core.errors import ConfigError, DataError
from jaxcls.evaluation import evaluators, features, fewshot
from jaxcls.models import forward, vit
from jaxcls.store import restore
from jaxcls.training import loop as train

# --- Features -----------------------------------------------------------------------------------------------------

# Test programs run once: a cheap compile beats a fast program.


def _features(model, variables, images):
  """(features, logits, head name) of one jitted, cheaply compiled apply."""
  names = []

  def run(v, x):
    f, logits, n = features.apply_with_features(model, v, x)
    names.append(n)
    return f, logits

  f, logits = jax.jit(run).lower(variables, images).compile(CHEAP_COMPILE)(variables, images)
  return np.asarray(f), np.asarray(logits), names[0]


def _random_variables(model, image_shape, seed=1):
  """Random values for every variable, without compiling an init (ViT's head starts at zero; variances > 0)."""
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros(image_shape))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    value = rng.normal(size=leaf.shape).astype(np.float32) * 0.3
    return np.abs(value) + 0.5 if jax.tree_util.keystr(path).endswith("['var']") else value

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize(
  "make_model, head",
  [
    (lambda: models.build({"name": "simple_cnn", "widths": (8, 16), "dense": (12,)}, 5), "head"),
    (lambda: models.build({"name": "resnet18", "width": 4, "stem": "small"}, 5), "fc"),
    (lambda: vit.VisionTransformer(5, patch_size=4, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32), "head"),
  ],
)
def test_features_times_head_equal_logits(make_model, head):
  model = make_model()
  images = np.random.default_rng(0).standard_normal((3, 8, 8, 3)).astype(np.float32)
  variables = _random_variables(model, images.shape)
  feats, logits, name = _features(model, variables, images)
  assert name == head
  dense = variables["params"][head]
  assert feats.shape == (3, dense["kernel"].shape[0])
  np.testing.assert_allclose(feats @ dense["kernel"] + dense["bias"], logits, rtol=1e-4, atol=1e-4)
  assert np.std(logits) > 1e-3


def test_extractor_on_the_mesh_drops_padding_and_matches_one_device():
  rng = np.random.default_rng(0)
  train_images = rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8)
  eval_images = rng.integers(0, 255, (21, 8, 8, 3), dtype=np.uint8)
  dataset = data.from_arrays(train_images, np.arange(40) % 4, eval_images, np.arange(21) % 4)
  model = models.build({"name": "simple_cnn", "widths": (8,)}, 4)
  variables = _random_variables(model, (1, 8, 8, 3))
  extractor = features.FeatureExtractor(
    model, mean=dataset.info.mean, std=dataset.info.std, dtype="float32", mesh=parallel.make_mesh()
  )
  feats, labels = extractor(variables, dataset.eval_batches(16))  # 21 rows: the second batch is 11 rows of padding
  assert feats.shape == (21, 8) and feats.dtype == np.float32
  np.testing.assert_array_equal(labels, np.arange(21) % 4)
  images = forward.normalize(eval_images, dataset.info.mean, dataset.info.std, jnp.float32)
  expected, _, _ = _features(model, variables, images)
  np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)


# --- Ridge and shots ----------------------------------------------------------------------------------------------


def _clustered(seed, num_classes, per_class, dim, spread=1.5):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim)) * spread
  labels = np.repeat(np.arange(num_classes), per_class)
  x = centres[labels] + rng.normal(size=(len(labels), dim))
  x[:, 0] = 0.0  # a dead (constant) unit, as ReLU features have
  perm = rng.permutation(len(labels))
  return x[perm].astype(np.float32), labels[perm]


@pytest.mark.parametrize(
  "num_classes, per_class, dim, l2_reg",
  [
    (5, 3, 20, 1.0),  # N < D: the dual form
    (5, 30, 10, 1024.0),  # N > D: the primal form
    (2, 8, 6, 10.0),  # binary: sklearn fits one column, we fit two
    (4, 1, 12, 0.5),  # one shot
  ],
)
def test_ridge_matches_sklearn_ridge_classifier(num_classes, per_class, dim, l2_reg):
  x, y = _clustered(num_classes * 7 + dim, num_classes, per_class, dim)
  x_test, y_test = _clustered(num_classes * 7 + dim + 1, num_classes, 50, dim, spread=0.0)
  ours = fewshot.fit_ridge(x, y, num_classes, l2_reg)
  reference = make_pipeline(StandardScaler(), RidgeClassifier(alpha=l2_reg, fit_intercept=True))
  reference.fit(x.astype(np.float64), y)
  np.testing.assert_array_equal(ours.predict(x_test), reference.predict(x_test.astype(np.float64)))
  if num_classes > 2:
    np.testing.assert_allclose(
      ours.scores(x_test), reference.decision_function(x_test.astype(np.float64)), rtol=1e-7, atol=1e-9
    )


def test_shots_are_nested_balanced_and_seeded():
  labels = np.random.default_rng(0).permutation(np.arange(90) % 3)
  a = fewshot.sample_shots(labels, (1, 5, 10), [0, 0], 3)
  assert set(a[1]) <= set(a[5]) <= set(a[10])
  for n, idx in a.items():
    assert np.array_equal(np.bincount(labels[idx], minlength=3), [n] * 3)
  again = fewshot.sample_shots(labels, (1, 5, 10), [0, 0], 3)
  other = fewshot.sample_shots(labels, (1, 5, 10), [0, 1], 3)
  assert all(np.array_equal(a[n], again[n]) for n in a) and not np.array_equal(a[10], other[10])
  with pytest.raises(DataError, match="31-shot evaluation needs 31 training examples of every class"):
    fewshot.sample_shots(labels, (31,), 0, 3)


def test_evaluate_features_agrees_with_sklearn_per_seed():
  x, y = _clustered(3, 4, 30, 16, spread=0.4)
  x_eval, y_eval = _clustered(4, 4, 25, 16, spread=0.4)
  results = fewshot.evaluate_features(
    x,
    y,
    x_eval,
    y_eval,
    num_classes=4,
    shots=(1, 5),
    seeds=3,
    l2_reg=2.0,
    knn_k=(1, 7),
    knn_metric="euclidean",
    seed=11,
  )
  for n in (1, 5):
    expected = []
    for i in range(3):
      idx = fewshot.sample_shots(y, (1, 5), [11, i], 4)[n]
      clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=2.0)).fit(x[idx].astype(np.float64), y[idx])
      expected.append(np.mean(clf.predict(x_eval.astype(np.float64)) == y_eval))
    assert results["shots"][n]["per_seed"] == pytest.approx(expected, abs=1e-12)
    assert results["shots"][n]["mean"] == pytest.approx(np.mean(expected))
    assert results["shots"][n]["std"] == pytest.approx(np.std(expected, ddof=1))
  for k in (1, 7):
    knn_ref = KNeighborsClassifier(n_neighbors=k).fit(x, y)
    assert results["knn"][k] == pytest.approx(np.mean(knn_ref.predict(x_eval) == y_eval))
  names = fewshot.scalars(results)
  assert sorted(names) == [
    "fewshot/1shot_mean",
    "fewshot/1shot_std",
    "fewshot/5shot_mean",
    "fewshot/5shot_std",
    "fewshot/knn1",
    "fewshot/knn7",
  ]
  assert 0.25 < names["fewshot/5shot_mean"] <= 1.0


def test_bad_settings_fail_clearly():
  x, y = _clustered(0, 2, 5, 4)
  with pytest.raises(ConfigError, match="l2_reg=0.0 must be positive"):
    fewshot.fit_ridge(x, y, 2, 0.0)
  with pytest.raises(ConfigError, match="knn_metric='l1' is unknown"):
    fewshot.evaluate_features(x, y, x, y, num_classes=2, knn_metric="l1")
  with pytest.raises(DataError, match="one integer class label"):
    fewshot.evaluate_features(x, np.eye(2)[y], x, y, num_classes=2, shots=(1,))


# --- The evaluator and the command on a trained tiny workdir -------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(
    num_train_steps=4,
    eval_every_steps=4,
    checkpoint_every_steps=4,
    evaluators=("fewshot",),
    **{
      "fewshot.every_steps": 2,
      "fewshot.shots": (1, 5),
      "fewshot.seeds": 2,
      "fewshot.knn_k": (3,),
      "fewshot.train_examples": 64,
      "fewshot.batch_size": 16,
    },
  )
  train.train_and_evaluate(config, workdir)
  return workdir


def test_the_training_loop_logs_the_periodic_evaluator(trained):
  with open(os.path.join(trained, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  logged = {row["step"]: row for row in rows if "fewshot/5shot_mean" in row}
  assert sorted(logged) == [2, 4]
  assert set(logged[4]) == {
    "step",
    "fewshot/1shot_mean",
    "fewshot/1shot_std",
    "fewshot/5shot_mean",
    "fewshot/5shot_std",
    "fewshot/knn3",
  }


def test_evaluator_is_deterministic_and_matches_the_command(trained):
  restored = restore.restore(trained)
  config = restored.config
  mesh = parallel.make_mesh()
  dataset = data.build(config)
  section = dict(every_steps=4, shots=(1, 5, 25), seeds=2, knn_k=(1, 10), train_examples=0)
  evaluator = fewshot.FewShotEvaluator(
    section, restored.model, dataset, mesh, config.dtype, batch_size=16, seed=config.seed
  )
  assert evaluator.num_train_examples == 128
  assert evaluator.due(4, 10) and evaluator.due(10, 10) and not evaluator.due(5, 10)
  params = parallel.replicate(restored.variables["params"], mesh)
  stats = parallel.replicate(restored.variables["batch_stats"], mesh)
  first = evaluator(params, stats)
  assert first == evaluator(params, stats)
  assert sorted(first) == sorted(
    [
      "fewshot/1shot_mean",
      "fewshot/1shot_std",
      "fewshot/5shot_mean",
      "fewshot/5shot_std",
      "fewshot/25shot_mean",
      "fewshot/25shot_std",
      "fewshot/knn1",
      "fewshot/knn10",
    ]
  )
  assert all(0.0 <= v <= 1.0 for v in first.values())
  final = fewshot.evaluate_workdir(trained, shots=(1, 5, 25), seeds=2, knn_k=(1, 10), batch_size=16)
  assert final["metrics"] == first
  assert final["num_train_examples"] == 128 and final["num_eval_examples"] == 100
  assert json.loads(open(os.path.join(trained, "fewshot.json")).read())["metrics"] == first
  # Features of a trained model separate the synthetic classes well.
  assert first["fewshot/25shot_mean"] > 0.5 and first["fewshot/knn10"] > 0.5
  # The command's --batch_size is named as the flag it is (not as config.batch_size), a negative one at once.
  with pytest.raises(ConfigError, match=r"^--batch_size=-1 must be 0 \(the config's eval batch size\) or more\.$"):
    fewshot.evaluate_workdir(trained, shots=(1,), seeds=1, knn_k=(), batch_size=-1)
  with pytest.raises(ConfigError, match=r"^--batch_size=3 must be a positive multiple of the 8 devices in use; try 8"):
    fewshot.evaluate_workdir(trained, shots=(1,), seeds=1, knn_k=(), batch_size=3)


def test_evaluator_rejects_impossible_settings(trained):
  config = restore.load_config(trained)
  dataset = data.build(config)
  model = models.build(config.model, 4)
  mesh = parallel.make_mesh()
  with pytest.raises(DataError, match="25-shot evaluation needs 25 training examples of every class"):
    fewshot.FewShotEvaluator(dict(shots=(1, 25), train_examples=32), model, dataset, mesh, "float32", batch_size=16)
  with pytest.raises(ConfigError, match="Unknown fewshot config key"):
    fewshot.FewShotEvaluator(dict(shot=(1,)), model, dataset, mesh, "float32", batch_size=16)
  context = _context(model, dataset, mesh, eval_every=6)
  assert evaluators.names(tiny_config()) == ("classification",)  # the report only, by default
  with pytest.raises(ConfigError, match="Unknown evaluator 'fewshots'. Did you mean 'fewshot'"):
    evaluators.build_all(tiny_config(evaluators=("fewshots",)), context)
  with pytest.raises(ConfigError, match="Unknown evaluator 'knm'"):  # what training checks before loading data
    evaluators.check_names(tiny_config(evaluators="classification,knm"))
  assert evaluators.check_names(tiny_config(evaluators="knn,classification")) == ("knn", "classification")
  with pytest.raises(ConfigError, match="names an evaluator twice"):
    evaluators.build_all(tiny_config(evaluators="fewshot,fewshot"), context)
  # A list without the report gets it first; without its own cadence few-shot runs with every evaluation.
  report, evaluator = evaluators.build_all(
    tiny_config(evaluators="fewshot", **{"fewshot.shots": (1,), "fewshot.train_examples": 32}), context
  )
  assert isinstance(report, evaluators.Classification) and isinstance(evaluator, fewshot.FewShotEvaluator)
  assert evaluator.every == 6 and evaluator.due(12, 20) and evaluator.due(20, 20) and not evaluator.due(8, 20)
  assert report.every == 6 and report.due(18, 20) and report.due(20, 20) and not report.due(8, 20)


def test_command_prints_a_table_and_writes_json(trained, python):
  proc = subprocess.run(
    [python, "-m", "jaxcls.fewshot", "--workdir", trained, "--shots", "1,5", "--seeds", "2", "--knn_k", "3"],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ridge 5-shot (2 seeds)" in proc.stdout and "k-NN k=3 (cosine)" in proc.stdout
  written = json.loads(open(os.path.join(trained, "fewshot.json")).read())
  assert sorted(written["shots"]) == ["1", "5"] and sorted(written["knn"]) == ["3"] and written["step"] == 4
  bad = subprocess.run(
    [python, "-m", "jaxcls.fewshot", "--workdir", trained, "--shots", "0,5"],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode == 2 and "fewshot.shots=(0, 5) must all be positive" in bad.stderr


def _context(model, dataset, mesh, eval_every):
  """An evaluator context as the training loop builds it (the eval step is never called by these tests)."""
  return evaluators.Context(
    config=tiny_config(),
    model=model,
    task=None,
    dataset=dataset,
    mesh=mesh,
    eval_every=eval_every,
    batch_size=16,
    eval_step=None,
  )


def test_fewshot_defaults_have_one_home():
  from jaxcls.config import base as config_base

  section = config_base.get_base_config().fewshot
  assert fewshot.default_config().to_dict() == section.to_dict()
  assert section.shots == (1, 5, 10, 25) and section.knn_k == (1, 10) and section.l2_reg == 1024.0
  # evaluate_features without settings uses that section: the same numbers as with it spelled out.
  x, y = _clustered(0, 3, 30, 4)
  assert fewshot.evaluate_features(x, y, x, y, num_classes=3) == fewshot.evaluate_features(
    x,
    y,
    x,
    y,
    num_classes=3,
    shots=section.shots,
    seeds=section.seeds,
    l2_reg=section.l2_reg,
    knn_k=section.knn_k,
    knn_metric=section.knn_metric,
  )


def test_knn_evaluator_logs_only_knn_accuracies(trained):
  config = restore.load_config(trained)
  dataset = data.build(config)
  restored = restore.restore(trained)
  mesh = parallel.make_mesh()
  config.evaluators = ("classification", "knn")
  config.fewshot.knn_k = (3,)
  config.fewshot.train_examples = 64
  config.eval_batch_size = 16
  knn_evaluator = evaluators.build_all(config, _context(restored.model, dataset, mesh, 4))[1]
  params = parallel.replicate(restored.variables["params"], mesh)
  stats = parallel.replicate(restored.variables["batch_stats"], mesh)
  measured = knn_evaluator.run(4, params, stats)
  assert sorted(measured) == ["knn/knn3"] and 0.0 <= measured["knn/knn3"] <= 1.0
