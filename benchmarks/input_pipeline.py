"""Prints the host input pipeline's throughput, images per second, for each source on this machine.

  python benchmarks/input_pipeline.py [--batches 6] [--batch_size 64]

Sources: a folder of 224..640-pixel JPEGs (photos from scikit-learn's sample images, cropped at many sizes)
decoded with an Inception random resized crop to 224x224 on the host (`cache='none'`); the `idx` source
(28x28, in memory); and `tfds` through `tfds.testing.mock_data` serving the same JPEGs as an ImageNet-like
dataset, decoded with `decode_and_crop_jpeg`. Nothing is downloaded. Per core = total / CPU cores of the machine.
"""

import argparse
import gzip
import io
import os
import struct
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxcls import data  # noqa: E402  pylint: disable=wrong-import-position
from jaxcls.config_base import get_base_config  # noqa: E402  pylint: disable=wrong-import-position


def photos(count: int, seed: int = 0) -> list[bytes]:
  """`count` JPEG crops of the two sample photos, 224 to 640 pixels a side."""
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  sources = load_sample_images().images
  rng = np.random.default_rng(seed)
  out = []
  for i in range(count):
    image = sources[i % len(sources)]
    h, w = rng.integers(224, min(image.shape[:2]) + 1, 2)
    top, left = rng.integers(0, image.shape[0] - h + 1), rng.integers(0, image.shape[1] - w + 1)
    buffer = io.BytesIO()
    Image.fromarray(image[top:top + h, left:left + w]).save(buffer, "JPEG", quality=90)
    out.append(buffer.getvalue())
  return out


def measure(dataset, batch_size: int, batches: int) -> float:
  """Images per second of the train stream, after one warm-up batch."""
  stream = dataset.train_batches(batch_size, start_step=0, seed=0)
  next(stream)
  start = time.perf_counter()
  for _ in range(batches):
    next(stream)
  return batches * batch_size / (time.perf_counter() - start)


def folder_source(root: str, jpegs: list[bytes], batch_size: int, batches: int) -> float:
  for i, raw in enumerate(jpegs):
    os.makedirs(os.path.join(root, f"class{i % 4}"), exist_ok=True)
    with open(os.path.join(root, f"class{i % 4}", f"{i:04d}.jpg"), "wb") as f:
      f.write(raw)
  config = get_base_config()
  config.dataset.update(dict(name="folder", path=root, image_size=(224, 224), cache="none",
                             train_crop="random_resized", eval_crop="center"))
  return measure(data.build(config, process_index=0, process_count=1), batch_size, batches)


def idx_source(root: str, batch_size: int, batches: int) -> float:
  rng = np.random.default_rng(0)
  for split, n in (("train", 60_000), ("t10k", 1_000)):
    for kind, array in (("images", rng.integers(0, 256, (n, 28, 28))), ("labels", np.arange(n) % 10)):
      header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
      with gzip.open(os.path.join(root, f"{split}-{kind}-idx{array.ndim}-ubyte.gz"), "wb", compresslevel=1) as f:
        f.write(header + array.astype(np.uint8).tobytes())
  config = get_base_config()
  config.dataset.update(dict(name="idx", path=root))
  return measure(data.build(config, process_index=0, process_count=1), batch_size, batches * 20)


def tfds_source(root: str, jpegs: list[bytes], batch_size: int, batches: int) -> float:
  """imagenet2012 metadata with our split sizes, its examples served from `jpegs` by mock_data."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  builder = tfds.builder("imagenet2012", data_dir=root)
  sizes = {"train": len(jpegs) * 8, "validation": len(jpegs)}
  template = lambda name: tfds.core.ShardedFileTemplate(
      data_dir=builder.data_path, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      dataset_name="imagenet2012", split=name, filetype_suffix="tfrecord")
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0, filename_template=template(name))
      for name, n in sizes.items()]))
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)
  pool = tf.constant(jpegs)

  def as_dataset(self, split, **kwargs):
    del self, kwargs
    n = sum(i.take if i.take >= 0 else i.examples_in_shard - i.skip
            for i in builder.info.splits[split].file_instructions)
    return tf.data.Dataset.range(n).map(lambda i: {"image": pool[i % len(jpegs)], "label": i % 1000,
                                                   "file_name": tf.constant("x.jpg")})

  config = get_base_config()
  config.dataset.update(dict(name="tfds", tfds_name="imagenet2012", data_dir=root, eval_split="validation",
                             image_size=(224, 224), train_crop="random_resized", eval_crop="center",
                             shuffle_buffer=1024))
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=root, as_dataset_fn=as_dataset):
    return measure(data.build(config, process_index=0, process_count=1), batch_size, batches)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=6)
  parser.add_argument("--batch_size", type=int, default=64)
  args = parser.parse_args()
  cores = os.cpu_count() or 1
  jpegs = photos(256)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, run in (("folder (JPEG 224-640 px, random resized crop -> 224)",
                       lambda d: folder_source(d, jpegs, args.batch_size, args.batches)),
                      ("idx (28x28, in memory)", lambda d: idx_source(d, args.batch_size, args.batches)),
                      ("tfds mock (same JPEGs, decode_and_crop_jpeg -> 224)",
                       lambda d: tfds_source(d, jpegs, args.batch_size, args.batches))):
      folder = os.path.join(tmp, name.split()[0])
      os.makedirs(folder)
      rows.append((name, run(folder)))
  print(f"\n{'source':<55} {'images/s':>10} {'per core':>10}   ({cores} CPU cores)")
  for name, rate in rows:
    print(f"{name:<55} {rate:>10.0f} {rate / cores:>10.0f}")


if __name__ == "__main__":
  main()
