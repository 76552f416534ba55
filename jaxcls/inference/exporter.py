"""A trained workdir as a self-contained model: the library behind `python -m jaxcls.export`.

Writes a trained model as a self-contained inference function that runs without jaxcls (the packages of its
requirements.txt; `--format onnx` writes model.onnx instead, see jaxcls/inference/onnx_export.py):

  MODEL_DIR/model.jax     `jax.export` serialization (StableHLO) of probabilities(weights, images): uint8 images
                          [B, H, W, C] with a symbolic batch size B -> float32 probabilities ([B, K]; binary: [B])
  MODEL_DIR/weights.npz   the weights, arrays w00000, w00001, ... in the order the function takes them
  MODEL_DIR/model.json    class names, task, thresholds or class tree, and the preprocessing (size, crop)
  MODEL_DIR/requirements.txt  what a loader needs, pinned to the versions that wrote it: jax and jaxlib,
                          flatbuffers (jax.export.deserialize imports it, and jax does not declare it), numpy, and
                          Pillow for examples/serve_exported.py's image decoding

The function is the one `python -m jaxcls.predict` jits (`predictor.inference_function`): normalisation, the
eval-mode forward pass, the test-time augmentation views of the workdir's `eval_tta` (jaxcls/models/tta.py) and
the task's probabilities are inside it, so a loader only decodes and resizes images (examples/serve_exported.py
shows how). The weights are an argument rather than constants baked into the
StableHLO: a serialized module has a 2 GB limit and embedding large constants multiplies the memory export needs,
while an argument works for every model size and keeps the function file small.
"""

import importlib.metadata
import io
import json

import numpy as np

from jaxcls.core import paths
from jaxcls.core.errors import ConfigError

FUNCTION_FILE, WEIGHTS_FILE, METADATA_FILE = "model.jax", "weights.npz", "model.json"
REQUIREMENTS_FILE = "requirements.txt"
FORMAT = "jaxcls-export/1"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
# What loading and running model.jax imports (examples/serve_exported.py): jax.export.deserialize needs flatbuffers,
# which jax leaves undeclared; Pillow decodes images. jax's own dependencies (ml_dtypes, scipy, ...) come with it.
SERVING_PACKAGES = ("jax", "jaxlib", "flatbuffers", "numpy", "pillow")


def serving_requirements(packages) -> list[str]:
  """`name==version` lines for `packages`, at the versions installed here (the ones that wrote the export)."""
  lines = []
  for name in packages:
    try:
      lines.append(f"{name}=={importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
      lines.append(name)  # not installed where the export ran (Pillow, say): any version
  return lines


def write_metadata(folder, metadata: dict, packages) -> None:
  """model.json (with the requirements in it) and requirements.txt (for `pip install -r`) into `folder`."""
  requirements = serving_requirements(packages)
  metadata["requirements"] = requirements
  paths.write_text(folder / METADATA_FILE, json.dumps(metadata, indent=1))
  paths.write_text(folder / REQUIREMENTS_FILE, "".join(line + "\n" for line in requirements))


def check_output(output_dir: str, overwrite: bool = False, files=(FUNCTION_FILE, WEIGHTS_FILE)):
  """The output folder as a path, or a one-line ConfigError: it is a file, or it holds an export and not `overwrite`.

  A file is never replaced, even with `overwrite`; an existing export is replaced only with `overwrite`
  (--overwrite), so a second export cannot silently change a model someone serves.
  """
  folder = paths.path(output_dir, "--output")  # a local folder or a gs:// URL
  if folder.exists() and not folder.is_dir():
    raise ConfigError(f"--output={output_dir} is an existing file; give a folder (new or existing) to export into.")
  held = [name for name in (*files, METADATA_FILE) if (folder / name).exists()]
  if held and not overwrite:
    raise ConfigError(
      f"--output={output_dir} already holds an export ({', '.join(held)}); pass --overwrite to "
      "replace it, or give a new folder."
    )
  return folder


def export_model(restored, output_dir: str, *, platforms=("cpu", "cuda", "tpu"), overwrite: bool = False) -> dict:
  """Writes model.jax, weights.npz, model.json and requirements.txt for `restored` (a `restore.Restored`) into
  `output_dir`; returns the metadata.

  An `output_dir` that already holds an export is refused unless `overwrite` (see `check_output`).
  """
  check_output(output_dir, overwrite)  # before the slow part
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from jaxcls.data import preprocess  # pylint: disable=g-import-not-at-top
  from jaxcls.inference import predictor as predict
  from jaxcls.models import forward

  platforms = tuple(p.strip().lower() for p in platforms if p.strip())
  unknown = sorted(set(platforms) - set(PLATFORMS))
  if not platforms or unknown:
    raise ConfigError(f"--platforms={','.join(platforms)} is not valid; use some of {', '.join(PLATFORMS)}.")
  preprocessing = preprocess.from_config(restored.config)
  leaves, treedef = jax.tree.flatten(forward.model_variables(restored.variables))
  leaves = [np.asarray(leaf) for leaf in leaves]
  probabilities = predict.inference_function(restored)

  def serve(weights, images):
    return probabilities(jax.tree.unflatten(treedef, weights), images)

  height, width = preprocessing.crop.size
  image_spec = jax.ShapeDtypeStruct(
    jax.export.symbolic_shape(f"b, {height}, {width}, {preprocessing.channels}"), jnp.uint8
  )
  weight_specs = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in leaves]
  exported = jax.export.export(jax.jit(serve), platforms=platforms)(weight_specs, image_spec)
  described, _ = describe(restored)
  metadata = {
    "format": FORMAT,
    "function": FUNCTION_FILE,
    "weights": WEIGHTS_FILE,
    "num_weights": len(leaves),
    "platforms": list(exported.platforms),
    **described,
  }
  folder = check_output(output_dir, overwrite)
  paths.makedirs(folder)
  paths.write_bytes(folder / FUNCTION_FILE, exported.serialize())
  weights = io.BytesIO()
  np.savez(weights, **{f"w{i:05d}": leaf for i, leaf in enumerate(leaves)})
  paths.write_bytes(folder / WEIGHTS_FILE, weights.getvalue())
  write_metadata(folder, metadata, SERVING_PACKAGES)
  return metadata


