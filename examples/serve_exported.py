"""Runs a model written by `python -m jaxcls.export` on image files, without jaxcls.

  python examples/serve_exported.py MODEL_DIR photo.jpg more.png [--top_k 5] [--batch_size 64] [--workers N]

MODEL_DIR/requirements.txt lists what this needs, at the versions that wrote the model: for `--format jax`, jax,
jaxlib, flatbuffers (jax.export.deserialize imports it), numpy and Pillow; for `--format onnx`, onnxruntime, numpy
and Pillow (`pip install -r MODEL_DIR/requirements.txt`). A missing one is named in one line before anything runs.

Prints one line per file: the top-k classes with probabilities (binary: the positive-class probability against the
threshold; multi-label: the labels at or above their thresholds; hierarchical: the predicted path), as
`python -m jaxcls.predict` does, then the images/s on stderr. Copy the functions you need into your own server:
`load_model` once, then `load_image` per file and `model(images)` per batch (any batch size: the batch dimension
is symbolic). `serve` shows the loop: files go through in batches of --batch_size, decoded in a thread pool a batch
ahead of the model, so memory holds a few batches however many files there are.
"""

import argparse
import concurrent.futures
import importlib.metadata
import json
import os
import re
import sys
import time

_STARTED = time.perf_counter()  # before importing jax: the images/s line counts the whole start-up

try:  # a missing package is reported by `check_requirements`, naming MODEL_DIR/requirements.txt
  import numpy as np  # pylint: disable=wrong-import-position
  from PIL import Image, ImageOps  # pylint: disable=wrong-import-position
except ImportError as _error:  # pylint: disable=invalid-name
  _IMPORT_ERROR = _error
else:
  _IMPORT_ERROR = None


class MissingRequirement(RuntimeError):
  """A package that MODEL_DIR/requirements.txt declares is not installed."""


def check_requirements(model_dir: str) -> list[str]:
  """The requirements of MODEL_DIR (requirements.txt); raises MissingRequirement naming every one not installed.

  Only presence is checked: the versions are the ones that wrote the model, and a newer jax still loads it (jax
  keeps reading serialized exports for at least 6 months of releases).
  """
  path = os.path.join(model_dir, "requirements.txt")
  if not os.path.exists(path):  # an export older than requirements.txt
    return []
  with open(path) as f:
    requirements = [line.strip() for line in f if line.strip() and not line.startswith("#")]
  missing = []
  for requirement in requirements:
    name = re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0]
    try:
      importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      missing.append(requirement)
  if missing:
    raise MissingRequirement(
      f"{model_dir} needs {', '.join(missing)}, which is not installed here: pip install -r {path}"
    )
  if _IMPORT_ERROR is not None:  # installed per its metadata, yet not importable
    raise MissingRequirement(f"{_IMPORT_ERROR}; {path} lists what serving needs")
  return requirements


def load_model(model_dir: str):
  """(model, metadata): model(uint8 images [B, H, W, C]) -> float32 probabilities, metadata from model.json.

  model.jax (`--format jax`) runs through jax; model.onnx (`--format onnx`) through onnxruntime.
  """
  check_requirements(model_dir)
  with open(os.path.join(model_dir, "model.json")) as f:
    meta = json.load(f)
  if meta["format"].startswith("jaxcls-onnx/"):
    import onnxruntime  # pylint: disable=g-import-not-at-top

    session = onnxruntime.InferenceSession(
      os.path.join(model_dir, meta["function"]), providers=onnxruntime.get_available_providers()
    )
    return (lambda images: session.run(None, {meta["input"]: np.asarray(images, np.uint8)})[0]), meta
  import jax  # pylint: disable=g-import-not-at-top

  with open(os.path.join(model_dir, meta["function"]), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with np.load(os.path.join(model_dir, meta["weights"])) as npz:
    weights = [jax.device_put(npz[f"w{i:05d}"]) for i in range(meta["num_weights"])]
  call = jax.jit(exported.call)  # compiled once per batch size
  return (lambda images: np.asarray(call(weights, np.asarray(images, np.uint8)))), meta


def load_image(path: str, prep: dict) -> np.ndarray:
  """uint8 [H, W, C] exactly as jaxcls's evaluation decodes, crops and resizes it (jaxcls/data/decode.py)."""
  height, width = prep["image_size"]
  with Image.open(path) as image:
    if image.size[0] * image.size[1] > prep["max_image_pixels"]:
      raise ValueError(f"{image.size[0]}x{image.size[1]} pixels is more than max_image_pixels")
    upright = _orientation(image) in (0, 1)
    box = _box(image.size, prep) if upright else None
    if upright and image.format == "JPEG":  # decode large JPEGs at 1/2, 1/4 or 1/8 scale, as jaxcls does
      scale = min((box[2] - box[0]) / width, (box[3] - box[1]) / height)
      if scale >= 2:
        full = image.size
        mode = image.mode if image.mode in ("RGB", "L") else "RGB"
        image.draft(mode, (int(full[0] / scale), int(full[1] / scale)))
        fx, fy = image.size[0] / full[0], image.size[1] / full[1]
        box = (box[0] * fx, box[1] * fy, min(box[2] * fx, image.size[0]), min(box[3] * fy, image.size[1]))
    image.load()
    if not upright:  # EXIF orientation: crop the image as a person sees it
      try:
        image = ImageOps.exif_transpose(image)
      except Exception:  # pylint: disable=broad-except  (a malformed tag is ignored, as jaxcls does)
        pass
      box = _box(image.size, prep)
    image = _to_mode(image, prep["channels"])
    out = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, box=box, reducing_gap=None), np.uint8)
  return out[..., None] if out.ndim == 2 else out


