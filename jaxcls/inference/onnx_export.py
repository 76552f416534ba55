"""A trained workdir as an ONNX model (`python -m jaxcls.export --format onnx`), converted by jax2onnx.

  MODEL_DIR/model.onnx        probabilities(images): uint8 images [B, H, W, C] (NHWC, B symbolic) -> float32
                              probabilities ([B, K]; binary: [B]); the weights are initializers inside the file
                              (a model over 2 GB keeps them in model.onnx.data next to it)
  MODEL_DIR/model.json        as for `--format jax`: class names, task, thresholds or tree, preprocessing
  MODEL_DIR/requirements.txt  what serving needs: onnxruntime, numpy (and Pillow to decode images)

The function is the one `predict` jits (`predictor.inference_function`), so normalisation, the eval forward pass,
test-time augmentation and the task's probabilities are inside the graph, as they are in the jax export. Families
whose ops jax2onnx or onnxruntime cannot run raise a ConfigError that names the family and `--format jax`
(docs/export.md has the table).
"""

import contextlib
import dataclasses
import logging
import os

import numpy as np

from jaxcls.core import paths
from jaxcls.core.errors import ConfigError

ONNX_FILE = "model.onnx"
FORMAT = "jaxcls-onnx/1"
OPSET = 23
SERVING_PACKAGES = ("onnxruntime", "numpy", "pillow")  # pillow only decodes images (examples/serve_exported.py)


def _pool_adapter(patched, pad_value):
  """jax2onnx's flax.linen pooling shims take only `pool(x, *, window_shape, strides, padding: str)`; jaxcls
  calls `nn.max_pool(x, (k, k), strides=..., padding=((p, p), (p, p)))`. This pads explicitly (-inf for max,
  0 for average: flax's count_include_pad=True) and hands the shim VALID, which it lowers to an NCHW MaxPool or
  AveragePool that onnxruntime runs (the generic 4-D reduce_window lowering is refused by onnxruntime)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def pool(x, window_shape, strides=None, padding="VALID", **kwargs):
    if kwargs.get("count_include_pad", True) is False and not isinstance(padding, str):
      raise NotImplementedError("average pooling with explicit padding and count_include_pad=False")
    if not isinstance(padding, str):
      fill = -jnp.inf if pad_value == "min" else 0
      for axis, (low, high) in enumerate(padding, start=1):  # spatial axes of [B, H, W, C]
        x = _pad_axis(x, axis, int(low), int(high), fill)
      padding = "VALID"
    return patched(x, window_shape=tuple(window_shape), strides=strides, padding=padding, **kwargs)

  return pool


def _pad_axis(x, axis: int, low: int, high: int, fill):
  """x padded with `fill` on `axis` by concatenation: jax2onnx's lax.pad lowering needs a constant batch size."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  edge = lambda width: jnp.full_like(jnp.take(x, jnp.arange(width), axis=axis), fill)
  parts = ([edge(low)] if low else []) + [x] + ([edge(high)] if high else [])
  return jnp.concatenate(parts, axis=axis) if len(parts) > 1 else x


@contextlib.contextmanager
def _plugin_fixes():
  """For the conversion only: wraps jax2onnx's flax.linen max_pool / avg_pool shims with `_pool_adapter`, and
  drops its linen BatchNorm shim (its NCHW BatchNormalization node feeds a residual Add un-transposed, which
  onnxruntime refuses: MobileNetV2), so batch norm lowers as the elementwise ops flax computes."""
  from jax2onnx.plugins.flax.linen import avg_pool, batch_norm, max_pool  # pylint: disable=g-import-not-at-top

  changes = [
    (getattr(max_pool, "MaxPoolPlugin", None), "min"),
    (getattr(avg_pool, "AvgPoolPlugin", None), "zero"),
    (getattr(batch_norm, "BatchNormPlugin", None), None),
  ]
  saved = []
  for plugin, pad_value in changes:
    if plugin is None:
      continue
    saved.append((plugin, vars(plugin).get("binding_specs")))
    original = plugin.binding_specs.__func__

    def specs(cls, original=original, pad_value=pad_value):
      if pad_value is None:
        return []
      return [
        dataclasses.replace(s, make_value=lambda orig, make=s.make_value: _pool_adapter(make(orig), pad_value))
        if getattr(s, "attr", None) in ("max_pool", "avg_pool")
        else s
        for s in original(cls)
      ]

    plugin.binding_specs = classmethod(specs)
  try:
    yield
  finally:
    for plugin, original in saved:
      if original is None:
        del plugin.binding_specs
      else:
        plugin.binding_specs = original


class _ConverterNoise(logging.Filter):
  """Drops jax2onnx's and onnx_ir's records below ERROR: jax2onnx logs its arguments at INFO on the root logger,
  onnx_ir a WARNING per untyped constant; a successful export prints one line."""

  PARTS = (os.sep + "jax2onnx" + os.sep, os.sep + "onnx_ir" + os.sep)

  def filter(self, record) -> bool:
    return record.levelno >= logging.ERROR or not any(part in (record.pathname or "") for part in self.PARTS)


