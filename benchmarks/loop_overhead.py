"""The shipped training loop's steps/s against the bare jitted train step, for a step as short as an accelerator's.

  python benchmarks/loop_overhead.py [--steps 3000] [--rounds 3] [--batch_size 16] [--widths 8,16,32]

Both run the same program (`steps.make_train_step`: simple_cnn, SGD, digits-sized 8x8x1 images, 10 classes):
- bare: `jaxcls.perf.benchmark.run` queues the step back to back on one device-resident batch and blocks once;
- loop: `train.train_and_evaluate` on the digits source with evaluation and checkpoints only at the end
  (`eval_every_steps=checkpoint_every_steps=-1`), its steady steps/s read from `train/steps_per_sec` in
  metrics.jsonl (the loop's own measure: host batches, their transfer, the step, the log points; eval and
  checkpoints counted apart).
They alternate (bare, loop, bare, loop, ...) in one process; the last line is the median loop / bare ratio.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxcls.config import base as config_base
from jaxcls.perf import benchmark  # noqa: E402  pylint: disable=wrong-import-position
from jaxcls.training import loop as train


def bare_steps_per_sec(args) -> float:
  record = benchmark.run(
    benchmark.Options(
      model="simple_cnn",
      model_arg=(f"widths=({args.widths},)",),
      batch_size=args.batch_size,
      image_size=8,
      channels=1,
      num_classes=10,
      dtype="float32",
      modes="train",
      warmup=50,
      steps=args.steps // 3,
      repeats=3,
    )
  )
  return 1e3 / record["train"]["step_ms"]


def loop_steps_per_sec(args, workdir: str) -> float:
  config = config_base.get_base_config()
  config.dataset.name = "digits"
  config.model.name = "simple_cnn"
  config.model.widths = tuple(int(w) for w in args.widths.split(","))
  config.batch_size = args.batch_size
  config.num_train_steps = args.steps
  config.log_every_steps = max(args.steps // 6, 1)
  config.eval_every_steps = -1
  config.checkpoint_every_steps = -1
  config.best_metric = ""
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rates = [line["train/steps_per_sec"] for line in map(json.loads, f) if "train/steps_per_sec" in line]
  return statistics.median(rates[1:] or rates)  # the first window follows the compile: left out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--widths", default="8,16,32")
  args = p.parse_args(argv)
  from absl import logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)
  bare, loop = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      bare.append(bare_steps_per_sec(args))
      loop.append(loop_steps_per_sec(args, os.path.join(tmp, f"run{r}")))
      print(
        f"round {r + 1}: bare {bare[-1]:8.1f} steps/s   loop {loop[-1]:8.1f} steps/s   ratio {loop[-1] / bare[-1]:.3f}",
        flush=True,
      )
  print(
    f"load average {os.getloadavg()[0]:.2f}; median bare {statistics.median(bare):.1f} steps/s, "
    f"loop {statistics.median(loop):.1f} steps/s"
  )
  print(f"loop / bare steps per second: {statistics.median(loop) / statistics.median(bare):.3f}")


if __name__ == "__main__":
  main()
