"""Attribution maps and `python -m jaxcls.explain`: the maps find a planted patch, IG is complete, Grad-CAM is CAM.

The task: noise images with one small pure-colour patch at a random position; the label is the patch's colour. A
random colour tint per image makes the image's mean colour useless, so a model must find the patch (a linear
"average colour" model would have gradients spread evenly over the image), and every map should concentrate on it.
"""

import json
import os
import subprocess

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, subprocess_env, tiny_config
from PIL import Image

from jaxcls import models, tasks
from jaxcls.core.errors import ConfigError
from jaxcls.inference import attribution
from jaxcls.inference import explainer as explain
from jaxcls.models import forward
from jaxcls.store import restore
from jaxcls.training import loop as train

SIZE, PATCH = 16, 4
COLOURS = ("red", "green", "blue")


def patch_images(num: int, seed: int):
  """(uint8 images [num, SIZE, SIZE, 3], labels, patch top-left corners): tinted grey noise, a pure-colour patch."""
  rng = np.random.default_rng(seed)
  labels = (np.arange(num) % len(COLOURS)).astype(np.int32)
  grey = rng.integers(0, 60, (num, SIZE, SIZE, 1))
  tint = rng.integers(0, 120, (num, 1, 1, 3))
  images = (grey + tint).astype(np.uint8)
  corners = rng.integers(0, SIZE - PATCH + 1, (num, 2))
  for image, label, (y, x) in zip(images, labels, corners):
    image[y : y + PATCH, x : x + PATCH] = 0
    image[y : y + PATCH, x : x + PATCH, label] = 255
  return images, labels, corners


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("patch")
  images, labels, _ = patch_images(600, seed=0)
  np.savez(root / "patch.npz", images=images, labels=labels, class_names=np.array(COLOURS))
  config = tiny_config(
    **{
      "dataset.name": "arrays",
      "dataset.path": str(root / "patch.npz"),
      "dataset.image_size": (SIZE, SIZE),
      "model.widths": (16, 32),
      "model.dropout": 0.0,
    },
    augment="",
    num_train_steps=120,
    batch_size=32,
    eval_batch_size=120,
    eval_every_steps=120,
    checkpoint_every_steps=120,
    **{"optimizer.learning_rate": 0.1},
  )
  workdir = str(root / "run")
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "report.json")) as f:
    assert json.load(f)["accuracy"] >= 0.95  # the maps below explain a model that solved the task
  return workdir


def test_every_map_concentrates_on_the_planted_patch(trained):
  settings = explain.Settings(ig_steps=16)
  explainer = explain.Explainer(restore.restore(trained), settings)
  assert explainer.methods == list(explain.METHODS)
  images, labels, corners = patch_images(24, seed=7)
  normalised, _, probs = explainer.scores(images)
  assert np.mean(np.argmax(probs, -1) == labels) >= 0.9
  area = PATCH * PATCH / (SIZE * SIZE)
  maps_per_image = [explainer.maps(normalised[i], int(label), i) for i, label in enumerate(labels)]
  again = explainer.maps(normalised[0], int(labels[0]), 0)
  assert all(np.array_equal(again[m], maps_per_image[0][m]) for m in again)  # same seed, same maps
  for method in explainer.methods:
    fractions = []
    for maps, (y, x) in zip(maps_per_image, corners):
      mass = np.abs(maps[method])
      fractions.append(mass[y : y + PATCH, x : x + PATCH].sum() / mass.sum())
    # Most maps (measured: 75% of them for SmoothGrad, all for the others) hold over 3x the patch's share of the
    # image inside the patch.
    assert np.mean(np.asarray(fractions) > 3 * area) >= 2 / 3, (method, np.round(fractions, 3))


