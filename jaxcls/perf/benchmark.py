"""Training and inference throughput of the real jaxcls steps on synthetic, device-resident data.

  python -m jaxcls.benchmark --model resnet50 --batch_size 256 --image_size 224 --dtype bfloat16 \
    [--peak_tflops 989] [--json out.json] [--compilation_cache_dir DIR] [--model_arg stem=small] \
    [--profile_dir DIR [--profile_steps 5]]   # then: where the device time goes (jaxcls.trace_summary)
  python -m jaxcls.benchmark --summarize a.json b.json ...   # one table, jaxcls vs PyTorch ratios

What is timed is `steps.make_train_step` / `evaluation.loop.make_eval_step` (forward, backward, SGD update, metrics),
with the state built once on the devices and one uint8 batch sharded over the mesh, so the host input pipeline
is out of the picture. Compilation is timed apart from the steady steps; FLOPs per image come from XLA's cost
analysis of the compiled step (`core.compiled.CompiledOnFirstCall`). Only jax, flax and optax are imported (no
TensorFlow, clu or ml_collections), so it runs wherever jax does, CPU included.
"""

import ast
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcls import models, tasks
from jaxcls.core import compile_cache, compiled, parallel
from jaxcls.core.errors import ConfigError
from jaxcls.data import augment as augment_lib
from jaxcls.evaluation import loop as eval_loop
from jaxcls.perf import trace_summary
from jaxcls.perf.options import Options
from jaxcls.training import optim, step_metrics, steps

MODES = ("train", "infer")
# ImageNet statistics: the values only scale the synthetic pixels, the cost is the same for any.
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _Options(dict):
  """A dict read like a ConfigDict (`c.key` and `c.get(key, default)`), standing in for ml_collections."""

  def __getattr__(self, key: str) -> Any:
    try:
      return self[key]
    except KeyError as e:
      raise AttributeError(key) from e


