"""Runs a model written by `python -m jaxcls.export` on image files, without jaxcls: jax, numpy and Pillow only.

  python examples/serve_exported.py MODEL_DIR photo.jpg more.png [--top_k 5]

Prints one line per file: the top-k classes with probabilities (binary: the positive-class probability against the
threshold; multi-label: the labels at or above their thresholds; hierarchical: the predicted path), as
`python -m jaxcls.predict` does. Copy the functions you need into your own server: `load_model` once, then
`load_image` per file and `model(images)` per batch (any batch size: the batch dimension is symbolic).
"""

import argparse
import json
import os
import sys

import jax
import numpy as np
from PIL import Image, ImageOps


def load_model(model_dir: str):
  """(model, metadata): model(uint8 images [B, H, W, C]) -> float32 probabilities, metadata from model.json."""
  with open(os.path.join(model_dir, "model.json")) as f:
    meta = json.load(f)
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
    return (f"{names[int(above)]} (P({meta['positive_class']}) {positive:.4f} {'>=' if above else '<'} threshold "
            f"{meta['threshold']:g})")
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("model_dir")
  parser.add_argument("images", nargs="+")
  parser.add_argument("--top_k", type=int, default=5)
  args = parser.parse_args()
  model, meta = load_model(args.model_dir)
  images, lines = [], []
  for path in args.images:
    try:
      images.append(load_image(path, meta["preprocessing"]))
      lines.append(None)
    except (OSError, ValueError, SyntaxError) as e:
      lines.append(f"{path}: error: {e}")
  probs = iter(model(np.stack(images)) if images else ())
  for path, line in zip(args.images, lines):
    print(line or f"{path}: {describe(next(probs), meta, args.top_k)}")
  sys.exit(0 if images else 1)

if __name__ == "__main__":
  main()