def test_integrated_gradients_are_complete(trained):
  """The map's total equals score(image) - score(baseline), up to a quadrature error that shrinks with steps."""
  restored = restore.restore(trained)
  explainer = explain.Explainer(restored, explain.Settings(methods=["integrated_gradients"]))
  images, labels, _ = patch_images(2, seed=11)
  normalised, scores, _ = explainer.scores(images)
  variables = forward.model_variables(restored.variables)
  score_fn = lambda x: restored.task.attribution_scores(restored.model.apply(variables, x, train=False))[0]
  totals = {
    steps: jax.jit(
      lambda x, c, steps=steps: attribution.integrated_gradients(
        score_fn, x, c, explainer.baseline, num_steps=steps, batch_size=65
      ).sum()
    )
    for steps in (2, 64)
  }
  for image, score, label in zip(normalised, scores, labels):
    gap = score[label] - explainer.baseline_score(int(label))
    errors = {steps: abs(float(total(image, int(label))) - gap) for steps, total in totals.items()}
    assert errors[64] <= 0.02 * abs(gap) + 1e-3, (errors, gap)
    assert errors[64] < errors[2]


class Linear(nn.Module):
  """score_k = sum(w_k * x): every method has a closed form to check against."""

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(2, use_bias=False)(x.reshape(x.shape[0], -1))


def test_gradient_methods_match_closed_forms_on_a_linear_model():
  model = Linear()
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 5, 4, 3)))
  weights = np.asarray(variables["params"]["Dense_0"]["kernel"])[:, 1].reshape(5, 4, 3)
  score_fn = lambda x: model.apply(variables, x)
  image = np.asarray(jax.random.normal(jax.random.key(1), (5, 4, 3)))
  baseline = np.full((5, 4, 3), -0.5, np.float32)
  np.testing.assert_allclose(attribution.saliency(score_fn, image, 1), np.abs(weights).max(-1), rtol=1e-6)
  # The gradient of a linear score is the same at every noisy copy, so SmoothGrad is the saliency.
  np.testing.assert_allclose(
    attribution.smoothgrad(score_fn, image, 1, jax.random.key(2), num_samples=5, batch_size=2),
    np.abs(weights).max(-1),
    rtol=1e-5,
  )
  for rule in attribution.IG_RULES:
    np.testing.assert_allclose(
      attribution.integrated_gradients(score_fn, image, 1, baseline, num_steps=3, rule=rule),
      ((image - baseline) * weights).sum(-1),
      rtol=1e-5,
      atol=1e-6,
    )
  with pytest.raises(ConfigError, match="Grad-CAM needs a convolutional model"):
    attribution.grad_cam(score_fn, image, 1)


def test_a_batch_size_below_one_is_refused():
  with pytest.raises(ConfigError, match=r"^--batch_size=0 must be at least 1 \(noisy copies or path points per call"):
    explain.Settings(batch_size=0)  # attribution would have taken it as 1 without a word


def test_path_points_integrate_polynomials():
  for rule, exact_degree in (("trapezoid", 1), ("riemann_middle", 1), ("riemann_left", 0), ("riemann_right", 0)):
    alphas, weights = attribution.path_points(4, rule)
    for degree in range(exact_degree + 1):
      assert float(jnp.sum(weights * alphas**degree)) == pytest.approx(1 / (degree + 1), abs=1e-6), rule
  with pytest.raises(ConfigError, match="Unknown integration rule 'simpson'"):
    attribution.path_points(4, "simpson")


def test_grad_cam_is_class_activation_mapping_for_a_pooled_linear_head():
  """With average pooling and a linear head, Grad-CAM is Zhou et al.'s CAM: relu(features @ head weights) / hw."""
  model = models.build({"name": "simple_cnn", "widths": (4, 6), "pooling": "avg", "norm": "none", "dropout": 0.0}, 3)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  score_fn = lambda x: model.apply(variables, x)
  image = jax.random.normal(jax.random.key(1), (8, 8, 3))
  target = attribution.find_feature_map(score_fn, image.shape)
  assert target.shape == (1, 4, 4, 6) and target.module == "SimpleCNN._act"
  # The same features, read independently with flax's capture_intermediates.
  _, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]))(
    variables, image[None]
  )
  features = np.asarray(_last_activation(state))[0]
  head = np.asarray(variables["params"]["head"]["kernel"])[:, 2]
  cam = np.maximum(features @ head, 0) / 16
  expected = jax.image.resize(jnp.asarray(cam), (8, 8), "bilinear")
  jitted = jax.jit(lambda x, c: attribution.grad_cam(score_fn, x, c))
  np.testing.assert_allclose(jitted(image, 2), expected, rtol=1e-5, atol=1e-7)


