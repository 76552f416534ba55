"""Prints the host input pipeline's speed: JPEG training input from a folder, in images per core-second.

  python benchmarks/input_pipeline.py [--folder DIR] [--workers 1,2] [--processes] [--grain] [--compare]
                                      [--all_sources]
                                      [--upscale 1]

The folder is DIR (class subfolders of JPEGs), or, without --folder, 256 crops of scikit-learn's two sample
photos, 224 to 427 pixels a side (times --upscale: 3 makes 672..1281-pixel photos, so that libjpeg's reduced-size
decoding has work to do), re-encoded at quality 90. Every image is decoded with the Inception random resized crop
to 224x224 (`dataset.train_crop='random_resized'`, `cache='none'`), as training does.

Images per core-second = images / CPU seconds (user + system, every thread and worker process of the pipeline)
over the measured batches: what one core delivers. Other load on the machine moves it less than it moves wall
time, but still moves it (shared caches): compare figures taken in alternation. On a quiet machine with one worker
per core it equals images per second / cores. The last line is that figure for jaxcls' own folder
stream at the last --workers value (default: one per core), in threads (or worker processes with --processes;
then the parent process's CPU per image is printed too: the one part that more workers do not share out).

  --workers 1,2,4   also prints the scaling: images per second, per core-second and speed-up for each count, for
                    jaxcls' stream with N decode threads and with N worker processes (dataset.decode_processes)
  --grain           with --workers: also grain's pipeline (MapDataset + random_map + batch, mp_prefetch with N
                    worker processes) running jaxcls' decode, in the same alternation
  --compare         one decoder per row, single-threaded, in alternating rounds (median): full Pillow decode,
                    jaxcls' decode (DCT-domain downscale, crop first), simplejpeg, tf.io.decode_and_crop_jpeg.
                    Rows whose package is missing are skipped. Run it under a venv with pillow-simd for that row.
  --all_sources     the old table: also the idx source (in memory) and tfds mock data (tf.data).
  --memory_cache    also the memory cache's (`cache='memory'`) one pass over the folder (at least 1,024 decodes,
                    centre crop to 224) with the last --workers value, in threads and in worker processes
                    (start-up included).
"""

import argparse
import cProfile
import gzip
import io
import os
import pstats
import resource
import statistics
import struct
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxcls import data  # noqa: E402  pylint: disable=wrong-import-position
from jaxcls.config.base import get_base_config  # noqa: E402  pylint: disable=wrong-import-position
from jaxcls.data import decode  # noqa: E402  pylint: disable=wrong-import-position
from jaxcls.data.sources import folder  # noqa: E402  pylint: disable=wrong-import-position

SIZE = (224, 224)
CROP = decode.Crop(SIZE, "random_resized")


