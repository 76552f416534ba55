"""Checks and converts user arrays into the form the pipeline guarantees: uint8 NHWC images, int32 labels.

Every rejection names the array, what was found and how to fix it, because malformed arrays are the most common
way a user's first run fails.
"""

from collections.abc import Sequence

import numpy as np

from jaxcls.core.errors import DataError

_STATS_EXACT_PIXELS = 100_000_000  # beyond this, mean/std come from a sample (4 decimals need no more)
_STATS_CHUNK = 4096  # images per step of the running sums: bounds memory


def as_uint8_images(images: np.ndarray, *, what: str) -> np.ndarray:
  """[N, H, W] or [N, H, W, C] images as uint8 [N, H, W, C]; uint8 input (and memory maps) is not copied.

  Rules: bool -> 0/255; other integers must lie in 0..255; floats must lie in [0, 1] and are scaled by 255 and
  rounded. Anything else is rejected rather than guessed.
  """
  if not isinstance(images, np.ndarray):
    images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or min(images.shape[1:], default=0) < 1:
    raise DataError(f"{what} have shape {images.shape}; expected [N, height, width] or [N, height, width, channels].")
  if images.dtype == np.uint8:
    return images
  if images.dtype == np.bool_:
    return images.astype(np.uint8) * 255
  if np.issubdtype(images.dtype, np.integer):
    low, high = (int(images.min()), int(images.max())) if images.size else (0, 0)
    if low < 0 or high > 255:
      raise DataError(
        f"{what} are {images.dtype} with values in [{low}, {high}]; integer images must lie in "
        "0..255 (rescale them, or store uint8)."
      )
    return images.astype(np.uint8)
  if np.issubdtype(images.dtype, np.floating):
    low, high = (float(np.min(images)), float(np.max(images))) if images.size else (0.0, 0.0)
    if not (0.0 <= low and high <= 1.0):  # also catches NaN
      raise DataError(
        f"{what} are {images.dtype} with values in [{low:g}, {high:g}]; float images must lie in "
        "[0, 1] (divide 0..255 data by 255, or store uint8)."
      )
    return np.round(images * 255.0).astype(np.uint8)
  raise DataError(f"{what} have dtype {images.dtype}; use uint8 (or floats in [0, 1]).")


def as_labels(labels: np.ndarray, count: int, *, what: str) -> np.ndarray:
  """Integer labels of shape [N] (or [N, 1]) as int32 [N]; or multi-hot [N, K] label sets as int32 [N, K]."""
  labels = np.asarray(labels)
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if labels.ndim == 2 and len(labels) == count:
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
      raise DataError(f"{what} have dtype {labels.dtype}; multi-label sets must be 0/1 integers or booleans [N, K].")
    if len(labels) and not np.isin(labels, (0, 1)).all():
      raise DataError(
        f"{what} are a [N, K] array with values other than 0 and 1; a multi-label set is one 0/1 "
        "column per class (multi-hot)."
      )
    return labels.astype(np.int32)
  if labels.ndim != 1 or len(labels) != count:
    raise DataError(f"{what} have shape {labels.shape}; expected [{count}] (one integer label per image).")
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{what} have dtype {labels.dtype}; labels must be integers 0..K-1 (map class names to ids).")
  if len(labels) and labels.min() < 0:
    raise DataError(f"{what} contain the negative label {int(labels.min())}; labels must be integers 0..K-1.")
  return labels.astype(np.int32)


def check_labels(
  train_labels: np.ndarray, eval_labels: np.ndarray, class_names: Sequence[str] | None, *, what: str
) -> int:
  """The number of classes, after checking that labels are 0..K-1 (contiguous unless class_names fixes K).

  Multi-hot [N, K] label sets have K classes: one column each.
  """
  if train_labels.ndim == 2 or eval_labels.ndim == 2:
    widths = {labels.shape[1] if labels.ndim == 2 else None for labels in (train_labels, eval_labels)}
    if len(widths) != 1 or None in widths:
      raise DataError(
        f"The {what} training and eval labels must both be multi-hot [N, K] with the same K, or both "
        "one integer per image."
      )
    num_classes = widths.pop()
    if class_names is not None and len(class_names) != num_classes:
      raise DataError(
        f"The {what} label sets have {num_classes} columns but there are {len(class_names)} class "
        "names; give one name per column."
      )
    return num_classes
  largest = int(max(train_labels.max(initial=0), eval_labels.max(initial=0)))
  if class_names is not None:
    num_classes = len(class_names)
    if largest >= num_classes:
      raise DataError(
        f"The {what} labels go up to {largest} but there are {num_classes} class names; labels must "
        f"be 0..{num_classes - 1}."
      )
    return num_classes
  num_classes = largest + 1
  missing = np.setdiff1d(np.arange(num_classes), train_labels)
  if len(missing):
    shown = ", ".join(str(m) for m in missing[:10]) + (", ..." if len(missing) > 10 else "")
    raise DataError(
      f"The {what} training labels skip {shown} of 0..{largest}; labels must be contiguous ids "
      "0..K-1 (remap them, or give class_names to declare classes without training examples)."
    )
  return num_classes


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std in [0, 1] units of uint8 images: exact up to 100M values, else from a sample.

  Counting the 256 pixel values per channel is exact and much faster than float sums.
  """
  count, channels = len(images), images.shape[-1]
  pick = None
  if images[0].size * count > _STATS_EXACT_PIXELS:
    pick = np.sort(np.random.default_rng(0).choice(count, _STATS_EXACT_PIXELS // images[0].size, replace=False))
  histogram = np.zeros((channels, 256), np.int64)
  for start in range(0, count if pick is None else len(pick), _STATS_CHUNK):
    chunk = images[start : start + _STATS_CHUNK] if pick is None else images[pick[start : start + _STATS_CHUNK]]
    chunk = np.asarray(chunk)
    for c in range(channels):
      histogram[c] += np.bincount(chunk[..., c].ravel(), minlength=256)
  values = np.arange(256) / 255.0
  weights = histogram / histogram.sum(1, keepdims=True)
  mean = weights @ values
  std = np.sqrt(np.maximum(weights @ values**2 - mean**2, 0.0))
  std = np.where(std < 1e-3, 1.0, std)  # constant channels: normalising would divide by ~0
  return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
