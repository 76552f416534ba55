"""Wall time of the default digits run: `python -m jaxcls.main` against the plain flax script doing the same training.

  python benchmarks/digits_vs_plain.py [--rounds 3] [--config configs/default.py] [--repo DIR]

Each round runs both as whole processes (start-up, compilation, training, evaluation and exit all count), taking
turns at going first so that drift in the machine's load hits both alike. jaxcls trains into a fresh temporary
workdir and its accuracy is read from WORKDIR/report.json; the plain script's from its last line. The plain script
gets its flags from the config (`plain_args`), which refuses settings it does not implement, so both always do the
same training. Both run with a cold compilation cache: jaxcls's `compilation_cache_dir` is '' by default and any
JAX_COMPILATION_CACHE_DIR in the environment is removed. Last line: the median ratio jaxcls / plain.
"""

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PLAIN = os.path.join(HERE, "plain_flax_digits.py")

# Config values the plain script hard-codes: a config that changes one of them is not comparable.
FIXED = {
  "dataset.name": "digits",
  "dataset.test_fraction": 0.2,
  "dataset.split_seed": 0,
  "dataset.mean": None,
  "dataset.std": None,
  "dataset.sampling": "uniform",
  "dataset.train_split": "train",
  "dataset.eval_split": "test",
  "model.name": "simple_cnn",
  "task.type": "multiclass",
  "task.class_weights": "none",
  "optimizer.name": "adamw",
  "optimizer.schedule": "cosine",
  "optimizer.b1": 0.9,
  "optimizer.b2": 0.999,
  "optimizer.eps": 1e-8,
  "optimizer.grad_clip_norm": 0.0,
  "optimizer.backbone_lr_factor": 1.0,
  "dtype": "float32",
  "eval_tta": "none",
  "init_from": "",
}
# simple_cnn's arguments the plain CNN hard-codes, with simple_cnn's defaults.
FIXED_MODEL = {"convs_per_block": 1, "activation": "relu", "norm": "batch", "pooling": "max", "dense": ()}
_CROP = re.compile(r"^\s*random_crop\(\s*padding\s*=\s*(\d+)\s*,\s*mode\s*=\s*['\"]constant['\"]\s*\)\s*$")


def load_config(path: str):
  """get_config() of a config file (configs import jaxcls.config.base, so the repo goes on sys.path)."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  spec = importlib.util.spec_from_file_location("_compared_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _get(config, dotted: str):
  for key in dotted.split("."):
    config = config[key]
  return config


def plain_args(config) -> list[str]:
  """The plain script's flags for the training `config` describes; a ValueError for what it cannot reproduce."""
  bad = [f"{k}={_get(config, k)!r} (the plain script has {v!r})" for k, v in FIXED.items() if _get(config, k) != v]
  model = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model.items()}
  bad += [
    f"model.{k}={model[k]!r} (the plain script has {v!r})" for k, v in FIXED_MODEL.items() if model.get(k, v) != v
  ]
  augment = config.augment
  match = _CROP.match(augment) if isinstance(augment, str) and augment.strip() else None
  if isinstance(augment, str) and augment.strip() and not match:
    bad.append(f"augment={augment!r} (the plain script has only random_crop(padding=N, mode='constant'))")
  size = tuple(config.dataset.image_size or (8, 8))
  if len(size) != 2 or size[0] != size[1]:
    bad.append(f"dataset.image_size={config.dataset.image_size!r} (the plain script resizes to squares only)")
  if bad:
    raise ValueError("The plain script cannot do this training: " + "; ".join(bad) + ".")
  o = config.optimizer
  values = {
    "seed": config.seed,
    "image_size": size[0],
    "widths": ",".join(str(w) for w in config.model.widths),
    "dropout": config.model.get("dropout", 0.1),
    "learning_rate": o.learning_rate,
    "weight_decay": o.weight_decay,
    "warmup_steps": o.warmup_steps,
    "end_learning_rate_factor": o.end_learning_rate_factor,
    "crop_padding": int(match.group(1)) if match else 0,
    "batch_size": config.batch_size,
    "num_epochs": config.num_epochs,
    "num_train_steps": config.num_train_steps,
    "label_smoothing": config.task.label_smoothing,
    "ema_decay": config.ema_decay,
  }
  return [f"--{k}={v}" for k, v in values.items()]


def timed(command: list[str], cwd: str, env: dict) -> tuple[float, str]:
  """(wall seconds, stdout) of one whole process; a RuntimeError with its output's tail when it fails."""
  start = time.perf_counter()
  proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
  return seconds, proc.stdout


def run_jaxcls(repo: str, config_path: str, env: dict) -> tuple[float, float]:
  """(wall seconds, test accuracy) of `python -m jaxcls.main` in a fresh workdir, removed afterwards."""
  import json  # pylint: disable=g-import-not-at-top

  workdir = tempfile.mkdtemp(prefix="jaxcls-digits-")
  try:
    seconds, _ = timed([sys.executable, "-m", "jaxcls.main", "--config", config_path, "--workdir", workdir], repo, env)
    with open(os.path.join(workdir, "report.json")) as f:
      return seconds, float(json.load(f)["accuracy"])
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def run_plain(args: list[str], env: dict) -> tuple[float, float]:
  """(wall seconds, test accuracy) of the plain script, the accuracy from its last line."""
  seconds, out = timed([sys.executable, PLAIN, *args], HERE, env)
  return seconds, float(out.strip().splitlines()[-1].split()[-1])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--config", default=os.path.join(REPO, "configs", "default.py"))
  p.add_argument("--repo", default=REPO, help="the checkout whose jaxcls is timed (put first on PYTHONPATH)")
  a = p.parse_args()
  config_path = os.path.abspath(a.config)
  flags = plain_args(load_config(config_path))
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(a.repo)] + [x for x in [env.get("PYTHONPATH")] if x])
  print(
    f"config {config_path}; jaxcls from {os.path.abspath(a.repo)}; cold compilation cache; "
    f"load {os.getloadavg()[0]:.2f}; plain flags: {' '.join(flags)}",
    flush=True,
  )
  header = f"{'round':>5}  {'jaxcls s':>9}  {'plain s':>8}  {'ratio':>6}  {'jaxcls acc':>10}  {'plain acc':>9}"
  print(header, flush=True)
  ratios, jax_s, plain_s = [], [], []
  for r in range(a.rounds):
    runs = {}
    for name in ("jaxcls", "plain") if r % 2 == 0 else ("plain", "jaxcls"):
      runs[name] = run_jaxcls(a.repo, config_path, env) if name == "jaxcls" else run_plain(flags, env)
    (js, ja), (ps, pa) = runs["jaxcls"], runs["plain"]
    ratios.append(js / ps)
    jax_s.append(js)
    plain_s.append(ps)
    print(f"{r:>5}  {js:>9.2f}  {ps:>8.2f}  {js / ps:>6.3f}  {ja:>10.4f}  {pa:>9.4f}", flush=True)
  print(
    f"median wall: jaxcls {statistics.median(jax_s):.2f} s, plain {statistics.median(plain_s):.2f} s; "
    f"load {os.getloadavg()[0]:.2f}"
  )
  print(f"median ratio jaxcls/plain: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
  main()