def describe(restored) -> tuple[dict, object]:
  """(model.json's fields that every export format shares, the preprocessing the function expects)."""
  from jaxcls.data import preprocess  # pylint: disable=g-import-not-at-top
  from jaxcls.models import tta  # pylint: disable=g-import-not-at-top

  preprocessing = preprocess.from_config(restored.config)
  tta_kind = tta.from_config(restored.config)
  names = list(restored.info.class_names)
  return {
    "workdir": restored.workdir,
    "step": restored.step,
    "model": restored.config.model.name,
    "dtype": restored.config.dtype,
    "task": restored.config.task.type,
    "class_names": names,
    # Test-time augmentation runs inside the function; for reference, with the forward passes it costs per image.
    "eval_tta": tta_kind,
    "forward_passes": tta.PASSES[tta_kind],
    **restored.task.export_metadata(names),  # the output's meaning, thresholds or tree
    # Normalisation (mean, std) happens inside the function; these are for reference only.
    "preprocessing": {**preprocessing.to_json(), "mean": list(restored.info.mean), "std": list(restored.info.std)},
  }, preprocessing


FORMATS = ("jax", "onnx")


def export_workdir(
  workdir: str,
  output_dir: str,
  *,
  step: int | str | None = None,
  platforms=("cpu", "cuda", "tpu"),
  overwrite: bool = False,
  format: str = "jax",
) -> dict:  # pylint: disable=redefined-builtin
  """Restores checkpoint `step` (default: latest) of `workdir` and exports it into `output_dir` as `format`:
  'jax' (model.jax + weights.npz, see above) or 'onnx' (model.onnx, see onnx_export)."""
  from jaxcls.store import restore  # pylint: disable=g-import-not-at-top

  if format not in FORMATS:
    raise ConfigError(f"--format={format} is not valid; use one of {', '.join(FORMATS)}.")
  if format == "onnx":
    from jaxcls.inference import onnx_export  # pylint: disable=g-import-not-at-top

    check_output(output_dir, overwrite, (onnx_export.ONNX_FILE,))  # before restoring
    return onnx_export.export_onnx(restore.restore(workdir, step), output_dir, overwrite=overwrite)
  check_output(output_dir, overwrite)  # before restoring
  return export_model(restore.restore(workdir, step), output_dir, platforms=platforms, overwrite=overwrite)
