"""`python -m jaxcls.predict` against the exported model served by examples/serve_exported.py, whole processes.

  python benchmarks/predict_vs_export.py [--workdir DIR] [--images 1000] [--batch_size 64] [--repeats 5]

Without --workdir it trains a small folder workdir (simple_cnn at 64x64, a few steps) on JPEGs it writes. It exports
the workdir (cpu), writes `--images` JPEG files (sized so that reduced-scale JPEG decoding applies, as for photos),
then runs, in alternation, `python -m jaxcls.predict --workdir W --batch_size B FILES...` and
`python examples/serve_exported.py MODEL_DIR FILES... --batch_size B`: the same files, the same batch size and the
same number of decode threads (`--workers`), both streaming (decode a batch, predict it, print it). Each run is a
whole process (imports, restore or load, compile, decode, forward passes, printing, exit); its wall time and peak
resident memory (from `os.wait4`, per child) are recorded, and both print the same lines (checked on the first
pair). Prints the median of each, the load average, and as its last line the ratio of the medians (predict /
exported; the issue's target is <= 1.05).

Both run once before the timed runs, untimed, with a cache folder of their own (JAXCLS_CACHE_DIR): so predict runs
as it does from its second call on a checkpoint, loading its compiled forward pass and weights from its cache
(jaxcls/inference/forward_cache.py). `--cold` instead empties that folder before every predict run: the first
call on a checkpoint (restore, trace, compile, and writing the cache entry).

`--baseline TREE` adds a third command to the alternation: `python -m jaxcls.predict` run from another checkout
of jaxcls (e.g. `git archive OLD_COMMIT jaxcls | tar -x -C TREE`), so a change is measured against the code before
it under the same load.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVE = os.path.join(REPO, "examples", "serve_exported.py")
CLASSES = ("dark", "mid", "bright")


def write_images(folder: str, count: int, size=(150, 180), seed: int = 0) -> list[str]:
  """`count` JPEGs in one subfolder per class, brightness by class; returns their paths, sorted."""
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    k = i % len(CLASSES)
    os.makedirs(os.path.join(folder, CLASSES[k]), exist_ok=True)
    base = rng.normal(50 + 75 * k, 40, (size[0] // 6, size[1] // 6, 3))
    pixels = np.clip(np.kron(base, np.ones((6, 6, 1))) + rng.normal(0, 12, size + (3,)), 0, 255)
    path = os.path.join(folder, CLASSES[k], f"{i:05d}.jpg")
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
    paths.append(path)
  return sorted(paths)


def train(workdir: str, photos: str) -> None:
  """A small folder-trained workdir: simple_cnn at 64x64, centre-cropped eval, a few steps."""
  overrides = {
    "dataset.path": photos,
    "dataset.image_size": "(64, 64)",
    "dataset.cache": "memory",
    "dataset.train_crop": "resize",
    "model.name": "simple_cnn",
    "model.widths": "(16, 32, 64)",
    "num_train_steps": 20,
    "eval_every_steps": -1,
    "checkpoint_every_steps": -1,
    "batch_size": 32,
    "augment": "flip_lr",
    "optimizer.warmup_steps": 2,
  }
  command = [
    sys.executable,
    "-m",
    "jaxcls.main",
    "--config",
    os.path.join(REPO, "configs", "folder.py"),
    "--workdir",
    workdir,
  ] + [f"--config.{key}={value}" for key, value in overrides.items()]
  proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  if proc.returncode != 0:
    raise SystemExit(f"Training the benchmark's workdir failed:\n{proc.stderr[-3000:]}")


def timed(command: list[str], env: dict, cwd: str = REPO) -> tuple[float, float, float, str, str]:
  """(wall seconds, CPU seconds (user + system), peak RSS in MiB, stdout, stderr) of one child process, which
  must succeed. CPU seconds are less sensitive to other load on the machine than wall seconds."""
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    if proc.returncode != 0:
      raise SystemExit(f"{' '.join(command[:4])} ... failed ({proc.returncode}):\n{err.read()[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.read(), err.read()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", help="a trained jaxcls workdir (default: train a small one)")
  parser.add_argument("--images", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode threads, in both")
  parser.add_argument("--repeats", type=int, default=5, help="runs of each, in alternation")
  parser.add_argument("--keep", help="keep the workdir, export and images in this folder")
  parser.add_argument("--baseline", help="also time predict from this other jaxcls tree (holding jaxcls/)")
  parser.add_argument(
    "--cold",
    action="store_true",
    help="give each predict run an empty cache folder (JAXCLS_CACHE_DIR): the first predict on a checkpoint",
  )
  args = parser.parse_args()
  root = args.keep or tempfile.mkdtemp(prefix="predict_vs_export-")
  os.makedirs(root, exist_ok=True)
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  try:
    files = write_images(os.path.join(root, "images"), args.images)
    workdir = args.workdir
    if not workdir:
      workdir = os.path.join(root, "workdir")
      if not os.path.exists(os.path.join(workdir, "checkpoints")):
        train(workdir, os.path.join(root, "images"))
    model_dir = os.path.join(root, "exported")
    subprocess.run(
      [
        sys.executable,
        "-m",
        "jaxcls.export",
        "--workdir",
        workdir,
        "--output",
        model_dir,
        "--platforms",
        "cpu",
        "--overwrite",
      ],
      check=True,
      cwd=REPO,
      env=env,
      stdout=subprocess.DEVNULL,
    )
    common = ["--batch_size", str(args.batch_size), "--workers", str(args.workers), "--top_k", "3"]
    commands = {
      "predict": [sys.executable, "-m", "jaxcls.predict", "--workdir", workdir, *common, *files],
      "exported": [sys.executable, SERVE, model_dir, *files, *common],
    }
    cwds = {name: REPO for name in commands}
    if args.baseline:
      commands["baseline"] = commands["predict"]
      cwds["baseline"] = os.path.abspath(args.baseline)  # `-m` puts the current folder first on sys.path
    walls = {name: [] for name in commands}
    cpus = {name: [] for name in commands}
    rss = {name: [] for name in commands}
    cache = tempfile.mkdtemp(prefix="cache-", dir=root)
    env["JAXCLS_CACHE_DIR"] = cache  # its own compilation and forward-pass cache, warmed up below unless --cold
    if not args.cold:
      for name, command in commands.items():
        wall = timed(command, env, cwds[name])[0]
        print(f"warm-up {name:8s} {wall:6.2f} s (not counted; predict keeps its forward pass in the cache)")
    for repeat in range(args.repeats):
      outputs = {}
      for name, command in commands.items():
        if args.cold:
          shutil.rmtree(cache, ignore_errors=True)
        wall, cpu, peak, out, err = timed(command, env, cwds[name])
        walls[name].append(wall)
        cpus[name].append(cpu)
        rss[name].append(peak)
        outputs[name] = out
        rate = [line for line in err.splitlines() if "images/s" in line]
        print(
          f"run {repeat + 1} {name:8s} {wall:6.2f} s  CPU {cpu:6.2f} s  peak RSS {peak:5.0f} MiB  "
          f"{rate[-1] if rate else ''}",
          flush=True,
        )
      if repeat == 0 and any(out.splitlines() != outputs["exported"].splitlines() for out in outputs.values()):
        raise SystemExit("predict and the exported model printed different lines; the comparison is not fair.")
    print(
      f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
      f"{args.images} images, batch {args.batch_size}, {args.workers} decode threads, {args.repeats} runs each"
    )
    for name in commands:
      print(
        f"{name:8s} median wall {statistics.median(walls[name]):6.2f} s  CPU {statistics.median(cpus[name]):6.2f} s"
        f"  peak RSS {statistics.median(rss[name]):5.0f} MiB"
      )
    print(
      f"predict / exported CPU time: {statistics.median(cpus['predict']) / statistics.median(cpus['exported']):.3f}"
    )
    if args.baseline:
      print(
        f"baseline / exported wall time: "
        f"{statistics.median(walls['baseline']) / statistics.median(walls['exported']):.3f}"
      )
    print(
      f"predict / exported wall time: {statistics.median(walls['predict']) / statistics.median(walls['exported']):.3f}"
    )
  finally:
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
