"""Tests of the `folder` source: formats and modes, EXIF, bad files, splits, caching and the streaming path."""

import itertools
import os

import numpy as np
import pytest
from conftest import folder_config
from PIL import Image

from jaxcls import data
from jaxcls.core.errors import ConfigError, DataError
from jaxcls.data import decode
from jaxcls.data.sources import folder

RED = (200, 30, 30)


make_config = folder_config  # the image-folder config every test here starts from


def build(path, process_index=0, process_count=1, **dataset):
  return data.build(make_config(path, **dataset), process_index=process_index, process_count=process_count)


def solid(size, value, mode="RGB"):
  return Image.new(mode, size, value)


def write_classes(root, per_class=5, classes=("cat", "dog", "fox"), size=(12, 9)):
  """Class k's images are filled with gray 40 * (k + 1), so labels can be checked from pixels."""
  for k, name in enumerate(classes):
    os.makedirs(root / name, exist_ok=True)
    for i in range(per_class):
      solid(size, (40 * (k + 1),) * 3).save(root / name / f"{i:03d}.png")
  return root


def label_of(images):
  return np.round(images[..., 0].reshape(len(images), -1).mean(1) / 40).astype(int) - 1


# --- decoding ----------------------------------------------------------------------------------------------------


def every_format_and_mode(folder_path):
  """One file per format / mode the issue lists, all showing the colour RED (or its gray level)."""
  rgb = solid((16, 12), RED)
  files = {
    "rgb.jpg": lambda p: rgb.save(p, quality=95),
    "gray.jpg": lambda p: rgb.convert("L").save(p, quality=95),
    "cmyk.jpg": lambda p: rgb.convert("CMYK").save(p, quality=95),
    "rgb.png": lambda p: rgb.save(p),
    "rgba.png": lambda p: solid((16, 12), RED + (255,), "RGBA").save(p),
    "palette.png": lambda p: rgb.convert("P").save(p),
    "gray16.png": lambda p: Image.fromarray(np.full((12, 16), 256 * 100, np.uint16)).save(p),
    "image.bmp": lambda p: rgb.save(p),
    "image.gif": lambda p: rgb.save(p),
    "image.webp": lambda p: rgb.save(p, lossless=True),
    "image.tiff": lambda p: rgb.save(p),
    "cmyk.tif": lambda p: rgb.convert("CMYK").save(p),
    "gray16.tif": lambda p: Image.fromarray(np.full((12, 16), 256 * 100, np.uint16)).save(p),
  }
  paths = {}
  for name, save in files.items():
    paths[name] = os.path.join(folder_path, name)
    save(paths[name])
  return paths


def test_every_format_and_mode_decodes_to_8bit_rgb_and_gray(tmp_path):
  paths = every_format_and_mode(tmp_path)
  crop = decode.Crop((6, 8))
  gray_red = Image.new("RGB", (1, 1), RED).convert("L").getpixel((0, 0))
  for name, path in paths.items():
    image = decode.decode(path, crop, 3, 10**6)
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8, name
    centre = image[3, 4].astype(int)
    if "gray16" in name:
      np.testing.assert_allclose(centre, 100, atol=2, err_msg=name)  # 16-bit scaled to 8 bits, not clipped
    elif "gray" in name:
      np.testing.assert_allclose(centre, gray_red, atol=8, err_msg=name)
    else:
      np.testing.assert_allclose(centre, RED, atol=12, err_msg=name)
    assert decode.decode(path, crop, 1, 10**6).shape == (6, 8, 1)


def test_transparency_is_composited_on_white(tmp_path):
  Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
  assert (decode.decode(str(tmp_path / "clear.png"), decode.Crop((4, 4)), 3, 100) == 255).all()


def test_exif_orientation_is_applied(tmp_path):
  stored = np.zeros((20, 40, 3), np.uint8)
  stored[:, 20:] = 255  # left half black, right half white, as stored
  image = Image.fromarray(stored)
  exif = image.getexif()
  exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the stored left half ends up on top
  image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
  out = decode.decode(str(tmp_path / "rotated.jpg"), decode.Crop((40, 20)), 1, 10**6)[..., 0]
  assert out[:15].mean() < 30 and out[25:].mean() > 225