def photos(count: int, seed: int = 0, upscale: float = 1.0) -> list[bytes]:
  """`count` JPEG crops of the two sample photos, 224 to 427 pixels a side (times `upscale`)."""
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top

  sources = load_sample_images().images
  rng = np.random.default_rng(seed)
  out = []
  for i in range(count):
    image = sources[i % len(sources)]
    h, w = rng.integers(224, min(image.shape[:2]) + 1, 2)
    top, left = rng.integers(0, image.shape[0] - h + 1), rng.integers(0, image.shape[1] - w + 1)
    picture = Image.fromarray(image[top : top + h, left : left + w])
    if upscale != 1:
      picture = picture.resize((round(w * upscale), round(h * upscale)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90)
    out.append(buffer.getvalue())
  return out


def write_folder(root: str, jpegs: list[bytes]) -> str:
  for i, raw in enumerate(jpegs):
    os.makedirs(os.path.join(root, f"class{i % 4}"), exist_ok=True)
    with open(os.path.join(root, f"class{i % 4}", f"{i:04d}.jpg"), "wb") as f:
      f.write(raw)
  return root


def jpeg_files(root: str) -> list[str]:
  """Every .jpg / .jpeg under `root`, sorted."""
  found = []
  for parent, _, names in os.walk(root):
    found += [os.path.join(parent, n) for n in names if n.lower().endswith((".jpg", ".jpeg"))]
  if not found:
    raise SystemExit(f"--folder {root} has no .jpg or .jpeg files; give a folder of class subfolders of JPEGs.")
  return sorted(found)


def cpu_seconds(pids=()) -> float:
  """User + system CPU seconds of this process (all threads) and of the live processes `pids`."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  total = usage.ru_utime + usage.ru_stime
  tick = os.sysconf("SC_CLK_TCK")
  for pid in pids:
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / tick
    except (OSError, IndexError, ValueError):
      pass
  return total


class Rate:
  """Images, wall seconds and CPU seconds of one measurement (`parent`: this process's share of `cpu`, when
  worker processes did the rest)."""

  def __init__(self, images: int, wall: float, cpu: float, parent: float = None):
    self.images, self.wall, self.cpu, self.parent = images, wall, cpu, parent

  @property
  def per_second(self) -> float:
    return self.images / self.wall

  @property
  def per_core_second(self) -> float:
    return self.images / self.cpu


def drain(batches, count: int) -> None:
  """Takes `count` batches and drops each before the next, as a training loop does. Keeping them all would charge
  the pipeline for fresh pages (the kernel zeroing 9.6 MB per batch of 64 at 224 px: about 100 us per image more)
  that a loop, reusing the memory of the batch it dropped, does not pay."""
  for _ in range(count):
    next(batches)


def timed(run, images: int, pids=()) -> Rate:
  wall, cpu, parent = time.perf_counter(), cpu_seconds(pids), cpu_seconds()
  run()
  return Rate(images, time.perf_counter() - wall, cpu_seconds(pids) - cpu, cpu_seconds() - parent)


# --- jaxcls' own folder stream -----------------------------------------------------------------------------------


KINDS = ("threads", "processes")


def folder_dataset(root: str, workers: int, processes: int = 0):
  """The folder source streaming with `workers` threads, or `processes` worker processes (not yet warm)."""
  config = get_base_config()
  config.dataset.update(
    dict(
      name="folder",
      path=root,
      image_size=SIZE,
      cache="none",
      workers=workers,
      train_crop="random_resized",
      eval_crop="center",
      decode_processes=processes,
    )
  )
  return data.build(config, process_index=0, process_count=1)


def stream_rate(dataset, batch_size: int, batches: int) -> Rate:
  """The train stream after one warm-up batch; the decode pool is shut down afterwards."""
  stream = dataset.train_batches(batch_size, start_step=0, seed=0)
  next(stream)  # worker processes start here
  pids = list(getattr(dataset._pool, "_processes", None) or ())  # pylint: disable=protected-access
  try:
    return timed(lambda: drain(stream, batches), batches * batch_size, pids)
  finally:
    stream.close()
    dataset.close()


def scaling(root: str, counts: list[int], batch_size: int, batches: int, rounds: int, kinds=KINDS) -> list[tuple]:
  """(pool kind, workers, median Rate) for jaxcls' stream with N threads and with N processes (and grain's
  pipeline with N worker processes, when `kinds` has 'grain'), in alternation."""
  results = {}
  for _ in range(rounds):
    for workers in counts:
      for kind in kinds:
        if kind == "grain":
          rate = grain_rate(jpeg_files(root), workers, batch_size, batches)
        else:
          dataset = folder_dataset(root, workers, processes=workers if kind == "processes" else 0)
          rate = stream_rate(dataset, batch_size, batches)
        results.setdefault((kind, workers), []).append(rate)
  return [(kind, workers, median_rate(rates)) for (kind, workers), rates in results.items()]


def memory_cache_rate(paths: list[str], workers: int, processes: int = 0) -> Rate:
  """`cache='memory'`'s one pass: every file decoded (centre crop to 224) into one array by `folder.decode_all`,
  in `workers` threads or `processes` worker processes (their start-up included)."""
  crop = decode.Crop(SIZE, "center")

  def cpu() -> float:  # the workers are joined (reaped) when the pool closes: their CPU is the children's
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return cpu_seconds() + children.ru_utime + children.ru_stime

  wall, start = time.perf_counter(), cpu()
  folder.decode_all(paths, crop, 3, 1 << 30, workers, processes)
  return Rate(len(paths), time.perf_counter() - wall, cpu() - start)


def _grain_decode(path: str, rng: np.random.Generator) -> np.ndarray:
  """One training image as jaxcls decodes it (random resized crop), for grain's worker processes."""
  return decode.decode(path, CROP, 3, 1 << 30, rng)


