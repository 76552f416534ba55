"""Test-time augmentation (`config.eval_tta`, jaxcls/models/tta.py): the views against numpy, airbench's weighting, and
the same averaged logits in the eval step, the training report, `python -m jaxcls.evaluate`, predict and export."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import REPO, eval_step_outputs, tiny_config
from sklearn.metrics import accuracy_score, log_loss

from jaxcls import data, models, tasks
from jaxcls.config import check as config_check
from jaxcls.core import parallel
from jaxcls.core.errors import ConfigError
from jaxcls.evaluation import loop as eval_loop
from jaxcls.evaluation import workdir_eval as evaluate
from jaxcls.inference import exporter as export
from jaxcls.inference import predictor as predict
from jaxcls.models import forward as forward_lib
from jaxcls.models import tta
from jaxcls.store import restore
from jaxcls.training import loop as train

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def init(model, shape):
  """Random variables, drawn with the 'rbg' generator: XLA's CPU backend compiles a threefry init for seconds."""
  return jax.jit(lambda key: model.init(key, jnp.zeros(shape), train=False))(jax.random.key(0, impl="rbg"))


def numpy_views(x, kind):
  """The reference: views and weights written out with numpy's own flip and reflect padding."""
  if kind == "none":
    return [x], [1.0]
  if kind == "flip":
    return [x, np.flip(x, 2)], [0.5, 0.5]
  h, w = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  a, b = padded[:, 0:h, 0:w], padded[:, 2 : h + 2, 2 : w + 2]
  return [x, np.flip(x, 2), a, np.flip(a, 2), b, np.flip(b, 2)], [0.25, 0.25] + [0.125] * 4


@pytest.mark.parametrize("kind", tta.KINDS)
def test_views_match_numpy_flip_and_reflect_padding(kind):
  x = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)  # odd, non-square
  got, weights = tta.views(jnp.asarray(x), kind)
  expected, expected_weights = numpy_views(x, kind)
  assert len(got) == len(expected) == tta.PASSES[kind]
  for view, reference in zip(got, expected):
    assert view.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(view), reference)
  np.testing.assert_allclose(weights, expected_weights)
  assert np.sum(weights) == 1.0
  if kind == "flip_translate":  # offset (0, 0) moves the content one pixel down-right, (2, 2) one pixel up-left
    down_right, up_left = np.asarray(got[2]), np.asarray(got[4])
    np.testing.assert_array_equal(down_right[:, 1:, 1:], x[:, :-1, :-1])
    np.testing.assert_array_equal(up_left[:, :-1, :-1], x[:, 1:, 1:])
    np.testing.assert_array_equal(down_right[:, 0, 1:], x[:, 1, :-1])  # reflected edge row: row 1, not row 0


