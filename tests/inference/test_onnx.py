"""`python -m jaxcls.export --format onnx`: onnxruntime runs model.onnx with `predict`'s probabilities (1e-4) on the
same uint8 images, examples/serve_exported.py serves it in a venv holding only its requirements.txt, the model
families of docs/export.md convert, and an op that does not convert is one ConfigError naming the family."""

import importlib.metadata
import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, clean_python, subprocess_env
from test_export import exported, load_loader, serve_in  # noqa: F401  (the trained hierarchical workdir fixture)

from jaxcls import models, tasks
from jaxcls.core.errors import ConfigError
from jaxcls.data import preprocess
from jaxcls.inference import exporter, onnx_export
from jaxcls.inference import predictor as predict
from jaxcls.models import forward
from jaxcls.store import restore

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")


@pytest.fixture(scope="module")
def onnx_dir(exported, tmp_path_factory):  # noqa: F811
  workdir, _, _ = exported
  model_dir = str(tmp_path_factory.mktemp("onnx"))
  exporter.export_workdir(workdir, model_dir, format="onnx")
  return model_dir


def test_onnxruntime_gives_predicts_probabilities(exported, onnx_dir):  # noqa: F811
  workdir, _, files = exported
  assert sorted(os.listdir(onnx_dir)) == ["model.json", "model.onnx", "requirements.txt"]
  with open(os.path.join(onnx_dir, "model.json")) as f:
    meta = json.load(f)
  assert (meta["format"], meta["function"], meta["input"], meta["task"]) == (
    "jaxcls-onnx/1",
    "model.onnx",
    "images",
    "hierarchical",
  )
  assert meta["requirements"] == [
    f"{name}=={importlib.metadata.version(name)}" for name in ("onnxruntime", "numpy", "pillow")
  ]
  restored = restore.restore(workdir)
  images, errors = preprocess.load(files, preprocess.from_config(restored.config))
  expected = predict.Predictor(restored)(images)
  session = onnxruntime.InferenceSession(os.path.join(onnx_dir, "model.onnx"), providers=["CPUExecutionProvider"])
  assert [(i.name, i.type, i.shape[1:]) for i in session.get_inputs()] == [("images", "tensor(uint8)", [8, 8, 3])]
  for rows in (1, 3, len(images)):  # the batch dimension is symbolic
    got = session.run(None, {"images": images[:rows]})[0]
    assert got.dtype == np.float32 and got.shape == expected[:rows].shape
    np.testing.assert_allclose(got, expected[:rows], rtol=0, atol=1e-4)
  loader = load_loader()
  model, meta = loader.load_model(onnx_dir)
  good = [path for path, error in zip(files, errors) if error is None]
  for path, probs, record in zip(good, model(images), predict.predict_files(restored, good, top_k=2)):
    assert f"{path}: {loader.describe(probs, meta, 2)}" == predict.format_line(record)


def test_onnx_serves_in_a_fresh_venv_without_jax(exported, onnx_dir, tmp_path, python):  # noqa: F811
  workdir, _, files = exported
  with open(os.path.join(onnx_dir, "requirements.txt")) as f:
    requirements = f.read().splitlines()
  clean = clean_python(tmp_path / "venv", requirements)
  probe = subprocess.run(
    [
      clean,
      "-I",
      "-c",
      "import importlib.util as u; print([m for m in ('jax', 'jaxcls', 'onnxruntime', 'PIL') if u.find_spec(m)])",
    ],
    capture_output=True,
    text=True,
    check=True,
  )
  assert probe.stdout.strip() == "['onnxruntime', 'PIL']"
  proc = serve_in(clean, onnx_dir, files)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = predict.predict_files(restore.restore(workdir), files, top_k=3)
  for line, record in zip(proc.stdout.splitlines(), records, strict=True):
    assert line.startswith(f"{record['path']}: error: ") if record["error"] else line == predict.format_line(record)
  proc = serve_in(clean_python(tmp_path / "lacking", requirements, without=["onnxruntime"]), onnx_dir, files)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert f"needs onnxruntime=={importlib.metadata.version('onnxruntime')}, which is not installed" in proc.stderr