def grain_rate(paths: list[str], workers: int, batch_size: int, batches: int) -> Rate:
  """grain (`pip install grain`) running jaxcls' decode: MapDataset of the files, repeated, random_map, batched,
  then `mp_prefetch` with `workers` worker processes (0: in this process). The decode is jaxcls' (crop first,
  reduced-size JPEG decoding); what differs is the pool: grain's processes and batches instead of jaxcls' own."""
  import grain  # pylint: disable=g-import-not-at-top
  import psutil  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():  # grain reads absl flags of its own (their defaults, here)
    flags.FLAGS.mark_as_parsed()

  dataset = grain.MapDataset.source(paths).seed(0).repeat().random_map(_grain_decode).batch(batch_size)
  # One decoding thread per worker and two batches read ahead, as jaxcls' worker processes: grain's defaults (16
  # threads, 500 elements ahead) decode during the warm-up what the timed batches then only collect.
  iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2 * batch_size))
  if workers:
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  iterator = iter(iterable)
  for _ in range(2 + 2 * max(workers, 1)):  # worker processes start, then what they read ahead is drained
    next(iterator)
  pids = [child.pid for child in psutil.Process().children(recursive=True)]
  return timed(lambda: drain(iterator, batches), batches * batch_size, pids)  # workers stop with it


