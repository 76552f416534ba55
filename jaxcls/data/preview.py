"""Writes a PNG grid of training examples before and after augmentation, captioned with their class names.

  python -m jaxcls.show_data --config configs/default.py --output grid.png [--num 32] [--config.augment=...]

Looking at the pictures is the quickest check that a pipeline is right: labels that match the images, crops that
keep the object, colours that survive augmentation. The top block is what the source yields (the first training
batch of `seed`); the bottom block is the same examples after `config.augment`, as the train step sees them before
normalisation. Mixed (Mixup / CutMix) labels are captioned with their two largest classes and weights.
"""

import inspect
import io
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxcls import data
from jaxcls.core import paths
from jaxcls.core.errors import ConfigError
from jaxcls.data import augment as augment_lib

_CELL = 112  # pixels per image in the grid: small images are enlarged (nearest) so pixels stay visible
_CAPTION = 30  # pixels of text under each image
_COLUMNS = 8


def augment_batch(config, images: np.ndarray, labels: np.ndarray, num_classes: int):
  """(images, labels) after `config.augment`, with labels [B] ints or [B, K] soft weights."""
  build = augment_lib.build
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  if "num_classes" in inspect.signature(build).parameters:  # fn(key, images, labels) -> (images, labels)
    fn = build(config.augment, num_classes)
    out_images, out_labels = jax.jit(fn)(key, jnp.asarray(images), jnp.asarray(labels))
  else:  # the older fn(key, images) -> images
    out_images, out_labels = jax.jit(build(config.augment))(key, jnp.asarray(images)), labels
  return np.asarray(out_images), np.asarray(out_labels)


def caption(label, class_names: Sequence[str]) -> str:
  """The class name of a hard label, or the two heaviest classes of a soft one ('Coat 0.70 + Shirt 0.30')."""
  label = np.asarray(label)
  if label.ndim == 0:
    return class_names[int(label)]
  top = np.argsort(-label, kind="stable")[:2]
  if label[top[1]] < 0.005:
    return class_names[int(top[0])]
  return " + ".join(f"{class_names[int(k)]} {label[k]:.2f}" for k in top)


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
    return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
  """`text` wrapped to at most two lines of `width` pixels (the second shortened with '...')."""
  words, lines = text.split(" "), [""]
  for word in words:
    trial = (lines[-1] + " " + word).strip()
    if draw.textlength(trial, font=font) <= width or not lines[-1]:
      lines[-1] = trial
    else:
      lines.append(word)
  lines = lines[:2]
  while draw.textlength(lines[-1], font=font) > width and len(lines[-1]) > 3:
    lines[-1] = lines[-1][:-4] + "..."
  return lines


def _block(images: np.ndarray, labels: np.ndarray, class_names, title: str, font) -> Image.Image:
  """One titled grid of captioned images."""
  rows = math.ceil(len(images) / _COLUMNS)
  header = 28
  canvas = Image.new("RGB", (_COLUMNS * _CELL, header + rows * (_CELL + _CAPTION)), "white")
  draw = ImageDraw.Draw(canvas)
  draw.text((6, 6), title, fill="black", font=_font(16))
  for i, (image, label) in enumerate(zip(images, labels)):
    row, col = divmod(i, _COLUMNS)
    x, y = col * _CELL, header + row * (_CELL + _CAPTION)
    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image[..., :3]).convert("RGB")
    scale = (_CELL - 8) / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    enlarge = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
    picture = picture.resize(size, enlarge)
    canvas.paste(picture, (x + (_CELL - size[0]) // 2, y + 4 + (_CELL - 8 - size[1]) // 2))
    for j, line in enumerate(_fit(draw, caption(label, class_names), font, _CELL - 6)):
      draw.text((x + 3, y + _CELL + j * 13), line, fill="black", font=font)
  return canvas


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def check_output(output: str, num: int) -> None:
  """One-line ConfigErrors for an --output that is no image file name or a --num below 1 (before any data loads)."""
  if os.path.splitext(output)[1].lower() not in IMAGE_FORMATS:
    raise ConfigError(f"--output={output} must end in .png, .jpg or .jpeg: the grid is an image.")
  if num < 1:
    raise ConfigError(f"--num={num} must be at least 1.")


def write_grid(config, output: str, num: int = 32) -> str:
  """Writes the before/after grid of the first `num` training examples (all of them when there are fewer) to
  `output` (local or gs://; its folder is created), in one step; returns the path."""
  check_output(output, num)
  dataset = data.build(config, process_index=0, process_count=1)
  info = dataset.info
  num = max(1, min(num, info.num_train))
  batch = next(dataset.train_batches(num, start_step=0, seed=config.seed))
  after_images, after_labels = augment_batch(config, batch["image"], batch["label"], info.num_classes)
  font = _font(11)
  name = config.dataset.name + (f" {config.dataset.tfds_name}" if config.dataset.tfds_name else "")
  before = _block(
    batch["image"],
    batch["label"],
    info.class_names,
    f"Before augmentation: {name}, {num} training examples, images {info.image_shape}",
    font,
  )
  after = _block(
    after_images, after_labels, info.class_names, f"After augmentation: {config.augment or '(none)'}", font
  )
  grid = Image.new("RGB", (before.width, before.height + after.height + 8), (180, 180, 180))
  grid.paste(before, (0, 0))
  grid.paste(after, (0, before.height + 8))
  encoded = io.BytesIO()
  grid.save(encoded, format=IMAGE_FORMATS[os.path.splitext(output)[1].lower()])
  paths.makedirs(paths.path(output, "--output").parent)
  paths.write_bytes(output, encoded.getvalue())
  return output