def test_onnx_command_and_refusals(exported, onnx_dir, tmp_path, python):  # noqa: F811
  workdir, _, _ = exported
  proc = subprocess.run(
    [python, "-m", "jaxcls.export", "--workdir", workdir, "--output", str(tmp_path / "m"), "--format", "onnx"],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith(
    "Exported simple_cnn (step 4, hierarchical, 3 classes, 8x8 input) as model.onnx for onnxruntime to "
  )
  assert proc.stderr.strip() == ""  # no converter or runtime warnings
  with pytest.raises(ConfigError, match="already holds an export .model.onnx, model.json.; pass --overwrite"):
    exporter.export_workdir(workdir, onnx_dir, format="onnx")


# (family, model config, input size): tiny widths where the family has them; docs/export.md's table.
FAMILIES = [
  ("simple_cnn", {"widths": (8, 16)}, 16),
  ("simple_cnn", {"widths": (8, 16), "pooling": "avg", "activation": "gelu"}, 16),
  ("resnet18", {"width": 8}, 32),
  ("resnet50", {"width": 8}, 32),
  ("vgg11_bn", {"hidden": 32, "variant": "small"}, 32),
  ("mobilenet_v2", {"width_mult": 0.25}, 32),
  ("lenet5", {}, 28),
  ("airbench94", {"widths": (8, 16, 16)}, 32),
  ("alexnet", {"hidden": 32, "widths": (8, 8, 8, 8, 8)}, 64),
  ("convnext_tiny", {"variant": "small"}, 32),  # no width option: 28M weights
  ("vit_ti16", {}, 32),
]


def random_variables(model, size: int) -> dict:
  """Random eval variables for `model` at `size` px, drawn on the host from the init's shapes: scales and
  variances near 1, everything else (biases, batch norm means, offsets) near 0, so no statistic sits at its init
  value, and kernels of variance 1.5 / fan-in: between LeCun's 1, under which the outputs of mobilenet_v2 and
  airbench94 barely depend on the image, and He's 2, under which the residual nets' softmax saturates.

  Why not `model.init`: run op by op, it compiles every layer's ops one at a time, 9-13 s for the deeper families
  on 2 CPU cores, and jitted it compiles for as long; the shapes alone are traced in well under a second.
  """
  shapes = forward.model_variables(
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  )
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(leaf.dtype)
    name = getattr(path[-1], "key", "")
    if name in ("kernel", "embedding") and leaf.ndim >= 2:
      return noise * np.sqrt(1.5 / np.prod(leaf.shape[:-1]))
    return 1 + 0.05 * noise if name in ("scale", "var") else 0.05 * noise

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("name, options, size", FAMILIES)
def test_model_family_converts_with_its_probabilities(name, options, size):
  """Each family's eval forward pass (random weights, batch norm statistics off their init) converts and runs in
  onnxruntime within 1e-4 of jax, at a batch size other than the one converted at."""
  task = tasks.build({"type": "multiclass"}, 5)
  model = models.build({"name": name, **options}, task.num_outputs)
  variables = random_variables(model, size)

  def probabilities(images):
    logits = forward.eval_logits(model, variables, images, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), dtype="float32")
    return task.probabilities(logits)

  proto = onnx_export.convert(probabilities, (size, size, 3), family=name)
  session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
  images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
  expected = np.asarray(jax.jit(probabilities)(images))
  assert np.ptp(expected, axis=0).max() > 10 * 1e-4  # the images' probabilities differ far beyond the tolerance
  np.testing.assert_allclose(session.run(None, {"images": images})[0], expected, rtol=0, atol=1e-4)


def test_an_op_that_does_not_convert_names_the_family_and_the_fallback():
  """Failing in jax2onnx (eigh) or in onnxruntime (a complex FFT) is one ConfigError, not a converter traceback."""
  fallback = r"does not export to ONNX \(.*\); export it with --format jax instead \(docs/export.md"
  with pytest.raises(ConfigError, match=r"model family 'my_net' " + fallback) as error:
    onnx_export.convert(
      lambda x: jnp.linalg.eigh(jnp.eye(3) * x.astype(jnp.float32).mean())[0], (4, 4, 3), family="my_net"
    )
  assert "eigh" in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(ConfigError, match=r"model family 'spectral' " + fallback):
    onnx_export.convert(
      lambda x: jnp.abs(jnp.fft.fft(x.astype(jnp.float32).reshape(x.shape[0], -1))), (4, 4, 3), family="spectral"
    )


def test_a_conversion_leaves_jax_functions_as_it_found_them():
  """jax2onnx 0.17.1 leaves its tracing `jnp.cumsum` in place after `to_onnx`; the export puts the real one back."""
  cumsum, softmax = jnp.cumsum, jax.nn.softmax

  def probabilities(images):
    flat = images.astype(jnp.float32).reshape(images.shape[0], -1)
    return jax.nn.softmax(jnp.cumsum(flat, axis=1) / 100.0)

  onnx_export.convert(probabilities, (2, 2, 1), family="toy")
  assert jnp.cumsum is cumsum and jax.nn.softmax is softmax
  np.testing.assert_array_equal(jnp.cumsum(jnp.ones(3), 0), [1.0, 2.0, 3.0])  # positional axis, as users write it