def median_rate(rates: list[Rate]) -> Rate:
  by_speed = sorted(rates, key=lambda r: r.per_second)
  middle = by_speed[len(by_speed) // 2]
  cpu = statistics.median(r.cpu for r in rates)
  parent = None if None in [r.parent for r in rates] else statistics.median(r.parent for r in rates)
  return Rate(middle.images, middle.wall, cpu, parent)


# --- single-threaded decoders, one per row -----------------------------------------------------------------------


def _pillow_full(path: str, rng) -> np.ndarray:
  """Full-size decode, then crop + bilinear resize: jaxcls before DCT-domain scaling (the plain Pillow loop)."""
  with Image.open(path) as image:
    image = image.convert("RGB")
    box = decode._box(image.size, CROP, rng)  # pylint: disable=protected-access
    return np.asarray(image.resize(SIZE[::-1], Image.Resampling.BILINEAR, box=box, reducing_gap=None))


def _jaxcls(path: str, rng) -> np.ndarray:
  return decode.decode(path, CROP, 3, 1 << 30, rng)


def _simplejpeg():
  import simplejpeg  # pylint: disable=g-import-not-at-top

  def run(path: str, rng) -> np.ndarray:
    with open(path, "rb") as f:
      raw = f.read()
    height, width, _, _ = simplejpeg.decode_jpeg_header(raw)
    box = decode._box((width, height), CROP, rng)  # pylint: disable=protected-access
    scale = min((box[2] - box[0]) / SIZE[1], (box[3] - box[1]) / SIZE[0])  # any n/8 scale that keeps >= 224
    pixels = simplejpeg.decode_jpeg(
      raw, "RGB", min_height=int(np.ceil(height / max(scale, 1))), min_width=int(np.ceil(width / max(scale, 1)))
    )
    fy, fx = pixels.shape[0] / height, pixels.shape[1] / width
    image = Image.fromarray(pixels)
    return np.asarray(
      image.resize(
        SIZE[::-1],
        Image.Resampling.BILINEAR,
        box=(box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy),
        reducing_gap=None,
      )
    )

  return run


def _tensorflow():
  """A tf.data pipeline (one private thread) reading the files: decode_and_crop_jpeg, then antialiased resize."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], "GPU")

  @tf.autograph.experimental.do_not_convert
  def crop_resize(path, window):
    pixels = tf.io.decode_and_crop_jpeg(tf.io.read_file(path), window, channels=3)
    return tf.cast(tf.clip_by_value(tf.round(tf.image.resize(pixels, SIZE, antialias=True)), 0, 255), tf.uint8)

  def run_all(paths: list[str], rngs: list) -> None:
    windows = []
    for path, rng in zip(paths, rngs):
      width, height = Image.open(path).size  # header only: the crop box is drawn as jaxcls draws it
      left, top, right, bottom = decode._box((width, height), CROP, rng)  # pylint: disable=protected-access
      windows.append([int(top), int(left), max(1, int(bottom - top)), max(1, int(right - left))])
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    dataset = tf.data.Dataset.from_tensor_slices((paths, windows)).map(crop_resize).batch(64).with_options(options)
    for _ in dataset:
      pass

  run_all.whole_list = True
  return run_all


def decoders() -> list[tuple[str, object]]:
  """(name, decode(path, rng)) for every decoder importable here."""
  simd = ".post" in Image.__version__  # pillow-simd's versions are Pillow's plus .postN
  pillow = f"pillow-simd {Image.__version__}" if simd else f"Pillow {Image.__version__}"
  rows = [
    (f"{pillow}: full decode, crop + resize", _pillow_full),
    (f"{pillow}: jaxcls decode (draft, crop first)", _jaxcls),
  ]
  for name, make in (
    ("simplejpeg: n/8 DCT scale, Pillow resize", _simplejpeg),
    ("tf.data: decode_and_crop_jpeg + resize", _tensorflow),
  ):
    try:
      rows.append((name, make()))
    except ImportError:
      print(f"(skipped {name.split(':')[0]}: not installed)")
  return rows


def compare(paths: list[str], rounds: int, per_round: int) -> list[tuple[str, Rate]]:
  """Single-threaded images per CPU second of each decoder, in alternating rounds over the same files and crops."""
  rows = decoders()
  picked = [paths[i % len(paths)] for i in range(per_round)]
  results = {name: [] for name, _ in rows}

  def all_files(run, seed, files):
    rngs = [np.random.default_rng([seed, i]) for i in range(len(files))]
    if getattr(run, "whole_list", False):  # a pipeline that takes the whole list at once (tf.data)
      return lambda: run(files, rngs)
    return lambda: [run(p, rng) for p, rng in zip(files, rngs)]

  for _, run in rows:  # warm-up: imports, tracing, file cache
    all_files(run, 0, picked[:16])()
  for round_ in range(rounds):
    for name, run in rows:
      results[name].append(timed(all_files(run, round_, picked), len(picked)))
  return [(name, median_rate(rates)) for name, rates in results.items()]


def gil_share(paths: list[str], count: int = 128) -> tuple[float, float]:
  """(ms per image, share of it that holds the GIL) for jaxcls' decode: all but Pillow's decode and resize calls,
  which release it. cProfile times those two calls; the total is timed without the profiler."""
  picked = [paths[i % len(paths)] for i in range(count)]
  run = lambda: [_jaxcls(p, np.random.default_rng([9, i])) for i, p in enumerate(picked)]
  run()
  totals = []
  for _ in range(3):
    start = time.thread_time()
    run()
    totals.append(time.thread_time() - start)
  profile = cProfile.Profile(time.thread_time)
  profile.runcall(run)
  released = sum(
    v[2]
    for k, v in pstats.Stats(profile).stats.items()
    if k[2] in ("<method 'decode' of 'ImagingDecoder' objects>", "<method 'resize' of 'ImagingCore' objects>")
  )
  total = min(totals)
  return 1e3 * total / count, max(0.0, 1 - released / total)


# --- the other sources (--all_sources) ---------------------------------------------------------------------------


def idx_source(root: str, batch_size: int, batches: int) -> Rate:
  rng = np.random.default_rng(0)
  for split, n in (("train", 60_000), ("t10k", 1_000)):
    for kind, array in (("images", rng.integers(0, 256, (n, 28, 28))), ("labels", np.arange(n) % 10)):
      header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
      with gzip.open(os.path.join(root, f"{split}-{kind}-idx{array.ndim}-ubyte.gz"), "wb", compresslevel=1) as f:
        f.write(header + array.astype(np.uint8).tobytes())
  config = get_base_config()
  config.dataset.update(dict(name="idx", path=root))
  stream = data.build(config, process_index=0, process_count=1).train_batches(batch_size, start_step=0, seed=0)
  next(stream)
  return timed(lambda: drain(stream, batches * 20), batches * 20 * batch_size)


def tfds_source(root: str, jpegs: list[bytes], batch_size: int, batches: int) -> Rate:
  """imagenet2012 metadata with our split sizes, its examples served from `jpegs` by mock_data."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], "GPU")
  builder = tfds.builder("imagenet2012", data_dir=root)
  sizes = {"train": len(jpegs) * 8, "validation": len(jpegs)}
  template = lambda name: tfds.core.ShardedFileTemplate(
    data_dir=builder.data_path,
    template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
    dataset_name="imagenet2012",
    split=name,
    filetype_suffix="tfrecord",
  )
  builder.info.set_splits(
    tfds.core.SplitDict(
      [
        tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0, filename_template=template(name))
        for name, n in sizes.items()
      ]
    )
  )
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)
  pool = tf.constant(jpegs)

  def as_dataset(self, split, **kwargs):
    del self, kwargs
    n = sum(
      i.take if i.take >= 0 else i.examples_in_shard - i.skip for i in builder.info.splits[split].file_instructions
    )
    return tf.data.Dataset.range(n).map(
      lambda i: {"image": pool[i % len(jpegs)], "label": i % 1000, "file_name": tf.constant("x.jpg")}
    )

  config = get_base_config()
  config.dataset.update(
    dict(
      name="tfds",
      tfds_name="imagenet2012",
      data_dir=root,
      eval_split="validation",
      image_size=SIZE,
      train_crop="random_resized",
      eval_crop="center",
      shuffle_buffer=1024,
    )
  )
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=root, as_dataset_fn=as_dataset):
    stream = data.build(config, process_index=0, process_count=1).train_batches(batch_size, start_step=0, seed=0)
    next(stream)
    return timed(lambda: drain(stream, batches), batches * batch_size)


