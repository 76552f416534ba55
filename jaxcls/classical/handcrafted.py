"""Hand-crafted image features in JAX: HOG, per-channel colour histograms and raw pixels.

Each function maps a batch of uint8 images [N, H, W, C] to float32 features [N, D] and is jittable (its settings
are static). HOG follows scikit-image's `skimage.feature.hog` (centred gradients, per-pixel strongest channel,
hard orientation bins with magnitude voting averaged per cell, L2-Hys block normalisation), so its features can
be checked against that reference value for value.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.core.errors import ConfigError

FEATURES = ("hog", "color_hist", "pixels")
_L2HYS_CLIP = 0.2
_L2HYS_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """Which features to concatenate, in this order, and their settings."""

  names: tuple[str, ...] = ("hog",)
  hog_orientations: int = 9
  hog_cell_size: int = 4  # pixels per cell side
  hog_block_size: int = 2  # cells per block side
  color_bins: int = 16  # per channel

  def __post_init__(self):
    if not self.names:
      raise ConfigError(f"classical.features is empty; choose one or more of {', '.join(FEATURES)}.")
    for name in self.names:
      if name not in FEATURES:
        raise ConfigError(
          f"classical.features has unknown feature {name!r}; use one or more of "
          f"{', '.join(FEATURES)}, joined by ',' (e.g. 'hog,pixels')."
        )
    if len(set(self.names)) != len(self.names):
      raise ConfigError(f"classical.features={','.join(self.names)!r} names a feature twice.")
    for key in ("hog_orientations", "hog_cell_size", "hog_block_size"):
      if getattr(self, key) < 1:
        raise ConfigError(f"classical.{key}={getattr(self, key)} must be a positive integer.")
    if not 1 <= self.color_bins <= 256:
      raise ConfigError(f"classical.color_bins={self.color_bins} must be in 1..256.")

  def check_image_shape(self, image_shape: tuple[int, int, int]) -> None:
    """Raises when HOG cannot fit one block into images of this (height, width, channels)."""
    if "hog" not in self.names:
      return
    need = self.hog_cell_size * self.hog_block_size
    if min(image_shape[:2]) < need:
      raise ConfigError(
        f"HOG needs images of at least {need}x{need} pixels (hog_cell_size {self.hog_cell_size} x "
        f"hog_block_size {self.hog_block_size}), but they are {image_shape[0]}x{image_shape[1]}; "
        "lower classical.hog_cell_size or hog_block_size, or set dataset.image_size."
      )

  def num_features(self, image_shape: tuple[int, int, int]) -> int:
    """The length D of the concatenated feature vector for images of this shape."""
    height, width, channels = image_shape
    sizes = {
      "hog": hog_size(height, width, self.hog_orientations, self.hog_cell_size, self.hog_block_size),
      "color_hist": channels * self.color_bins,
      "pixels": height * width * channels,
    }
    return sum(sizes[name] for name in self.names)


def hog_size(height: int, width: int, orientations: int, cell_size: int, block_size: int) -> int:
  """HOG length: blocks (cells - block + 1 per axis) x cells per block x orientations."""
  blocks_r = height // cell_size - block_size + 1
  blocks_c = width // cell_size - block_size + 1
  return max(blocks_r, 0) * max(blocks_c, 0) * block_size * block_size * orientations


def _gradients(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Centred differences along rows and columns, zero on the border rows/columns (as scikit-image)."""
  g_row = jnp.zeros_like(images).at[:, 1:-1].set(images[:, 2:] - images[:, :-2])
  g_col = jnp.zeros_like(images).at[:, :, 1:-1].set(images[:, :, 2:] - images[:, :, :-2])
  return g_row, g_col


