"""Tests of `decode.decode`'s reduced-size JPEG decoding: where it applies, how far its pixels are from a full
decode, and that the crop stays a pure function of the generator it is given."""

import os

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from jaxcls.data import decode

PHOTOS = load_sample_images().filenames  # two real 427x640 JPEG photographs that scikit-learn ships


def full_decode(path, crop, rng=None):
  """The reference: decode at full size, then the same crop box and bilinear resize (no DCT-domain scaling)."""
  with Image.open(path) as image:
    image = image.convert("RGB")
    box = decode._box(image.size, crop, rng)  # pylint: disable=protected-access
    return np.asarray(image.resize((crop.size[1], crop.size[0]), Image.Resampling.BILINEAR, box=box, reducing_gap=None))


def errors(crop, seeds):
  """Mean absolute error (0..255 levels) per (photo, seed) and the largest single-pixel error."""
  maes, worst = [], 0
  for path in PHOTOS:
    for seed in seeds:
      fast = decode.decode(path, crop, 3, 10**9, np.random.default_rng(seed)).astype(int)
      exact = full_decode(path, crop, np.random.default_rng(seed)).astype(int)
      maes.append(np.abs(fast - exact).mean())
      worst = max(worst, int(np.abs(fast - exact).max()))
  return np.array(maes), worst


def test_pixels_equal_a_full_decode_when_the_crop_is_under_twice_the_target():
  for mode in ("resize", "center", "random_resized"):
    maes, _ = errors(decode.Crop((224, 224), mode), range(6))
    assert (maes == 0).all(), mode  # 427 px is under 2 x 224: no reduced-size decode, the very same pixels


@pytest.mark.parametrize("size", [(160, 160), (96, 96), (64, 64), (32, 32), (48, 80)])
@pytest.mark.parametrize("mode", ["resize", "center", "random_resized"])
def test_reduced_size_decode_stays_close_to_a_full_decode(size, mode):
  # docs/input_pipeline.md gives these bounds; measured: mean 0.7-1.6, worst image 2.6, worst pixel 38 levels.
  # A decoded pixel k covers source pixels [k s, (k + 1) s): mapping the box by the ratio of the rounded-up
  # sizes instead shifts the crop by up to 3/4 of a decoded pixel and breaks the mean bound (up to 4.0).
  maes, worst = errors(decode.Crop(size, mode), range(8 if mode == "random_resized" else 1))
  assert maes.mean() < 2.0 and maes.max() < 3.5 and worst < 64, (maes.mean(), maes.max(), worst)
  assert maes.max() > 0  # the reduced-size decode did run (a full decode would be exact)


def test_reduced_size_decode_keeps_a_small_feature_in_place(tmp_path):
  """A bright 16x16 square at a known place in a large JPEG lands where a full decode puts it."""
  pixels = np.full((1000, 1400, 3), 40, np.uint8)
  pixels[600:616, 900:916] = 230
  path = tmp_path / "square.jpg"
  Image.fromarray(pixels).save(path, quality=95)
  crop = decode.Crop((100, 140), "resize")  # 1/8 scale: decoded at 175x125, then resized
  fast = decode.decode(str(path), crop, 3, 10**9)[..., 0].astype(float)
  exact = full_decode(str(path), crop)[..., 0].astype(float)
  centre = lambda a: np.array(np.unravel_index(np.argmax(a), a.shape))
  assert np.abs(centre(fast) - centre(exact)).max() <= 1
  assert np.abs(fast - exact).mean() < 1.0


def test_random_crop_is_a_pure_function_of_the_generator_seed():
  crop = decode.Crop((64, 64), "random_resized")
  first = [decode.decode(p, crop, 3, 10**9, np.random.default_rng([7, 3, i, 0])) for i, p in enumerate(PHOTOS)]
  again = [decode.decode(p, crop, 3, 10**9, np.random.default_rng([7, 3, i, 0])) for i, p in enumerate(PHOTOS)]
  other = decode.decode(PHOTOS[0], crop, 3, 10**9, np.random.default_rng([7, 4, 0, 0]))
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[0], other)


def test_rotated_and_cmyk_jpegs_take_the_full_decode(tmp_path):
  """EXIF-rotated files are cropped as a person sees them; CMYK is converted; both still get the target size."""
  photo = Image.open(PHOTOS[0]).convert("RGB")
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise to view
  rotated, cmyk = tmp_path / "rotated.jpg", tmp_path / "cmyk.jpg"
  photo.save(rotated, exif=exif.tobytes(), quality=90)
  photo.convert("CMYK").save(cmyk, quality=90)
  crop = decode.Crop((40, 30), "resize")
  upright = decode.decode(str(rotated), crop, 3, 10**9)
  assert upright.shape == (40, 30, 3)
  reference = np.asarray(
    photo.transpose(Image.Transpose.ROTATE_270).resize((30, 40), Image.Resampling.BILINEAR, reducing_gap=None)
  ).astype(int)
  assert np.abs(upright.astype(int) - reference).mean() < 3
  assert decode.decode(str(cmyk), crop, 3, 10**9).shape == (40, 30, 3)


def test_grayscale_output_from_a_reduced_size_decode():
  crop = decode.Crop((50, 50), "center")
  gray = decode.decode(PHOTOS[1], crop, 1, 10**9)
  rgb = decode.decode(PHOTOS[1], crop, 3, 10**9)
  assert gray.shape == (50, 50, 1)
  expected = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)
  assert np.abs(gray[..., 0].astype(int) - expected).mean() < 1.0


@pytest.mark.slow  # spawns two worker processes
def test_worker_processes_give_the_batches_threads_give(tmp_path):
  """dataset.decode_processes: the same pixels, labels, masks and skipped files as the thread pool, resume too."""
  import itertools  # pylint: disable=g-import-not-at-top

  from conftest import folder_config  # pylint: disable=g-import-not-at-top

  from jaxcls import data  # pylint: disable=g-import-not-at-top

  photo = np.asarray(Image.open(PHOTOS[0]).convert("RGB"))
  rng = np.random.default_rng(0)
  for i in range(18):
    os.makedirs(tmp_path / f"c{i % 3}", exist_ok=True)
    h, w = rng.integers(40, 420, 2)
    Image.fromarray(photo[:h, :w]).save(tmp_path / f"c{i % 3}" / f"{i}.jpg", quality=90)
  raw = (tmp_path / "c0" / "0.jpg").read_bytes()
  (tmp_path / "c0" / "0.jpg").write_bytes(raw[: len(raw) // 3])  # truncated: skipped in training, masked in eval
  config = folder_config(
    tmp_path, image_size=(32, 32), cache="none", train_crop="random_resized", eval_crop="center", test_fraction=0.3
  )

  def run(processes):
    config.dataset.decode_processes = processes
    dataset = data.build(config, process_index=0, process_count=1)
    assert dataset._processes == processes  # pylint: disable=protected-access  (the key reached the stream)
    try:
      train = list(itertools.islice(dataset.train_batches(4, start_step=0, seed=5), 5))
      resumed = next(dataset.train_batches(4, start_step=3, seed=5))
      evaluation = list(dataset.eval_batches(4))
      return train, resumed, evaluation, sorted(dataset.skipped_files)
    finally:
      dataset.close()

  threads, processes = run(0), run(2)
  for a, b in zip(threads[0] + [threads[1]] + threads[2], processes[0] + [processes[1]] + processes[2]):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(a[key], b[key])
  np.testing.assert_array_equal(processes[1]["image"], processes[0][3]["image"])  # a resumed stream: same batch
  assert threads[3] == processes[3] and any(path.endswith("0.jpg") for path, _ in processes[3])
