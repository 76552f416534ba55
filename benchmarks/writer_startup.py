"""Start-up cost of the metric writers: `create_writer` + `create_progress` before and after TensorFlow left them.

  python benchmarks/writer_startup.py [--rounds 7] [--before REV]

Each round runs two fresh processes, taking turns at going first: 'before' loads `jaxcls/training/writers.py` as
it was at git revision REV (default 87a2f6a, where TensorBoard went through clu and TensorFlow whenever they were
installed) and 'after' uses the working tree's; everything else is the working tree's. Each process times
`import jaxcls.training.loop`, then `create_writer` + `create_progress` with the default writers, one scalar write and
`close`, and lists whether TensorFlow, clu or TFDS got imported. Medians are printed; the last line is the
median saving of the writer set-up in seconds. Say the machine's load (`uptime`) with the figures.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import importlib.util, json, sys, tempfile, time
t0 = time.perf_counter()
import jaxcls.training.loop  # noqa: F401  (what a training run imports before it builds its writer)
t1 = time.perf_counter()
if sys.argv[1]:  # the older writers.py, loaded beside the working tree's jaxcls
  spec = importlib.util.spec_from_file_location("writers_before", sys.argv[1])
  writers = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(writers)
else:
  from jaxcls.training import writers
t2 = time.perf_counter()
writer = writers.create_writer(tempfile.mkdtemp(), is_main=True, resume_step=0)
progress = writers.create_progress(100, writer, is_main=True)
writer.write_scalars(1, {"train/loss": 1.0})
writer.close()
t3 = time.perf_counter()
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "clu", "tensorflow_datasets"})
print(json.dumps({"import_train_s": t1 - t0, "writer_s": t3 - t2, "heavy": heavy,
                  "writer_class": type(writer.writers[0]).__name__, "progress": type(progress).__name__}))
"""


def run_once(before_path: str) -> dict:
  """One fresh process; its JSON line plus its whole wall time."""
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  start = __import__("time").perf_counter()
  out = subprocess.run(
    [sys.executable, "-c", CHILD, before_path], cwd=REPO, env=env, capture_output=True, text=True, check=True
  ).stdout
  result = json.loads(out.strip().splitlines()[-1])
  result["process_s"] = __import__("time").perf_counter() - start
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--before", default="87a2f6a", help="git revision of the 'before' jaxcls/training/writers.py")
  args = parser.parse_args()
  source = subprocess.run(
    ["git", "show", f"{args.before}:jaxcls/training/writers.py"], cwd=REPO, capture_output=True, text=True, check=True
  ).stdout
  with tempfile.TemporaryDirectory() as tmp:
    before_path = os.path.join(tmp, "writers_before.py")
    with open(before_path, "w") as f:
      f.write(source)
    run_once(before_path), run_once("")  # warm the file cache; not counted
    results = {"before": [], "after": []}
    for i in range(args.rounds):
      order = [("before", before_path), ("after", "")]
      for name, path in order if i % 2 == 0 else order[::-1]:
        results[name].append(run_once(path))
  for name, rows in results.items():
    print(
      f"{name:6s} writer {rows[0]['writer_class']}, progress {rows[0]['progress']}, imports {rows[0]['heavy']}: "
      f"import jaxcls.training.loop {statistics.median(r['import_train_s'] for r in rows):.2f} s, "
      f"create_writer+create_progress+write+close {statistics.median(r['writer_s'] for r in rows):.3f} s, "
      f"whole process {statistics.median(r['process_s'] for r in rows):.2f} s (medians of {len(rows)})"
    )
  saving = [b["writer_s"] - a["writer_s"] for b, a in zip(results["before"], results["after"])]
  print(f"writer set-up saving per run: {statistics.median(saving):.2f} s (median of {len(saving)} pairs)")


if __name__ == "__main__":
  main()