def test_weighted_mean_equals_airbench_infer_mirror_translate():
  """airbench's `infer` (tta_level 1 and 2), written out in numpy float64 around a linear model."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 6, 6, 2)).astype(np.float32)
  w = rng.normal(size=(6 * 6 * 2, 5)).astype(np.float32)

  def net(images):
    return np.asarray(images, np.float64).reshape(len(images), -1) @ w

  def infer_mirror(images):
    return 0.5 * net(images) + 0.5 * net(np.flip(images, 2))

  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  shifted = [padded[:, 0:6, 0:6], padded[:, 2:8, 2:8]]
  level2 = 0.5 * infer_mirror(x) + 0.5 * np.mean([infer_mirror(s) for s in shifted], axis=0)

  def apply(kind):
    return np.asarray(jax.jit(lambda v: tta.apply_tta(lambda i: i.reshape(i.shape[0], -1) @ w, v, kind))(x))

  np.testing.assert_allclose(apply("flip_translate"), level2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(apply("flip"), infer_mirror(x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(apply("none"), net(x), rtol=1e-5, atol=1e-5)


def test_flip_changes_nothing_for_a_mirror_symmetric_model_and_averages_otherwise():
  """A CNN whose 3x3 kernels are left-right symmetric (symmetric padding, 2x2 pools on even widths, global mean)
  gives a mirrored image the same logits, so flip TTA must return its plain logits; a generic CNN must not."""
  model = models.build(
    ml_collections.ConfigDict({"name": "simple_cnn", "widths": (4, 8), "norm": "none"}), 3, "float32"
  )
  x = np.random.default_rng(3).uniform(size=(4, 8, 8, 3)).astype(np.float32)
  variables = init(model, x.shape)
  symmetric = jax.tree.map(lambda p: 0.5 * (p + p[:, ::-1]) if p.ndim == 4 else p, variables)  # kernels' width

  @jax.jit
  def logits(v, images):
    return model.apply(v, images, train=False)

  for v, is_symmetric in ((symmetric, True), (variables, False)):
    plain = logits(v, x)
    mirrored = logits(v, x[:, :, ::-1])
    flip_tta = jax.jit(lambda v, images: tta.apply_tta(lambda i: model.apply(v, i, train=False), images, "flip"))(v, x)
    if is_symmetric:
      np.testing.assert_allclose(mirrored, plain, atol=1e-5)
      np.testing.assert_allclose(flip_tta, plain, atol=1e-5)
    else:
      assert np.abs(np.asarray(mirrored - plain)).max() > 1e-3
      np.testing.assert_allclose(flip_tta, 0.5 * (plain + mirrored), atol=1e-6)


def test_eval_step_averages_the_logits_of_the_views():
  """Sharded over the 8 devices with a padded last row: probabilities and loss from the weighted mean of the
  logits of the numpy views, each normalised and passed through the model by hand."""
  task = tasks.build({"type": "multiclass"}, 4)
  model = models.build(ml_collections.ConfigDict({"name": "simple_cnn", "widths": (4, 8)}), 4, "float32")
  variables = init(model, (1, 8, 8, 3))
  rng = np.random.default_rng(2)
  batch = {
    "image": rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
    "label": np.arange(16) % 4,
    "mask": np.arange(16) < 13,
  }
  mesh = parallel.make_mesh()
  replicated = parallel.replicate(variables, mesh)
  forward = jax.jit(
    lambda images: model.apply(variables, forward_lib.normalize(images, MEAN, STD, jnp.float32), train=False)
  )
  eval_step = eval_loop.make_eval_step(
    model, task, mean=MEAN, std=STD, dtype="float32", mesh=mesh, tta="flip_translate"
  )
  sums, outputs = eval_step(replicated, parallel.to_global(batch, mesh))
  views, weights = numpy_views(batch["image"], "flip_translate")  # 'flip' is a subset of these views
  manual = sum(
    weight * np.asarray(forward(np.ascontiguousarray(view)), np.float64) for view, weight in zip(views, weights)
  )
  probs = np.exp(manual - manual.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  np.testing.assert_allclose(outputs["probs"], probs, atol=1e-6)
  nll = -np.log(probs[np.arange(16), batch["label"]])
  assert float(sums["loss_sum"]) == pytest.approx(nll[:13].sum(), rel=1e-5)


def test_unknown_names_fail_early_with_the_valid_ones(tmp_path):
  with pytest.raises(
    ConfigError,
    match=r"eval_tta='flip_translat' .*Did you mean 'flip_translate'\?.* Valid: "
    r"'none', 'flip', 'flip_translate'\.",
  ):
    tta.check("flip_translat")
  with pytest.raises(ConfigError, match="eval_tta='mirror'"):
    config_check.validate(tiny_config(eval_tta="mirror"))
  with pytest.raises(ConfigError, match="eval_tta='flips'.*Did you mean 'flip'"):  # before any data or training
    train.train_and_evaluate(tiny_config(eval_tta="flips"), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
  with pytest.raises(ConfigError, match="Valid"):
    eval_loop.make_eval_step(None, None, mean=MEAN, std=STD, dtype="float32", mesh=None, tta="Flip")
  with pytest.raises(ConfigError, match="at least 2x2 pixels, got 1x5"):
    tta.views(jnp.zeros((1, 1, 5, 3)), "flip_translate")
  # A workdir trained before the key existed evaluates and predicts as it always did.
  assert tta.from_config(ml_collections.ConfigDict({"dtype": "float32"})) == "none"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny workdir trained with airbench's TTA; its eval split (100 images, batches of 16) ends in padding."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(
    eval_tta="flip_translate", augment="", num_train_steps=4, checkpoint_every_steps=4, eval_every_steps=4
  )
  train.train_and_evaluate(config, workdir)
  config = restore.load_config(workdir)
  images, labels = [], []
  for batch in data.build(config).eval_batches(16):
    images.append(batch["image"][batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  return workdir, np.concatenate(images), np.concatenate(labels)


@pytest.mark.slow
def test_predict_gives_the_eval_steps_tta_probabilities(trained):
  workdir, images, labels = trained
  assert restore.load_config(workdir).eval_tta == "flip_translate" and len(images) == 100
  outputs = eval_step_outputs(workdir, 16, "flip_translate")
  np.testing.assert_array_equal(outputs["labels"], labels)
  probs = predict.Predictor(restore.restore(workdir), batch_size=24)(images)
  np.testing.assert_allclose(probs, outputs["probs"], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_training_report_and_evaluate_use_the_configs_tta(trained, tmp_path):
  """Needs train.py and evaluate.py to pass `tta=` to make_eval_step (see docs/tta.md)."""
  workdir, images, labels = trained
  probs = predict.Predictor(restore.restore(workdir))(images)
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  assert report["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(1)), abs=1e-12)
  probs = probs.astype(np.float64) / probs.sum(1, keepdims=True, dtype=np.float64)
  assert report["loss"] == pytest.approx(log_loss(labels, probs, labels=range(4)), rel=1e-4)
  again = evaluate.evaluate_workdir(workdir, output_dir=str(tmp_path))
  assert again["accuracy"] == report["accuracy"] and again["confusion_matrix"] == report["confusion_matrix"]


@pytest.mark.slow
def test_exported_function_holds_the_views_and_matches_predict(trained, tmp_path):
  workdir, images, _ = trained
  restored = restore.restore(workdir)
  meta = export.export_model(restored, str(tmp_path), platforms=("cpu",))
  assert (meta["eval_tta"], meta["forward_passes"]) == ("flip_translate", 6)
  spec = importlib.util.spec_from_file_location("serve_exported", os.path.join(REPO, "examples", "serve_exported.py"))
  loader = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(loader)
  model, _ = loader.load_model(str(tmp_path))
  np.testing.assert_allclose(model(images[:7]), predict.Predictor(restored)(images[:7]), rtol=0, atol=1e-6)
