"""Device augmentations: shape and dtype kept, identity at zero strength, deterministic, per-example draws.

Compilation dominates on CPU, so each op is jitted once and that one executable serves several checks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls.core import parallel
from jaxcls.core.errors import ConfigError
from jaxcls.data import augment
from jaxcls.data.augment import color as augment_color
from jaxcls.data.augment import randaugment as augment_randaugment
from jaxcls.training import steps

K = 5  # classes


def _images(n=8, h=12, w=12, c=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8))


def _labels(n=8):
  return jnp.arange(n, dtype=jnp.int32) % K


def _run(spec, images, labels=None, key=0):
  fn = jax.jit(augment.build(spec, K))
  return fn(jax.random.PRNGKey(key), images, _labels(len(images)) if labels is None else labels)


OPS = {  # every op, at a strength that changes most images
  "random_crop": "random_crop(padding=2)",
  "random_crop_constant": "random_crop(padding=3, mode='constant')",
  "random_resized_crop": "random_resized_crop(scale=(0.2, 1.0))",
  "flip_lr": "flip_lr",
  "flip_ud": "flip_ud",
  "rotate": "rotate(degrees=40)",
  "color_jitter": "color_jitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2)",
  "grayscale": "grayscale(probability=0.5)",
  "gaussian_blur": "gaussian_blur(sigma=(0.5, 2.0), probability=1.0)",
  "random_erasing": "random_erasing(probability=1.0, value=0)",
  "rand_augment": "rand_augment(num_ops=2, magnitude=15)",
  "mixup": "mixup(alpha=1.0)",
  "cutmix": "cutmix(alpha=1.0)",
}


def test_every_op_is_tested():
  assert set(augment.names()) <= {spec.split("(")[0] for spec in OPS.values()}


@pytest.mark.parametrize("name", sorted(OPS))
def test_shape_dtype_determinism_and_per_example(name):
  fn = jax.jit(augment.build(OPS[name], K))
  images, labels = _images(), _labels()
  key = jax.random.PRNGKey(3)
  out1, y1 = fn(key, images, labels)
  out2, y2 = fn(key, images, labels)
  assert out1.shape == images.shape and out1.dtype == jnp.uint8
  np.testing.assert_array_equal(out1, out2)
  np.testing.assert_array_equal(y1, y2)
  assert not np.array_equal(fn(jax.random.PRNGKey(4), images, labels)[0], out1)
  if name in ("mixup", "cutmix"):
    assert y1.shape == (8, K) and y1.dtype == jnp.float32
    np.testing.assert_allclose(np.sum(y1, -1), 1.0, atol=1e-6)
    own = np.asarray(y1)[np.arange(8), np.asarray(labels)]
    assert len(np.unique(np.round(own, 4))) > 2  # each example draws its own mixing weight
  else:
    np.testing.assert_array_equal(y1, labels)
    # The same image in every row: different outputs mean per-example draws.
    same = jnp.broadcast_to(images[:1], images.shape)
    out = np.asarray(fn(key, same, labels)[0])
    assert len({row.tobytes() for row in out}) > 1


ZERO = {  # each op at zero strength: the identity
  "empty": "",
  "random_crop": "random_crop(padding=0)",
  "random_resized_crop": "random_resized_crop(scale=(1.0, 1.0), ratio=(1.0, 1.0))",
  "flips": "flip_lr(probability=0.0)|flip_ud(probability=0.0)|grayscale(probability=0.0)",
  "rotate": "rotate(degrees=0)",
  "color_jitter": "color_jitter(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)",
  "gaussian_blur": "gaussian_blur(sigma=(0.0, 0.0), probability=1.0)",
  "random_erasing": "random_erasing(scale=(0.0, 0.0), probability=1.0, value=0)|random_erasing(probability=0.0)",
  "rand_augment": "rand_augment(num_ops=3, magnitude=0, ops="
  + repr(tuple(n for n in augment_randaugment.OPS if n not in ("autocontrast", "equalize")))
  + ")",
}


@pytest.mark.parametrize("name", sorted(ZERO))
def test_identity_at_zero_strength(name):
  images = _images()
  out, labels = _run(ZERO[name], images)
  np.testing.assert_array_equal(out, images)
  np.testing.assert_array_equal(labels, _labels())


def test_hue_shift_of_zero_is_the_identity():
  x = jnp.asarray(_images(n=1)[0], jnp.float32)
  np.testing.assert_array_equal(jnp.round(augment_color.adjust_hue(x, 0.0)), x)
  np.testing.assert_allclose(augment_color.adjust_hue(x, 1.0), x, atol=1e-3)  # a full turn


def test_mixing_at_zero_keeps_images_and_one_hot_labels():
  images = _images()
  out, labels = _run("mixup(alpha=0.0)|cutmix(probability=0.0)", images)
  np.testing.assert_array_equal(out, images)
  np.testing.assert_array_equal(labels, jax.nn.one_hot(_labels(), K))


def test_flip_is_a_mirror():
  images = _images(n=2)
  np.testing.assert_array_equal(_run("flip_lr(probability=1.0)", images)[0], images[:, :, ::-1])
  np.testing.assert_array_equal(_run("flip_ud(probability=1.0)", images)[0], images[:, ::-1])


def test_crop_is_a_shifted_window():
  images = _images(n=4, h=12, w=10)
  out = np.asarray(_run("random_crop(padding=2, mode='constant')", images, key=1)[0])
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(4):
    assert any(np.array_equal(out[i], padded[i, dy : dy + 12, dx : dx + 10]) for dy in range(5) for dx in range(5))


def test_rotate_by_180_degrees_is_a_point_reflection():
  image = _images(n=1)[0]
  from jaxcls.data.augment import geometric as augment_geometric

  rotated = jax.jit(augment_geometric.rotate_image)(image, jnp.float32(180.0))
  np.testing.assert_array_equal(rotated, image[::-1, ::-1])


def test_mixup_and_cutmix_labels_match_the_pixels():
  images, labels = _images(), jnp.array([0, 1, 2, 3, 4, 4, 4, 4])  # each label differs from its partner's
  rev = np.asarray(images)[::-1].astype(np.float32)
  out, soft = _run("mixup(alpha=1.0)", images, labels)
  lam = np.asarray(soft)[np.arange(8), np.asarray(labels)]
  expected = lam[:, None, None, None] * np.asarray(images, np.float32) + (1 - lam[:, None, None, None]) * rev
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=0.51)
  out, soft = _run("cutmix(alpha=1.0)", images, labels)
  from_partner = np.mean(np.all(np.asarray(out) == rev, -1) & np.any(np.asarray(images) != rev, -1), (1, 2))
  own = np.asarray(soft)[np.arange(8), np.asarray(labels)]
  np.testing.assert_allclose(1.0 - own, from_partner, atol=1e-6)


def test_mixing_skips_padding_partners():
  images, labels = _images(), _labels()
  mask = jnp.arange(8) < 6  # rows 6, 7 are padding: rows 0, 1 (their partners) stay unmixed
  fn = jax.jit(augment.build("mixup(alpha=1.0)", K))
  out, soft = fn(jax.random.PRNGKey(0), images, labels, mask)
  np.testing.assert_array_equal(out[:2], images[:2])
  np.testing.assert_array_equal(soft[:2], jax.nn.one_hot(labels[:2], K))
  assert not np.array_equal(out[2:6], images[2:6])


def test_draws_do_not_depend_on_sharding():
  """Per-example keys: the same outputs with the batch on one device or split over eight."""
  fn = jax.jit(augment.build("random_crop(padding=2)|flip_lr|cutmix(alpha=1.0)", K))
  images, labels = _images(n=16), _labels(16)
  key = jax.random.PRNGKey(5)
  whole = fn(key, images, labels)
  mesh = parallel.make_mesh()
  sharded = fn(
    key, jax.device_put(images, parallel.batch_sharded(mesh)), jax.device_put(labels, parallel.batch_sharded(mesh))
  )
  for a, b in zip(whole, sharded):
    np.testing.assert_array_equal(a, b)


def test_normalisation_is_the_steps_job_and_happens_once():
  # Ops always return uint8 in [0, 255], and a normalising op is refused with a pointer to dataset.mean/std.
  for name in ("normalize", "normalise"):
    with pytest.raises(ConfigError, match="dataset.mean"):
      augment.build(name, K)
  images = _images(n=2)
  x = steps.normalize(images, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0), jnp.float32)
  expected = (np.asarray(images, np.float32) / 255 - np.array([0.5, 0.25, 0.0])) / np.array([0.5, 0.25, 1.0])
  np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)


def test_dataset_mean_and_std_from_the_config_override_the_source():
  from conftest import tiny_config

  from jaxcls import data

  config = tiny_config(**{"dataset.mean": (0.1,), "dataset.std": (0.2, 0.3, 0.4)})
  info = data.build(config).info
  assert info.mean == (0.1, 0.1, 0.1) and info.std == (0.2, 0.3, 0.4)
  assert data.build(tiny_config()).info.mean != info.mean  # the source's own, measured on its images


def test_parse_and_errors():
  assert augment.parse("random_crop(padding=4, mode='reflect')|flip_lr") == [
    ("random_crop", {"padding": 4, "mode": "reflect"}),
    ("flip_lr", {}),
  ]
  assert augment.parse(["flip_lr", "mixup(alpha=0.2)"]) == [("flip_lr", {}), ("mixup", {"alpha": 0.2})]
  with pytest.raises(ConfigError, match="flip_lr"):
    augment.build("flip_rl", K)
  with pytest.raises(ConfigError, match="keyword"):
    augment.build("random_crop(4)", K)
  with pytest.raises(ConfigError, match="Bad arguments"):
    augment.build("random_crop(pad=4)", K)
  with pytest.raises(ConfigError, match="mode"):
    augment.build("random_crop(mode='wrap')", K)
  with pytest.raises(ConfigError, match=r"flip_lr\(probability=1.5\)"):
    augment.build("flip_lr(probability=1.5)", K)
  with pytest.raises(ConfigError, match="magnitude"):
    augment.build("rand_augment(magnitude=31)", K)
  with pytest.raises(ConfigError, match="ops="):
    augment.build("rand_augment(ops=('rotate', 'warp'))", K)
  with pytest.raises(ConfigError, match="value"):
    augment.build("random_erasing(value='noise')", K)
  with pytest.raises(ConfigError, match="num_classes"):
    augment.build("mixup(num_classes=3)", K)