@functools.partial(jax.jit, static_argnames=("orientations", "cell_size", "block_size"))
def hog(images: jax.Array, *, orientations: int = 9, cell_size: int = 4, block_size: int = 2) -> jax.Array:
  """Histograms of oriented gradients [N, blocks_r * blocks_c * block_size**2 * orientations].

  Unsigned orientations in [0, 180) degrees; each pixel votes its gradient magnitude into one of `orientations`
  equal bins, using the channel whose gradient is strongest at that pixel; votes are averaged over each
  `cell_size` square cell (trailing rows/columns that do not fill a cell are ignored); each `block_size` square of
  cells (stride one cell) is L2-Hys normalised.
  """
  x = images.astype(jnp.float32)
  if x.ndim == 3:
    x = x[..., None]
  n, height, width, _ = x.shape
  g_row, g_col = _gradients(x)
  magnitude = jnp.hypot(g_row, g_col)
  strongest = jnp.argmax(magnitude, axis=-1)[..., None]
  g_row = jnp.take_along_axis(g_row, strongest, -1)[..., 0]
  g_col = jnp.take_along_axis(g_col, strongest, -1)[..., 0]
  magnitude = jnp.take_along_axis(magnitude, strongest, -1)[..., 0]
  angle = jnp.rad2deg(jnp.arctan2(g_row, g_col)) % 180.0
  bins = jnp.clip(jnp.floor(angle / (180.0 / orientations)).astype(jnp.int32), 0, orientations - 1)
  votes = jax.nn.one_hot(bins, orientations, dtype=jnp.float32) * magnitude[..., None]  # [N, H, W, O]
  cells_r, cells_c = height // cell_size, width // cell_size
  votes = votes[:, : cells_r * cell_size, : cells_c * cell_size]
  cells = votes.reshape(n, cells_r, cell_size, cells_c, cell_size, orientations).mean(axis=(2, 4))
  blocks_r, blocks_c = cells_r - block_size + 1, cells_c - block_size + 1
  blocks = jnp.stack(
    [cells[:, dr : dr + blocks_r, dc : dc + blocks_c] for dr in range(block_size) for dc in range(block_size)], axis=3
  )  # [N, Br, Bc, b*b, O]
  blocks = blocks.reshape(n, blocks_r, blocks_c, -1)
  return _l2_hys(blocks).reshape(n, -1)


def _l2_hys(blocks: jax.Array) -> jax.Array:
  """L2 normalise, clip at 0.2, L2 normalise again, over the last axis (Dalal and Triggs' L2-Hys)."""
  out = blocks / jnp.sqrt(jnp.sum(blocks**2, axis=-1, keepdims=True) + _L2HYS_EPS**2)
  out = jnp.minimum(out, _L2HYS_CLIP)
  return out / jnp.sqrt(jnp.sum(out**2, axis=-1, keepdims=True) + _L2HYS_EPS**2)


@functools.partial(jax.jit, static_argnames=("bins",))
def color_histogram(images: jax.Array, *, bins: int = 16) -> jax.Array:
  """Per-channel histograms of uint8 intensities in `bins` equal bins, as fractions of the pixels [N, C * bins]."""
  if images.ndim == 3:
    images = images[..., None]
  n, height, width, channels = images.shape
  index = (images.astype(jnp.int32) * bins) // 256  # [N, H, W, C] in 0..bins-1
  counts = jax.nn.one_hot(index, bins, dtype=jnp.float32).sum(axis=(1, 2))  # [N, C, bins]
  return (counts / (height * width)).reshape(n, channels * bins)


@jax.jit
def raw_pixels(images: jax.Array) -> jax.Array:
  """The pixels scaled to [0, 1] and flattened [N, H * W * C]."""
  return (images.astype(jnp.float32) / 255.0).reshape(images.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("spec",))
def extract(images: jax.Array, spec: FeatureSpec) -> jax.Array:
  """The features `spec.names` of uint8 images [N, H, W, C], concatenated in that order: [N, D] float32."""
  parts = []
  for name in spec.names:
    if name == "hog":
      parts.append(
        hog(images, orientations=spec.hog_orientations, cell_size=spec.hog_cell_size, block_size=spec.hog_block_size)
      )
    elif name == "color_hist":
      parts.append(color_histogram(images, bins=spec.color_bins))
    else:
      parts.append(raw_pixels(images))
  return jnp.concatenate(parts, axis=1)


@dataclasses.dataclass(frozen=True)
class Standardizer:
  """Per-feature (x - mean) / std with statistics of the training features; constant features get std 1."""

  mean: np.ndarray
  std: np.ndarray

  @classmethod
  def fit(cls, features: np.ndarray) -> "Standardizer":
    """The statistics of these training features (computed in float64, kept in float32)."""
    features = np.asarray(features, np.float64)
    std = features.std(axis=0)
    return cls(mean=features.mean(axis=0).astype(np.float32), std=np.where(std > 1e-8, std, 1.0).astype(np.float32))

  def __call__(self, features: np.ndarray) -> np.ndarray:
    """Standardises features with the training statistics, so train and eval features share one scale."""
    return ((np.asarray(features, np.float32) - self.mean) / self.std).astype(np.float32)
