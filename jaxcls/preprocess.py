"""Image files -> the uint8 [H, W, C] arrays a trained model's evaluation feeds it, for predicting on new images.

A workdir's resolved config says how its eval images were made: the folder (and tfds) sources decode, centre-crop
or squash (`dataset.eval_crop`, `dataset.center_crop_fraction`) and resize to `dataset.image_size` with Pillow's
bilinear filter; the in-memory sources squash whole images to that size with the same filter. Decoding reuses the
folder source's own decoder (EXIF orientation, pixel modes, channels, decompression-bomb limit), so a file gives the
same pixels here as it did in evaluation. Normalisation happens later, on the device (`steps.normalize`).
"""

import dataclasses
import os

import numpy as np

from jaxcls import paths as path_layer
from jaxcls.data import decode, folder, folder_scan, resize
from jaxcls.errors import ConfigError, DataError

# Sources whose eval path honours dataset.eval_crop; the others resize whole images (data/resize.py).
_CROPPING_SOURCES = ("folder", "tfds")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How one file becomes a model input: the eval crop, the channel count and the pixel limit."""
  crop: decode.Crop
  channels: int
  max_pixels: int

  def to_json(self) -> dict:
    """The settings a standalone loader needs to reproduce `load` (see examples/serve_exported.py)."""
    return {"image_size": list(self.crop.size), "channels": self.channels, "crop": self.crop.mode,
            "center_crop_fraction": self.crop.fraction, "max_image_pixels": self.max_pixels,
            "resample": "bilinear", "jpeg_draft": True}


def from_config(config) -> Preprocessing:
  """The eval preprocessing of a resolved workdir config (`restore.load_config`)."""
  ds = config.dataset
  size = resize.parse_image_size(ds.image_size)
  if size is None or not ds.mean:
    raise ConfigError("The workdir's config.json lacks the resolved image size or normalisation; it was not written "
                      "by `python -m jaxcls.main` (train into a new workdir).")
  channels = len(ds.mean)
  if channels not in (1, 3):
    raise ConfigError(f"The model takes {channels}-channel images; image files decode only to 1 (grayscale) or 3 "
                      "(RGB) channels, so predict on arrays with this model instead.")
  if ds.name in _CROPPING_SOURCES:
    _, crop = folder.crops(ds, size)
  else:
    crop = decode.Crop(size, "resize")
  return Preprocessing(crop=crop, channels=channels, max_pixels=int(ds.max_image_pixels))


def find_images(paths: list[str]) -> list[str]:
  """The files named, in order, with folders replaced by their image files (recursively, sorted).

  A file named explicitly is kept whatever its extension (its decoding decides); inside folders only the image
  extensions the folder source reads (data/decode.py) count, and hidden entries are skipped. A path that does not
  exist is kept, so that it gets its own error line.
  """
  found = []
  for path in paths:
    if _kind(path) == "folder":
      files, _ = folder_scan.image_files(path)  # the folder source's walk
      found.extend(files)
    else:
      found.append(path)
  if not found:
    raise DataError(f"No image files in {', '.join(paths) or 'the paths given'} (looked for "
                    f"{', '.join(decode.EXTENSIONS)}); pass image files or folders holding them.")
  return found


def load(paths: list[str], preprocessing: Preprocessing, workers: int = 0) -> tuple[np.ndarray, list[str | None]]:
  """(uint8 [n, H, W, C] images of the readable files, per path: None or the reason it could not be read).

  The decoding is the folder source's (`folder.decode_all`), in a thread pool of `workers` (0 = one per CPU).
  """
  unreadable = {p: _UNREADABLE[kind] for p in paths if (kind := _kind(p)) != "file"}
  readable = [p for p in paths if p not in unreadable]
  images, _, skipped = folder.decode_all(readable, preprocessing.crop, preprocessing.channels,
                                         preprocessing.max_pixels, workers or os.cpu_count() or 1)
  reasons = dict(skipped)
  reasons.update(unreadable)
  return images, [reasons.get(p) for p in paths]


_UNREADABLE = {"missing": "no such file", "folder": "a folder, not an image file",
               "special": "not a regular file (a FIFO, socket or device is never opened)"}


def _kind(path: str) -> str:
  """'file', 'folder', 'missing' or 'special', for a local path or a gs:// object, without opening it."""
  if path_layer.is_remote(path):
    target = path_layer.path(path, "image path")
    return "folder" if target.is_dir() else "file" if target.exists() else "missing"
  if os.path.isdir(path):
    return "folder"
  if os.path.isfile(path):
    return "file"
  return "special" if os.path.lexists(path) and os.path.exists(path) else "missing"