def _orientation(image) -> int:
  try:
    return int(image.getexif().get(0x0112, 0) or 0)
  except Exception:  # pylint: disable=broad-except  (malformed EXIF: treat as unrotated)
    return 0


def _box(size, prep):
  """The source region: the whole image ('resize'), or the centre crop with the target's aspect ratio."""
  width, height = size
  if prep["crop"] == "resize":
    return (0.0, 0.0, float(width), float(height))
  target_h, target_w = prep["image_size"]
  side = min(width / target_w, height / target_h) * prep["center_crop_fraction"]
  w, h = target_w * side, target_h * side
  return ((width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2)


def _to_mode(image, channels):
  """8-bit RGB or L: 16-bit scaled down, palettes expanded, transparency composited onto white."""
  if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
    values = np.asarray(image).astype(np.float64)
    top = 65535.0 if image.mode != "F" and values.max(initial=0) > 255 else 255.0
    image = Image.fromarray(np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = image.convert("RGBA")
    image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
  return image.convert("RGB" if channels == 3 else "L")


def describe(probs: np.ndarray, meta: dict, top_k: int) -> str:
  """One line for one image's probabilities, with the task's decision."""
  names = meta["class_names"]
  if meta["task"] == "binary":
    positive = float(probs)
    above = np.float32(positive) >= np.float32(meta["threshold"])
    chosen = names.index(meta["positive_class"]) if above else 1 - names.index(meta["positive_class"])
    return (
      f"{names[chosen]} (P({meta['positive_class']}) {positive:.4f} {'>=' if above else '<'} threshold "
      f"{meta['threshold']:g})"
    )
  order = np.argsort(-probs, kind="stable")[:top_k]
  ranked = ", ".join(f"{names[i]} {probs[i]:.4f}" for i in order)
  if meta["task"] == "multilabel":
    above = [i for i in np.argsort(-probs, kind="stable") if probs[i] >= np.float32(meta["thresholds"][i])]
    shown = ", ".join(f"{names[i]} {probs[i]:.4f}" for i in above) or "no label at or above its threshold"
    return f"{shown} (top: {ranked})"
  if meta["task"] == "hierarchical":
    leaf = int(np.argmax(probs))
    tree = meta["tree"]
    path = [tree["level_names"][level][node] for level, node in enumerate(tree["paths"][leaf])]
    return f"{' > '.join(path)} {probs[leaf]:.4f} (top: {ranked})"
  return ranked


def batches(items, size):
  """Consecutive lists of at most `size` items: what is decoded, run and printed at once (bounded memory)."""
  if size < 1:
    raise ValueError(f"--batch_size={size} must be at least 1")
  return [list(items[start : start + size]) for start in range(0, len(items), size)]


def _try_load(path, prep):
  """(image, None), or (None, the error line's reason) for a file that cannot be read."""
  try:
    return load_image(path, prep), None
  except (OSError, ValueError, SyntaxError) as e:
    return None, str(e)


def serve(model, meta, paths, top_k=5, batch_size=64, workers=0, out=sys.stdout):
  """Prints a line per file, batch by batch; returns how many were predicted.

  The next batch decodes in the pool while the model runs this one. A run of several batches pads the short last
  batch with zero images to `batch_size`, so the model compiles for one batch size only; padding rows are dropped.
  """
  chunks = batches(paths, batch_size)
  rows = batch_size if len(chunks) > 1 else None
  predicted = 0
  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
    pending = [pool.submit(_try_load, path, meta["preprocessing"]) for path in chunks[0]] if chunks else []
    for index, chunk in enumerate(chunks):
      results = [future.result() for future in pending]
      if index + 1 < len(chunks):
        pending = [pool.submit(_try_load, path, meta["preprocessing"]) for path in chunks[index + 1]]
      images = [image for image, _ in results if image is not None]
      probs = iter(_run(model, images, rows))
      for path, (image, error) in zip(chunk, results):
        print(f"{path}: error: {error}" if image is None else f"{path}: {describe(next(probs), meta, top_k)}", file=out)
      predicted += len(images)
  return predicted


def _run(model, images, rows):
  """The model's probabilities of a list of images, padded with zero images to `rows` (when given)."""
  if not images:
    return []
  batch = np.stack(images)
  if rows and rows > len(batch):
    batch = np.concatenate([batch, np.zeros((rows - len(batch),) + batch.shape[1:], np.uint8)])
  return model(batch)[: len(images)]


def main():
  """The command line: load MODEL_DIR (exit 2 naming a missing requirement), serve the files, print images/s."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("model_dir")
  parser.add_argument("images", nargs="+")
  parser.add_argument("--top_k", type=int, default=5)
  parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass")
  parser.add_argument("--workers", type=int, default=0, help="decoding threads (0 = one per CPU core)")
  args = parser.parse_args()
  try:
    model, meta = load_model(args.model_dir)
  except MissingRequirement as e:
    print(f"serve_exported.py: error: {e}", file=sys.stderr)
    sys.exit(2)
  predicted = serve(model, meta, args.images, args.top_k, args.batch_size, args.workers)
  sys.stdout.flush()
  seconds = time.perf_counter() - _STARTED
  print(
    f"served {predicted} image(s) in {seconds:.2f} s: {predicted / max(seconds, 1e-9):.1f} images/s", file=sys.stderr
  )
  sys.exit(0 if predicted else 1)


if __name__ == "__main__":
  main()