def _last_activation(state):
  """The output of the model's last Activation module (the map before the final pooling)."""
  names = sorted((k for k in state["intermediates"] if k.startswith("Activation_")), key=lambda k: int(k[11:]))
  return state["intermediates"][names[-1]]["__call__"][0]


class TinyTransformer(nn.Module):
  """Patchify conv -> tokens -> Dense -> mean: the shape of a ViT, in a few parameters."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (4, 4), strides=(4, 4))(x)
    x = nn.Dense(8)(x.reshape(x.shape[0], -1, 8))
    return nn.Dense(3)(x.mean(1))


def test_grad_cam_refuses_token_models():
  model = TinyTransformer()
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ConfigError, match=r"Grad-CAM needs a convolutional model.*token sequences.*\(1, 4, 8\)"):
    attribution.find_feature_map(lambda x: model.apply(variables, x), (8, 8, 3))


def test_class_and_method_arguments():
  assert explain.resolve_classes("blue,0", COLOURS) == [2, 0]
  assert explain.resolve_classes(None, COLOURS) == []
  with pytest.raises(ConfigError, match="'gren' is neither a class name nor an index in \\[0, 3\\). Did you mean"):
    explain.resolve_classes("gren", COLOURS)
  with pytest.raises(ConfigError, match="--methods='saliency,lime' is not valid"):
    explain.resolve_methods("saliency,lime")
  assert explain.resolve_methods("gradcam, saliency") == ["gradcam", "saliency"]


def test_summary_lines_of_an_index():
  """What the command prints: a line per explained image on stdout, errors and a skipped Grad-CAM on stderr."""
  index = {
    "gradcam_skipped": "not convolutional",
    "output_dir": "/out",
    "images": [
      {
        "path": "a.png",
        "error": None,
        "png": "/out/a.png",
        "predicted": "red",
        "probability": 0.5,
        "explained": [{"class": "red", "probability": 0.5}, {"class": "blue", "probability": 0.25}],
      },
      {"path": "b.png", "error": "no such file"},
    ],
  }
  out, err = explain.summary_lines(index)
  assert out == [
    "a.png: predicted red 0.5000; explained red 0.5000, blue 0.2500 -> /out/a.png",
    "1 explained, 1 failed; index in /out/index.md",
  ]
  assert err == ["Grad-CAM skipped: not convolutional", "b.png: error: no such file"]


def test_multilabel_titles_name_every_label_at_or_above_its_threshold(tmp_path):
  """Defect 8: a multi-label figure title, printed line and index.md name each predicted label (most probable
  first), not only the top one; with none above its threshold they say so. Single-label tasks keep one class."""
  names = ["cat", "dog", "car", "sky"]
  task = tasks.build({"type": "multilabel", "thresholds": (0.5, 0.5, 0.3, 0.5)}, 4)
  probs = np.array([0.6, 0.2, 0.3, 0.9], np.float32)  # car sits exactly on its own threshold 0.3
  labels = explain.label_set(task, names, probs)
  assert labels == [["sky", pytest.approx(0.9)], ["cat", pytest.approx(0.6)], ["car", pytest.approx(0.3)]]
  record = {
    "path": "a.png",
    "error": None,
    "png": str(tmp_path / "a.png"),
    "predicted": "sky",
    "probability": 0.9,
    "labels": labels,
    "explained": [{"class": "sky", "probability": 0.9}],
  }
  assert explain.prediction_text(record, percent=True) == "sky (90.0%), cat (60.0%), car (30.0%)"
  out, _ = explain.summary_lines({"gradcam_skipped": None, "output_dir": str(tmp_path), "images": [record]})
  assert out[0] == f"a.png: predicted sky 0.9000, cat 0.6000, car 0.3000; explained sky 0.9000 -> {tmp_path}/a.png"
  none = dict(record, labels=explain.label_set(task, names, np.array([0.4, 0.1, 0.2, 0.3], np.float32)))
  assert explain.prediction_text(none) == "no label at or above its threshold"
  explain.write_index(
    str(tmp_path),
    {"model": "m", "step": 1, "workdir": "w", "methods": ["saliency"], "gradcam_layer": None, "images": [record, none]},
  )
  table = (tmp_path / "index.md").read_text()
  assert "| sky (90.0%), cat (60.0%), car (30.0%) |" in table and "| no label at or above its threshold |" in table
  single = tasks.build({"type": "multiclass"}, 4)
  assert explain.label_set(single, names, probs / probs.sum()) is None
  assert explain.prediction_text({"predicted": "sky", "probability": 0.45, "labels": None}) == "sky 0.4500"


def test_multilabel_explain_names_and_explains_each_predicted_label(tmp_path):
  """explain_files on a multi-label workdir: each image's record lists predict's label set, and by default every
  label in it gets its own row of maps (thresholds low enough that an untrained model predicts several)."""
  from jaxcls.inference import predictor  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (64, SIZE, SIZE, 3)).astype(np.uint8)
  np.savez(
    tmp_path / "multi.npz",
    images=images,
    labels=rng.integers(0, 2, (64, 3)).astype(np.int32),
    class_names=np.array(COLOURS),
  )
  config = tiny_config(
    **{
      "dataset.name": "arrays",
      "dataset.path": str(tmp_path / "multi.npz"),
      "dataset.image_size": (SIZE, SIZE),
      "task.type": "multilabel",
      "task.thresholds": (0.05, 0.05, 0.99),
    },
    augment="",
    num_train_steps=4,
    eval_every_steps=4,
    checkpoint_every_steps=4,
  )
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  files = []
  for k in range(2):
    files.append(str(tmp_path / f"x{k}.png"))
    Image.fromarray(images[k]).save(files[-1])
  index = explain.explain_files(
    workdir, files, output_dir=str(tmp_path / "out"), settings=explain.Settings(methods=["saliency"])
  )
  predicted = predictor.predict_files(restore.restore(workdir), files, top_k=3)
  for record, expected in zip(index["images"], predicted, strict=True):
    names = [name for name, _ in record["labels"]]
    assert names == [name for name, _ in expected["labels"]] and sorted(names) == ["green", "red"]  # not blue: 0.99
    assert [row["class"] for row in record["explained"]] == names  # most probable first, each one explained
    np.testing.assert_allclose([p for _, p in record["labels"]], [p for _, p in expected["labels"]], atol=1e-5)
  out, _ = explain.summary_lines(index)
  first = index["images"][0]["labels"]
  assert out[0].startswith(f"{files[0]}: predicted {first[0][0]} {first[0][1]:.4f}, {first[1][0]} {first[1][1]:.4f}; ")


def test_command_writes_one_png_per_image_and_an_index(trained, tmp_path, python):
  images, labels, _ = patch_images(2, seed=3)
  folder = tmp_path / "in"
  folder.mkdir()
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f"img{i}.png")
  (folder / "broken.png").write_bytes(b"not an image")
  out = tmp_path / "out"
  proc = subprocess.run(
    [
      python,
      "-m",
      "jaxcls.explain",
      "--workdir",
      trained,
      "--output_dir",
      str(out),
      "--class",
      "green,red",
      "--smoothgrad_samples",
      "8",
      "--ig_steps",
      "8",
      str(folder),
    ],
    env=subprocess_env(1),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"2 explained, 1 failed; index in {out}/index.md" in proc.stdout
  assert "broken.png: error: unreadable" in proc.stderr
  index = json.loads((out / "index.json").read_text())
  assert index["methods"] == list(explain.METHODS) and index["gradcam_layer"] == "SimpleCNN._act"
  assert index["gradcam_skipped"] is None
  by_name = {os.path.basename(r["path"]): r for r in index["images"]}
  assert by_name["broken.png"]["error"] and "png" not in by_name["broken.png"]
  for i, label in enumerate(labels):
    record = by_name[f"img{i}.png"]
    assert record["predicted"] == COLOURS[label]
    assert [row["class"] for row in record["explained"]] == ["green", "red"]
    for row in record["explained"]:
      assert row["integrated_gradients_total"] == pytest.approx(row["score_minus_baseline_score"], rel=0.1, abs=0.05)
    with Image.open(record["png"]) as png:
      assert png.width > 5 * 100 and png.height > 2 * 200  # five panels wide, one row per class
  assert "img0.png" in (out / "index.md").read_text()