@contextlib.contextmanager
def _quiet_converter():
  """For the conversion only: jax2onnx's and onnx_ir's loggers (and their children) at ERROR, and
  `_ConverterNoise` on the root logger, where jax2onnx's user_interface logs."""
  noise, root = _ConverterNoise(), logging.getLogger()
  loggers = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.ERROR)
  root.addFilter(noise)
  try:
    yield
  finally:
    root.removeFilter(noise)
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def _import_jax2onnx():
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top
    import onnxruntime  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ConfigError(
      f"--format onnx needs jax2onnx and onnxruntime ({e.name} is not installed): "
      "install them as docs/export.md shows (`pip install onnx onnx-ir onnxruntime dm-pix einops equinox netron "
      "orbax-export && pip install --no-deps jax2onnx`: a plain `pip install jax2onnx` would downgrade orbax), "
      "or use --format jax."
    ) from e
  return jax2onnx


@contextlib.contextmanager
def _public_functions_restored():
  """Puts back every public jax / flax / numpy function that the conversion replaced.

  jax2onnx swaps functions such as `jnp.cumsum` for tracing versions while it converts and, in 0.17.1, leaves
  some of them in place afterwards: `jnp.cumsum(x, 0)` then raises TypeError for the rest of the process (a
  notebook that exports and then trains, or a test run). The public modules' attributes are saved before and any
  that changed are restored after, so an export leaves the process as it found it.
  """
  import sys  # pylint: disable=g-import-not-at-top

  def public_modules():
    return [
      module
      for name, module in list(sys.modules.items())
      if module is not None
      and name.split(".")[0] in ("jax", "flax", "numpy", "optax")
      and not any(part.startswith("_") for part in name.split("."))
    ]

  saved = {id(module): (module, dict(vars(module))) for module in public_modules()}
  try:
    yield
  finally:
    for module, attributes in saved.values():
      current = vars(module)
      for key, value in attributes.items():
        if callable(value) and current.get(key) is not value:
          setattr(module, key, value)


def convert(probabilities, image_shape, *, family: str, model_name: str = "jaxcls"):
  """An onnx.ModelProto of `probabilities(uint8 images [B, *image_shape])`, checked to load in onnxruntime.

  Any failure of the conversion or of onnxruntime's loading (an op jax2onnx does not cover, or that onnxruntime
  does not implement) becomes a ConfigError naming `family` and the fallback, never a converter traceback.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  with _quiet_converter():  # jax2onnx logs at INFO while it imports its plugins, too
    jax2onnx = _import_jax2onnx()
    import onnxruntime  # pylint: disable=g-import-not-at-top

    spec = jax.ShapeDtypeStruct(("B", *image_shape), jnp.uint8)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: shape-merge notes are not the user's business
    try:
      with _plugin_fixes(), _public_functions_restored():
        proto = jax2onnx.to_onnx(
          probabilities,
          [spec],
          model_name=model_name,
          opset=OPSET,
          input_names=["images"],
          output_names=["probabilities"],
        )
      session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
      session.run(None, {"images": np.zeros((1, *image_shape), np.uint8)})  # ops onnxruntime lacks fail here
    except Exception as e:  # pylint: disable=broad-except  (whatever the converter or runtime raises)
      reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
      raise ConfigError(
        f"model family {family!r} does not export to ONNX ({reason}); export it with --format jax "
        "instead (docs/export.md lists the families that convert)."
      ) from e
  return proto


def export_onnx(restored, output_dir: str, *, overwrite: bool = False) -> dict:
  """Writes model.onnx, model.json and requirements.txt for `restored` into `output_dir`; returns the metadata."""
  from jaxcls.inference import exporter, predictor  # pylint: disable=g-import-not-at-top
  from jaxcls.models import forward  # pylint: disable=g-import-not-at-top

  folder = exporter.check_output(output_dir, overwrite, (ONNX_FILE,))
  variables = forward.model_variables(restored.variables)
  probabilities = predictor.inference_function(restored)
  metadata, preprocessing = exporter.describe(restored)
  height, width = preprocessing.crop.size
  proto = convert(
    lambda images: probabilities(variables, images),
    (height, width, preprocessing.channels),
    family=restored.config.model.name,
    model_name=restored.config.model.name,
  )
  metadata = {
    "format": FORMAT,
    "function": ONNX_FILE,
    "input": "images",
    "output_name": "probabilities",
    "opset": OPSET,
    **metadata,
  }
  paths.makedirs(folder)
  _save(proto, folder / ONNX_FILE)
  exporter.write_metadata(folder, metadata, SERVING_PACKAGES)
  return metadata


def _save(proto, path) -> None:
  """model.onnx as one file (local or gs://); a model over protobuf's 2 GB cap keeps its tensors over 1 MB in
  model.onnx.data beside it, which onnx writes to a local folder only."""
  if proto.ByteSize() < 2**31 - 2**24:
    paths.write_bytes(path, proto.SerializeToString())
    return
  import onnx  # pylint: disable=g-import-not-at-top

  if str(path).startswith("gs://"):
    raise ConfigError(
      f"The ONNX model is over 2 GB, which onnx saves only to a local folder; give a local --output "
      f"instead of {path}, or use --format jax."
    )
  onnx.save_model(
    proto,
    str(path),
    save_as_external_data=True,
    all_tensors_to_one_file=True,
    location=ONNX_FILE + ".data",
    size_threshold=2**20,
  )