def test_bad_files_raise_decode_errors(tmp_path):
  solid((300, 200), RED).save(tmp_path / "full.jpg", quality=90)
  raw = (tmp_path / "full.jpg").read_bytes()
  (tmp_path / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
  (tmp_path / "garbage.png").write_bytes(b"this is not a png at all")
  crop = decode.Crop((8, 8))
  for name, reason in (("truncated.jpg", "truncated"), ("garbage.png", "unreadable")):
    with pytest.raises(decode.DecodeError, match=reason):
      decode.decode(str(tmp_path / name), crop, 3, 10**6)
  with pytest.raises(decode.DecodeError, match="decompression bomb"):  # 300 x 200 > 50,000 pixels
    decode.decode(str(tmp_path / "full.jpg"), crop, 3, 50_000)


def test_crops_keep_the_requested_size_and_are_deterministic(tmp_path):
  rng_image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
  Image.fromarray(rng_image).save(tmp_path / "big.jpg", quality=90)
  path = str(tmp_path / "big.jpg")
  random = decode.Crop((32, 32), "random_resized")
  first = decode.decode(path, random, 3, 10**6, np.random.default_rng(1))
  assert first.shape == (32, 32, 3)
  np.testing.assert_array_equal(first, decode.decode(path, random, 3, 10**6, np.random.default_rng(1)))
  assert not np.array_equal(first, decode.decode(path, random, 3, 10**6, np.random.default_rng(2)))
  assert decode.decode(path, decode.Crop((24, 40), "center"), 3, 10**6).shape == (24, 40, 3)
  for size in ((333, 517), (517, 333), (241, 239)):  # JPEG draft decoding at odd sizes stays inside the image
    Image.fromarray(rng_image[: size[0] // 2, : size[1] // 2]).resize(size[::-1]).save(tmp_path / "odd.jpg")
    for mode in ("resize", "center", "random_resized"):
      out = decode.decode(str(tmp_path / "odd.jpg"), decode.Crop((32, 32), mode), 3, 10**6, np.random.default_rng(0))
      assert out.shape == (32, 32, 3)


# --- the source ----------------------------------------------------------------------------------------------


@pytest.fixture
def messy(tmp_path):
  """3 classes x 5 PNGs, plus a truncated JPEG, a non-image, a hidden file and a hidden folder."""
  root = write_classes(tmp_path / "photos")
  solid((64, 64), (40, 40, 40)).save(root / "cat" / "big.jpg", quality=90)
  raw = (root / "cat" / "big.jpg").read_bytes()
  (root / "cat" / "big.jpg").write_bytes(raw[: len(raw) // 2])
  (root / "dog" / "notes.txt").write_text("not an image")
  (root / "dog" / ".hidden.png").write_bytes(b"garbage that would fail if read")
  os.makedirs(root / ".thumbnails")
  solid((4, 4), RED).save(root / ".thumbnails" / "x.png")
  return root


def test_memory_cache_skips_bad_files_and_ignores_hidden_ones(messy):
  ds = build(messy, test_fraction=0.2)
  assert ds.info.class_names == ("cat", "dog", "fox") and ds.info.image_shape == (8, 8, 3)
  assert [os.path.basename(p) for p, _ in ds.skipped_files] == ["big.jpg"]
  assert ds.info.num_train + ds.info.num_eval == 15  # 16 image files, 1 unreadable
  batch = next(ds.train_batches(4, start_step=0, seed=0))
  np.testing.assert_array_equal(label_of(batch["image"]), batch["label"])


def test_split_folders(tmp_path):
  write_classes(tmp_path / "train", per_class=4)
  write_classes(tmp_path / "val", per_class=2)
  ds = build(tmp_path, eval_split="val")
  assert (ds.info.num_train, ds.info.num_eval) == (12, 6)
  with pytest.raises(ConfigError, match="eval_split='test' is not a split folder"):
    build(tmp_path)
  write_classes(tmp_path / "val", per_class=1, classes=("wolf",))
  with pytest.raises(DataError, match="wolf"):
    build(tmp_path, eval_split="val")


def test_stratified_split_with_validation(tmp_path):
  write_classes(tmp_path, per_class=10)
  train = build(tmp_path, val_fraction=0.2, test_fraction=0.2, eval_split="val")
  test = build(tmp_path, val_fraction=0.2, test_fraction=0.2)
  assert train.info.train_class_counts == (6, 6, 6) and train.info.num_eval == 6 and test.info.num_eval == 6


def test_empty_inputs_fail_clearly(tmp_path):
  os.makedirs(tmp_path / "empty")
  with pytest.raises(DataError, match="no class subfolders"):
    build(tmp_path / "empty")
  write_classes(tmp_path / "one_empty", per_class=3)
  os.makedirs(tmp_path / "one_empty" / "zebra")
  (tmp_path / "one_empty" / "zebra" / "readme.md").write_text("x")
  with pytest.raises(DataError, match="'zebra'.*hold no images"):
    build(tmp_path / "one_empty")
  write_classes(tmp_path / "tiny", per_class=1)
  with pytest.raises(DataError, match=r"leaves class '\w+' without images"):
    build(tmp_path / "tiny")
  write_classes(tmp_path / "mixed", per_class=3)
  solid((20, 30), RED).save(tmp_path / "mixed" / "dog" / "wide.png")
  with pytest.raises(ConfigError, match=r"image_size is not set and the images in .* differ \(9x12, 30x20\)"):
    build(tmp_path / "mixed", image_size=None, test_fraction=0.5)
  with pytest.raises(DataError, match="not a folder"):
    build(tmp_path / "nope")


def test_bomb_is_refused_and_listed(tmp_path):
  root = write_classes(tmp_path, per_class=3)
  solid((400, 300), RED).save(root / "dog" / "bomb.png")
  ds = build(root, max_image_pixels=50_000, test_fraction=0.3)
  assert [(os.path.basename(p), "bomb" in r) for p, r in ds.skipped_files] == [("bomb.png", True)]


def test_file_cache_is_reused(tmp_path, monkeypatch):
  root = write_classes(tmp_path / "imgs")
  first = build(root, cache="file", cache_dir=str(tmp_path / "cache"))
  calls = []
  monkeypatch.setattr(folder, "decode_all", lambda *a, **k: calls.append(1))
  again = build(root, cache="file", cache_dir=str(tmp_path / "cache"))
  assert not calls and isinstance(again._train_images, np.memmap)
  np.testing.assert_array_equal(next(first.eval_batches(4))["image"], next(again.eval_batches(4))["image"])


# --- streaming ---------------------------------------------------------------------------------------------------


def test_streaming_is_deterministic_sharded_and_exact_in_eval(messy):
  options = dict(cache="none", train_crop="random_resized", eval_crop="center", test_fraction=0.25)
  ds = build(messy, **options)
  assert ds.info.num_train == 12 and ds.steps_per_epoch(4) == 3
  fresh = list(itertools.islice(ds.train_batches(4, start_step=0, seed=3), 5))
  for k in (1, 4):
    resumed = next(build(messy, **options).train_batches(4, start_step=k, seed=3))
    np.testing.assert_array_equal(resumed["image"], fresh[k]["image"])
  halves = [next(build(messy, p, 2, **options).train_batches(4, start_step=2, seed=3)) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), fresh[2]["image"])
  for batch in fresh:
    assert batch["mask"].all() and (label_of(batch["image"]) == batch["label"]).all()
  seen = []
  for p in range(2):
    share = build(messy, p, 2, **options)
    batches = list(share.eval_batches(4))
    assert len(batches) == share.num_eval_batches(4) == 1
    seen += list(batches[0]["label"][batches[0]["mask"]])
  eval_labels = np.asarray(ds._eval_labels)
  bad = [i for i, p in enumerate(ds._eval_paths) if p.endswith("big.jpg")]
  assert sorted(seen) == sorted(np.delete(eval_labels, bad))  # the truncated file is masked out, once
  assert any(p.endswith("big.jpg") for p, _ in ds.skipped_files) or not bad


def test_random_resized_crop_needs_streaming(messy):
  with pytest.raises(ConfigError, match="cache='none'"):
    build(messy, cache="memory", train_crop="random_resized")
  assert type(build(messy, train_crop="random_resized")).__name__ == "FolderStreamDataset"  # 'auto' streams


def test_nested_coarse_fine_folders_feed_the_hierarchical_task(tmp_path):
  """class_depth=2 reads coarse/fine/ folders; the class names imply the tree for task.tree='folders'."""
  write_classes(tmp_path / "animal", per_class=5, classes=("cat", "dog"))
  write_classes(tmp_path / "vehicle", per_class=5, classes=("bus",))
  ds = build(tmp_path, class_depth=2)
  assert ds.info.class_names == ("animal/cat", "animal/dog", "vehicle/bus")
  from jaxcls import tasks

  task = tasks.build({"type": "hierarchical", "tree": "folders", "class_names": ds.info.class_names}, 3)
  assert task.num_outputs == 2 + 3  # a coarse head (animal, vehicle) and a fine head
  os.makedirs(tmp_path / "plant")
  solid((12, 9), (0, 0, 0)).save(tmp_path / "plant" / "fern.png")  # images directly under a coarse folder
  with pytest.raises(DataError, match="class_depth=2"):
    build(tmp_path, class_depth=2)
  with pytest.raises(ConfigError, match="class_depth=3"):
    build(tmp_path, class_depth=3)


# --- what an unset config takes from the images (defect 11) ----------------------------------------------------


def test_unset_size_channels_and_normalisation_come_from_the_images(tmp_path):
  """A folder of small grey images once needed image_size, channels=1 and its own mean/std set by hand."""
  rng = np.random.default_rng(0)
  for k, name in enumerate(("a", "b")):
    os.makedirs(tmp_path / "grey" / name)
    for i in range(6):
      pixels = rng.integers(0, 60, (28, 28), dtype=np.uint8) + 100 * k
      Image.fromarray(pixels, "L").save(tmp_path / "grey" / name / f"{i}.png")
  for cache in ("memory", "none"):
    dataset = build(tmp_path / "grey", image_size=None, channels=0, cache=cache, test_fraction=0.5)
    assert dataset.info.image_shape == (28, 28, 1)
    images = np.concatenate([b["image"][b["mask"]] for b in dataset.eval_batches(4)])
    assert images.shape[1:] == (28, 28, 1)
  memory = build(tmp_path / "grey", image_size=None, channels=0, cache="memory", test_fraction=0.5)
  # Mean and std are the images' own (pixels 0..59 and 100..159: mean about 79.5 / 255), not ImageNet's.
  assert len(memory.info.mean) == 1 and abs(memory.info.mean[0] - 79.5 / 255) < 0.03
  assert len(memory.info.std) == 1 and 0.15 < memory.info.std[0] < 0.25
  # Colour files give 3 channels; a channel count that is set is kept.
  write_classes(tmp_path / "colour", per_class=4)
  assert build(tmp_path / "colour", image_size=None, channels=0, test_fraction=0.5).info.image_shape == (9, 12, 3)
  assert build(tmp_path / "grey", image_size=None, channels=3, test_fraction=0.5).info.image_shape == (28, 28, 3)
  solid((300, 300), RED).save(tmp_path / "colour" / "cat" / "big.png")
  for i in range(4):
    solid((300, 300), RED).save(tmp_path / "colour" / "dog" / f"big{i}.png")
  with pytest.raises(ConfigError, match="image_size is not set and the images in .* differ"):
    build(tmp_path / "colour", image_size=None, test_fraction=0.5)
