"""Device augmentations: shape and dtype kept, identity at zero strength, deterministic, per-example draws."""

import jax
import numpy as np
import pytest

from jaxcls.data import augment
from jaxcls.errors import ConfigError


def _images(n=16, h=12, w=10, c=3):
  return jax.numpy.asarray(np.random.default_rng(0).integers(0, 256, (n, h, w, c), dtype=np.uint8))


@pytest.mark.parametrize("spec", ["flip_lr", "random_crop(padding=2)", "random_crop(padding=3, mode='constant')",
                                  "random_crop(padding=1)|flip_lr"])
def test_shape_dtype_determinism_and_per_example(spec):
  fn = augment.build(spec)
  images = _images()
  key = jax.random.PRNGKey(3)
  out1, out2 = fn(key, images), fn(key, images)
  assert out1.shape == images.shape and out1.dtype == images.dtype
  np.testing.assert_array_equal(out1, out2)
  changed = np.any(np.asarray(out1) != np.asarray(images), axis=(1, 2, 3))
  assert 0 < changed.sum() < len(changed) or "crop" in spec  # flips hit some examples, not all
  assert not np.array_equal(np.asarray(fn(jax.random.PRNGKey(4), images)), np.asarray(out1))


@pytest.mark.parametrize("spec", ["", "flip_lr(probability=0.0)", "random_crop(padding=0)"])
def test_identity_at_zero_strength(spec):
  images = _images()
  np.testing.assert_array_equal(augment.build(spec)(jax.random.PRNGKey(0), images), images)


def test_flip_is_a_mirror():
  images = _images(n=1)
  out = augment.build("flip_lr(probability=1.0)")(jax.random.PRNGKey(0), images)
  np.testing.assert_array_equal(out, images[:, :, ::-1])


def test_crop_is_a_shifted_window():
  images = _images(n=4)
  out = np.asarray(augment.build("random_crop(padding=2, mode='constant')")(jax.random.PRNGKey(1), images))
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(4):
    assert any(np.array_equal(out[i], padded[i, dy:dy + 12, dx:dx + 10]) for dy in range(5) for dx in range(5))


def test_parse_and_errors():
  assert augment.parse("random_crop(padding=4, mode='reflect')|flip_lr") == [
      ("random_crop", {"padding": 4, "mode": "reflect"}), ("flip_lr", {})]
  with pytest.raises(ConfigError, match="flip_lr"):
    augment.build("flip_rl")
  with pytest.raises(ConfigError, match="keyword"):
    augment.build("random_crop(4)")
  with pytest.raises(ConfigError, match="Bad arguments"):
    augment.build("random_crop(pad=4)")
  with pytest.raises(ConfigError, match="mode"):
    augment.build("random_crop(mode='wrap')")