def optimizer_config(learning_rate: float = 0.1) -> _Options:
  """SGD with Nesterov momentum and decoupled weight decay: config_base's optimizer, without ml_collections."""
  return _Options(
    name="sgd",
    learning_rate=learning_rate,
    momentum=0.9,
    nesterov=True,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=5e-4,
    schedule="cosine",
    warmup_steps=0,
    end_learning_rate_factor=0.0,
    step_boundaries=(0.5, 0.75),
    step_factor=0.1,
    grad_clip_norm=0.0,
  )


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
  """['stem=small', 'width=32'] -> {'stem': 'small', 'width': 32}: values are Python literals or plain strings."""
  out = {}
  for item in items:
    key, sep, raw = item.partition("=")
    if not sep or not key:
      raise ConfigError(f"--model_arg {item!r} must look like key=value, e.g. --model_arg stem=small.")
    try:
      out[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      out[key] = raw
  return out


def synthetic_batch(batch_size: int, image_shape: tuple[int, int, int], num_classes: int, mesh) -> dict:
  """Random uint8 images and labels made on the devices, already sharded along 'data' (no host transfer)."""
  sharding = parallel.batch_sharded(mesh)

  def make(key):
    image_key, label_key = jax.random.split(key)
    return {
      "image": jax.random.randint(image_key, (batch_size, *image_shape), 0, 256, jnp.int32).astype(jnp.uint8),
      "label": jax.random.randint(label_key, (batch_size,), 0, num_classes, jnp.int32),
      "mask": jnp.ones((batch_size,), bool),
    }

  return jax.jit(make, out_shardings=sharding)(jax.random.key(0, impl="rbg"))


def time_steps(run_step: Callable[[], Any], steps_per_repeat: int, repeats: int) -> list[float]:
  """Seconds per step of each repeat: `steps_per_repeat` calls queued back to back, then one block."""
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = None
    for _ in range(steps_per_repeat):
      out = run_step()
    jax.block_until_ready(out)
    seconds.append((time.perf_counter() - start) / steps_per_repeat)
  return seconds


def profile_mode(run_step: Callable[[], Any], mode: str, num_steps: int, trace_dir: str) -> dict[str, Any]:
  """Traces `num_steps` steps queued back to back as in the timed runs (one StepTraceAnnotation each, one block at
  the end), prints where the device time went and returns the compact summary (categories, top 10 ops).

  A profiler that fails (no CUPTI, an unreadable trace) gives {"error": ...} instead: the timed figures survive.
  """
  try:
    with jax.profiler.trace(trace_dir):
      start = time.perf_counter()
      out = None
      for i in range(num_steps):
        with jax.profiler.StepTraceAnnotation(mode, step_num=i):
          out = run_step()
      jax.block_until_ready(out)
      traced_s = time.perf_counter() - start
    summary = trace_summary.summarize(trace_dir, steps=num_steps, top=20)
  except Exception as e:  # pylint: disable=broad-except  # whatever failed, the timed record is still written
    print(f"profile of {mode} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    return {"error": f"{type(e).__name__}: {e}", "trace_dir": trace_dir}
  print(f"profile of {num_steps} {mode} steps ({trace_dir}):\n{trace_summary.format_summary(summary)}", flush=True)
  record = trace_summary.compact(summary, top=10)
  record["trace_dir"] = trace_dir
  if jax.default_backend() != "cpu" and not summary["source"].startswith("device planes"):
    record["warning"] = f"no {jax.default_backend()} device planes in the trace (is CUPTI installed?): host times only"
    print(f"warning: {record['warning']}", file=sys.stderr, flush=True)
  record["traced_wall_ms_per_step"] = traced_s / num_steps * 1e3  # with the profiler on: compare with step_ms
  return record


def roofline(
  step_ms: float,
  images_per_device: float,
  flops_per_image: float | None,
  bytes_per_image: float | None,
  peak_tflops: float,
  peak_gbps: float,
) -> dict[str, Any]:
  """The two floors of a step (its FLOPs at the peak rate, its bytes at the peak bandwidth) and how near it runs.

  The bytes are XLA's count over the compiled program (each fusion's operands and outputs), so the memory floor
  assumes nothing stays in cache between kernels: it is what the step would cost if it were purely memory-bound.
  `roofline_fraction` is the larger floor over the measured step time: 1.0 would be at the hardware limit.
  """
  compute = (
    flops_per_image * images_per_device / (peak_tflops * 1e12) * 1e3 if flops_per_image and peak_tflops > 0 else None
  )
  memory = bytes_per_image * images_per_device / (peak_gbps * 1e9) * 1e3 if bytes_per_image and peak_gbps > 0 else None
  floors = [f for f in (compute, memory) if f is not None]
  return {
    "compute_floor_ms": compute,
    "memory_floor_ms": memory,
    "roofline_fraction": max(floors) / step_ms if floors else None,
  }


def summarize_mode(
  step_seconds: list[float],
  batch_size: int,
  num_devices: int,
  compile_s: float | None,
  first_step_s: float,
  flops_per_image: float | None,
  peak_tflops: float,
  bytes_per_image: float | None = None,
  peak_gbps: float = 0.0,
) -> dict[str, Any]:
  """The per-mode record (same fields as benchmarks/torch_peer.py writes, plus XLA's bytes and the floors)."""
  rates = [batch_size / s for s in step_seconds]
  median = statistics.median(rates)
  per_device = median / num_devices
  tflops = flops_per_image * per_device / 1e12 if flops_per_image else None
  step_ms = batch_size / median * 1e3
  return {
    "images_per_s": median,
    "images_per_s_mean": statistics.fmean(rates),
    "images_per_s_per_device": per_device,
    "images_per_s_repeats": rates,
    "step_ms": step_ms,  # of the median rate
    "compile_s": compile_s,
    "first_step_s": first_step_s,
    "gflop_per_image": flops_per_image / 1e9 if flops_per_image else None,
    "tflops_per_device": tflops,
    "utilization": tflops / peak_tflops if tflops and peak_tflops > 0 else None,
    "gbytes_per_image": bytes_per_image / 1e9 if bytes_per_image else None,
    **roofline(step_ms, batch_size / num_devices, flops_per_image, bytes_per_image, peak_tflops, peak_gbps),
  }


def run(args: Options) -> dict[str, Any]:
  """Builds the model, state and batch once, then measures each requested mode; returns the JSON record."""
  started = time.perf_counter()
  modes = [m for m in args.modes.split(",") if m]
  if not modes or any(m not in MODES for m in modes):
    raise ConfigError(f"--modes={args.modes!r} must be a comma-separated subset of {', '.join(MODES)}.")
  if args.dtype not in steps.DTYPES:
    raise ConfigError(f"--dtype={args.dtype!r} is not valid; use one of {', '.join(steps.DTYPES)}.")
  if min(args.steps, args.repeats) < 1 or args.warmup < 0:
    raise ConfigError("--steps and --repeats must be >= 1 and --warmup >= 0.")
  if args.profile_dir and args.profile_steps < 1:
    raise ConfigError(f"--profile_steps={args.profile_steps} must be >= 1 when --profile_dir is set.")
  cache_entries = None
  if args.compilation_cache_dir:
    cache_entries = compile_cache.entries(compile_cache.resolve(args.compilation_cache_dir))
    compile_cache.enable(args.compilation_cache_dir)

  mesh = parallel.make_mesh()
  parallel.check_batch_size(args.batch_size, mesh, "batch_size (--batch_size)")
  image_shape = (args.image_size, args.image_size, args.channels)
  mean, std = (_MEAN, _STD) if args.channels == 3 else ((0.5,) * args.channels, (0.25,) * args.channels)
  model_config = {"name": args.model, **parse_model_args(args.model_arg)}
  task = tasks.build({"type": "multiclass"}, args.num_classes)
  model = models.build(model_config, task.num_outputs, args.dtype)
  total_steps = args.warmup + args.steps * args.repeats + 2
  tx, schedule = optim.build_optimizer(optimizer_config(), total_steps)
  augment = augment_lib.build(args.augment, args.num_classes)
  norm = dict(mean=mean, std=std, dtype=args.dtype, mesh=mesh)
  init = steps.make_init(model, tx, image_shape=image_shape, dtype=args.dtype, use_ema=False, mesh=mesh)
  batch = synthetic_batch(args.batch_size, image_shape, args.num_classes, mesh)
  key = jax.random.key(0)

  def make_train():
    return compiled.CompiledOnFirstCall(
      steps.make_train_step(model, task, tx, schedule, augment, ema_decay=0.0, **norm),
      "train",
      args.batch_size / mesh.size,
    )

  start = time.perf_counter()
  state = jax.block_until_ready(init(jax.random.key(args.seed, impl="rbg")))
  init_s = time.perf_counter() - start
  results: dict[str, Any] = {}
  time_to_first_step = None
  holder = {"state": state}  # the train step donates its input state: every mode reads the newest one from here
  step_runners = {}
  for mode in modes:
    if mode == "train":
      step = make_train()
      # The real step sums its metrics into an on-device window (jaxcls.training.step_metrics); here it is never reset,
      # as the loop does between log points, so both run the very same program.
      names = step_metrics.metric_names(task, task.num_outputs, batch["label"].shape, batch["label"].dtype)
      holder["acc"] = parallel.replicate(step_metrics.zeros(names), mesh)

      def run_step(step=step):
        holder["state"], holder["acc"] = step(holder["state"], holder["acc"], batch, key)
        return holder["acc"]
    else:
      step = compiled.CompiledOnFirstCall(
        eval_loop.make_eval_step(model, task, **norm), "infer", args.batch_size / mesh.size
      )

      def run_step(step=step):
        return step({"params": holder["state"].params, "batch_stats": holder["state"].batch_stats}, batch)

    step_runners[mode] = run_step

    start = time.perf_counter()
    jax.block_until_ready(run_step())
    first_step_s = time.perf_counter() - start
    if mode == "train":
      time_to_first_step = time.perf_counter() - started
    if args.warmup:
      time_steps(run_step, args.warmup, 1)
    seconds = time_steps(run_step, args.steps, args.repeats)
    results[mode] = summarize_mode(
      seconds,
      args.batch_size,
      mesh.size,
      step.compile_seconds,
      first_step_s,
      step.flops_per_example,
      args.peak_tflops,
      step.bytes_per_example,
      args.peak_gbps,
    )

  # Traced only once every mode is timed, so the profiler cannot touch the timed figures.
  profile = (
    {
      mode: profile_mode(run_step, mode, args.profile_steps, os.path.join(args.profile_dir, mode))
      for mode, run_step in step_runners.items()
    }
    if args.profile_dir
    else None
  )
  state = holder["state"]
  compile_warm_s = None
  if args.compilation_cache_dir and "train" in results:
    jax.clear_caches()  # forget the in-memory executables: the next compile can only come from the disk cache
    again = make_train()
    jax.block_until_ready(again(state, holder["acc"], batch, key))
    compile_warm_s = again.compile_seconds

  device = jax.devices()[0]
  return {
    "framework": "jaxcls",
    "label": args.label
    or " ".join(["jaxcls", args.model, *args.model_arg, args.dtype, f"b{args.batch_size}", f"{args.image_size}px"]),
    "model": args.model,
    "model_args": model_config,
    "batch_size": args.batch_size,
    "image_size": args.image_size,
    "channels": args.channels,
    "num_classes": args.num_classes,
    "dtype": args.dtype,
    "augment": args.augment,
    "backend": jax.default_backend(),
    "device_kind": device.device_kind,
    "num_devices": mesh.size,
    "versions": {"jax": jax.__version__, "python": platform.python_version()},
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "warmup_steps": args.warmup,
    "steps_per_repeat": args.steps,
    "repeats": args.repeats,
    "peak_tflops": args.peak_tflops or None,
    "peak_gbps": args.peak_gbps or None,
    "init_s": init_s,
    "time_to_first_step_s": time_to_first_step,
    "compilation_cache_dir": args.compilation_cache_dir or None,
    "compilation_cache_entries_at_start": cache_entries,
    "compile_warm_s": compile_warm_s,
    "flops_source": "xla_cost_analysis",
    **results,
    **({"profile": profile} if profile else {}),
  }


def _fmt(value: Any, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def table(records: Sequence[dict[str, Any]]) -> str:
  """One row per (record, mode); jaxcls train rows also get their speed over the PyTorch run of the same model,
  stem, batch, size and dtype (its torch.compile run when there is one, else its eager run)."""

  def shape(r):
    stem = (r.get("model_args") or {}).get("stem") or "imagenet"
    return r["model"], stem, r["batch_size"], r["image_size"], r["dtype"]

  peers = {}
  for r in sorted(records, key=lambda r: not r.get("torch_compile", False)):
    if r.get("framework") != "jaxcls" and "train" in r:
      peers.setdefault(shape(r), r)
  header = (
    f"{'run':<50} {'mode':<5} {'img/s':>10} {'img/s/dev':>10} {'ms/step':>8} {'compile s':>9} "
    f"{'GFLOP/img':>9} {'TFLOP/s':>8} {'util':>6} {'MB/img':>7} {'roof':>5} {'vs peer':>7}"
  )
  lines = [header, "-" * len(header)]
  for r in records:
    for mode in MODES:
      m = r.get(mode)
      if not m:
        continue
      ratio = "-"
      peer = peers.get(shape(r))
      if r.get("framework") == "jaxcls" and mode == "train" and peer is not None:
        ratio = f"{m['images_per_s'] / peer['train']['images_per_s']:.2f}x"
      lines.append(
        f"{r['label'][:50]:<50} {mode:<5} {m['images_per_s']:>10,.0f} {m['images_per_s_per_device']:>10,.0f} "
        f"{m['step_ms']:>8.2f} {_fmt(m.get('compile_s'), '9.1f'):>9} {_fmt(m.get('gflop_per_image'), '9.3f'):>9} "
        f"{_fmt(m.get('tflops_per_device'), '8.1f'):>8} {_fmt(m.get('utilization'), '6.1%'):>6} "
        f"{_fmt(m['gbytes_per_image'] * 1e3 if m.get('gbytes_per_image') else None, '7.1f'):>7} "
        f"{_fmt(m.get('roofline_fraction'), '5.0%'):>5} {ratio:>7}"
      )
  return "\n".join(lines)


def describe(record: dict[str, Any]) -> str:
  """The line under the table: devices, init and time to the first train step (and the warm recompile)."""
  return (
    f"devices: {record['num_devices']} x {record['device_kind']} ({record['backend']}); init "
    f"{record['init_s']:.1f} s; time to first train step {_fmt(record['time_to_first_step_s'], '.1f')} s"
    + (
      f"; train step recompiled from the cache in {record['compile_warm_s']:.1f} s"
      if record["compile_warm_s"] is not None
      else ""
    )
  )


def load_records(paths: Sequence[str]) -> list[dict[str, Any]]:
  """The JSON records at `paths` (this module's and benchmarks/torch_peer.py's), for `table`."""
  records = []
  for path in paths:
    try:
      with open(path) as f:
        records.append(json.load(f))
    except OSError as e:
      raise ConfigError(
        f"Cannot read the benchmark record {path!r} ({e.strerror}); give JSON files written by --json."
      ) from None
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path!r} is not a JSON benchmark record ({e.msg} at line {e.lineno}).") from None
  return records