# --- output ------------------------------------------------------------------------------------------------------


def print_table(title: str, rows: list[tuple[str, Rate]], baseline: float = None) -> None:
  print(f"\n{title:<58} {'images/s':>9} {'per core-s':>11}" + ("   speed-up" if baseline else ""))
  for name, rate in rows:
    print(
      f"{name:<58} {rate.per_second:>9.0f} {rate.per_core_second:>11.0f}"
      + (f"   {rate.per_second / baseline:>8.2f}" if baseline else "")
    )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--folder", help="class subfolders of JPEGs to measure (default: made from sample photos)")
  parser.add_argument(
    "--workers", default=str(os.cpu_count() or 1), help="comma-separated worker counts; the last one gives the headline"
  )
  parser.add_argument("--batches", type=int, default=8)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per comparison (median)")
  parser.add_argument("--upscale", type=float, default=1.0, help="scale the made photos (not with --folder)")
  parser.add_argument(
    "--processes",
    action="store_true",
    help="the headline with worker processes (dataset.decode_processes) instead of threads",
  )
  parser.add_argument("--compare", action="store_true", help="also compare decoders, single-threaded")
  parser.add_argument(
    "--grain", action="store_true", help="with --workers N,M: also grain's multi-process pipeline (pip install grain)"
  )
  parser.add_argument("--all_sources", action="store_true", help="also the idx and tfds sources")
  parser.add_argument(
    "--memory_cache",
    action="store_true",
    help="also the memory cache's one decode pass over the folder (centre crop), in threads and in processes",
  )
  args = parser.parse_args()
  counts = [int(n) for n in args.workers.split(",")]
  cores = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as tmp:
    jpegs = None
    root = args.folder
    if root is None:
      jpegs = photos(256, upscale=args.upscale)
      root = write_folder(os.path.join(tmp, "photos"), jpegs)
    paths = jpeg_files(root)
    sizes = np.array([Image.open(p).size for p in paths[:512]])
    print(
      f"{len(paths)} JPEGs in {root}, median {int(np.median(sizes[:, 0]))}x{int(np.median(sizes[:, 1]))} px; "
      f"{cores} CPU cores; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    if args.compare:
      print_table("decoder (1 thread, random resized crop -> 224)", compare(paths, args.rounds, 128))
      ms, share = gil_share(paths)
      print(
        f"jaxcls decode: {ms:.2f} ms per image, {100 * share:.0f}% of it holding the GIL: threads cap at "
        f"about {1 / max(share, 1e-3):.0f}x one core's rate (Amdahl), worker processes do not"
      )
    if len(counts) > 1:
      kinds = KINDS + (("grain",) if args.grain else ())
      table = scaling(root, counts, args.batch_size, args.batches, args.rounds, kinds)
      for kind in kinds:
        rows = [(f"{kind}: {n} worker(s)", rate) for k, n, rate in table if k == kind]
        print_table(f"jaxcls folder stream, {kind}", rows, rows[0][1].per_second)
    if args.all_sources:
      rows = []
      for name, run in (
        ("idx (28x28, in memory)", lambda d: idx_source(d, args.batch_size, args.batches)),
        (
          "tfds mock (same JPEGs, decode_and_crop_jpeg -> 224)",
          lambda d: tfds_source(d, jpegs or [open(p, "rb").read() for p in paths[:256]], args.batch_size, args.batches),
        ),
      ):
        folder = os.path.join(tmp, name.split()[0])
        os.makedirs(folder)
        rows.append((name, run(folder)))
      print_table("other sources", rows)
    if args.memory_cache:
      files = paths * max(1, -(-1024 // len(paths)))  # at least 1,024 decodes
      rows = []
      for kind in KINDS:
        rates = [
          memory_cache_rate(files, counts[-1], counts[-1] if kind == "processes" else 0) for _ in range(args.rounds)
        ]
        rows.append((f"{kind}: {counts[-1]} worker(s), start-up included", median_rate(rates)))
      print_table(f"folder decoded once (cache='memory'), {len(files)} decodes", rows)
    processes = counts[-1] if args.processes else 0
    headline = median_rate(
      [
        stream_rate(folder_dataset(root, counts[-1], processes), args.batch_size, args.batches)
        for _ in range(args.rounds)
      ]
    )
    kind = "processes" if processes else "threads"
    print_table(f"jaxcls folder stream, {counts[-1]} {kind}", [("random resized crop -> 224", headline)])
    if processes:
      per_image = headline.parent / headline.images
      print(
        f"parent process: {1e6 * per_image:.0f} us of CPU per image, a cap of about "
        f"{1 / max(per_image, 1e-9):,.0f} images/s for any number of workers"
      )
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"images per core-second: {headline.per_core_second:.0f}")


if __name__ == "__main__":
  main()
