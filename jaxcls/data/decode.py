"""Decoding one image file with Pillow into the uint8 [h, w, c] array the pipeline wants.

Every file format and pixel mode a user's folder may hold ends up as 8-bit RGB (or grayscale): EXIF orientation
is applied, transparency is composited onto white (so a transparent background does not turn black), palette,
CMYK and 16-bit images are converted. Files are refused, with a reason, rather than half-decoded: the caller skips
them and reports the reason.
"""

import dataclasses
import io

import numpy as np
from PIL import Image, ImageOps

from jaxcls.core import paths

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DecodeError(Exception):
  """The file cannot be used as an image; the message is the reason written to skipped_files.txt."""


@dataclasses.dataclass(frozen=True)
class Crop:
  """How a decoded image becomes `size` (height, width).

  mode 'resize' squashes the whole image, 'center' resizes the shorter side then crops the centre `fraction`,
  'random_resized' takes the Inception-style crop (a random box of `area` x the image and `aspect` ratio) drawn
  from the numpy generator passed to `decode`.
  """

  size: tuple[int, int]
  mode: str = "resize"
  fraction: float = 0.875
  area: tuple[float, float] = (0.08, 1.0)
  aspect: tuple[float, float] = (0.75, 4 / 3)


def decode(path: str, crop: Crop, channels: int, max_pixels: int, rng: np.random.Generator | None = None) -> np.ndarray:
  """uint8 [height, width, channels] of the image at `path`, cropped and resized as `crop` says.

  Raises DecodeError for unreadable, truncated (Pillow's default: never padded with grey), oversized
  (decompression bomb) or non-image files.
  """
  try:
    with Image.open(_source(path)) as image:
      width, height = image.size
      if width * height > max_pixels:
        raise DecodeError(
          f"refused as a possible decompression bomb: {width}x{height} pixels is more than "
          f"dataset.max_image_pixels={max_pixels}"
        )
      upright = _orientation(image) in (0, 1)
      box = _box(image.size, crop, rng) if upright else None
      # Let JPEG decode at 1/2, 1/4 or 1/8 scale when the crop is still at least the target size afterwards:
      # most of the cost of large photos disappears (the effect of TF's decode_and_crop_jpeg).
      if upright and image.format == "JPEG":
        scale = min((box[2] - box[0]) / crop.size[1], (box[3] - box[1]) / crop.size[0])
        if scale >= 2:
          box = _draft(image, box, scale)
      image.load()
      if not upright:  # the crop is drawn on the image as a person sees it
        image = _transpose(image)
        box = _box(image.size, crop, rng)
      image = _to_mode(image, channels)
      out = image.resize((crop.size[1], crop.size[0]), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
  except DecodeError:
    raise
  except Image.DecompressionBombError as e:
    raise DecodeError(f"refused as a possible decompression bomb ({e})") from e
  except (OSError, SyntaxError, ValueError, EOFError, Image.UnidentifiedImageError) as e:
    raise DecodeError(f"unreadable or truncated image ({type(e).__name__}: {e})") from e
  array = np.asarray(out, np.uint8)
  return array[..., None] if array.ndim == 2 else array


def _draft(image: Image.Image, box: tuple[float, ...], scale: float) -> tuple[float, ...]:
  """Asks libjpeg to decode at 1/2, 1/4 or 1/8 scale (at most `scale`); returns `box` in the decoded pixels.

  Decoded pixel k covers source pixels [k s, (k + 1) s) whatever the rounding up of the decoded size, so the box
  is divided by s itself (Pillow returns the source's extent in decoded pixels), not by the ratio of the sizes.
  """
  width, height = image.size
  drafted = image.draft(image.mode if image.mode in ("RGB", "L") else "RGB", (int(width / scale), int(height / scale)))
  if drafted is None:
    return box
  fx, fy = drafted[1][2] / width, drafted[1][3] / height
  return (box[0] * fx, box[1] * fy, min(box[2] * fx, image.size[0]), min(box[3] * fy, image.size[1]))


def _source(path: str):
  """What Pillow opens: a local path as it is, a gs:// object's bytes read in one request."""
  if paths.is_remote(path):
    return io.BytesIO(paths.path(path).read_bytes())
  return path


def _orientation(image: Image.Image) -> int:
  try:
    return int(image.getexif().get(0x0112, 0) or 0)
  except Exception:  # pylint: disable=broad-except  (malformed EXIF: treat as unrotated)
    return 0


def _transpose(image: Image.Image) -> Image.Image:
  """The image as a person sees it: EXIF orientation applied (a malformed tag is ignored)."""
  try:
    return ImageOps.exif_transpose(image)
  except Exception:  # pylint: disable=broad-except
    return image


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
  """8-bit RGB (channels=3) or L (channels=1) from any Pillow mode."""
  if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
    values = np.asarray(image).astype(np.float64)
    top = 65535.0 if image.mode != "F" and values.max(initial=0) > 255 else 255.0
    image = Image.fromarray(np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, rgba)
  target = "RGB" if channels == 3 else "L"
  return image if image.mode == target else image.convert(target)  # convert() to the same mode copies


def _box(size: tuple[int, int], crop: Crop, rng: np.random.Generator | None) -> tuple[float, ...]:
  """(left, top, right, bottom) of the source region for `crop`, in the image's pixel coordinates."""
  width, height = size
  if crop.mode == "resize":
    return (0.0, 0.0, float(width), float(height))
  if crop.mode == "center":
    target_h, target_w = crop.size
    # The largest region with the target's aspect ratio, shrunk to `fraction` of it.
    side = min(width / target_w, height / target_h) * crop.fraction
    w, h = target_w * side, target_h * side
    return ((width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2)
  if rng is None:
    raise ValueError("random_resized crops need a numpy generator")
  area = width * height
  log_low, log_high = np.log(crop.aspect[0]), np.log(crop.aspect[1])
  for _ in range(10):  # Inception's recipe: up to 10 tries, then the centre crop of the whole image
    target_area = area * rng.uniform(*crop.area)
    ratio = np.exp(rng.uniform(log_low, log_high))
    w = np.sqrt(target_area * ratio)
    h = np.sqrt(target_area / ratio)
    if 0 < w <= width and 0 < h <= height:
      left = rng.uniform(0, width - w)
      top = rng.uniform(0, height - h)
      return (left, top, left + w, top + h)
  ratio = width / height
  if ratio < crop.aspect[0]:
    w, h = width, width / crop.aspect[0]
  elif ratio > crop.aspect[1]:
    w, h = height * crop.aspect[1], height
  else:
    w, h = width, height
  return ((width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2)
