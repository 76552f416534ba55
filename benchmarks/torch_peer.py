"""The PyTorch peer of `python -m jaxcls.benchmark`: the same training step on the same synthetic batch.

  python benchmarks/torch_peer.py --model resnet50 --batch_size 256 --image_size 224 --dtype bfloat16 \
    [--compile | --no-compile] [--stem small] [--json out.json]

torchvision's model in channels_last, uint8 images normalised on the device, bfloat16 autocast, cross entropy,
SGD with Nesterov momentum and weight decay (fused on CUDA), the model under `torch.compile` unless
--no-compile. Its JSON has the fields jaxcls.benchmark writes, so `python -m jaxcls.benchmark --summarize`
puts both in one table with the jaxcls/PyTorch ratio. Needs only torch and torchvision (not jaxcls).
FLOPs per image come from torch's FlopCounterMode (matmuls and convolutions only, a multiply-add counting two),
so they are a little below XLA's count, which includes the elementwise work.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torchvision

MODES = ("train", "infer")
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def build_model(name: str, num_classes: int, stem: str) -> torch.nn.Module:
  """A torchvision model; stem='small' is jaxcls's ResNet 'small' stem (3x3/1 conv, no max pool) for 32x32."""
  try:
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
  except AttributeError as e:
    raise SystemExit(f"torchvision has no model {name!r}; use e.g. resnet18 or resnet50.") from e
  if stem == "small":
    if not hasattr(model, "maxpool"):
      raise SystemExit(f"--stem small applies to ResNets, not {name!r}.")
    model.conv1 = torch.nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
  elif stem != "imagenet":
    raise SystemExit(f"--stem {stem!r} is not valid; use imagenet or small.")
  return model


def sync(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def time_steps(run_step, steps_per_repeat: int, repeats: int, device: torch.device) -> list[float]:
  """Seconds per step of each repeat: `steps_per_repeat` steps queued back to back, then one synchronise."""
  seconds = []
  for _ in range(repeats):
    sync(device)
    start = time.perf_counter()
    for _ in range(steps_per_repeat):
      run_step()
    sync(device)
    seconds.append((time.perf_counter() - start) / steps_per_repeat)
  return seconds


def summarize_mode(step_seconds, batch_size, first_step_s, flops_per_image, peak_tflops) -> dict:
  """Same fields as jaxcls.perf.benchmark.summarize_mode; compile_s is the first step less a steady one."""
  rates = [batch_size / s for s in step_seconds]
  median = statistics.median(rates)
  tflops = flops_per_image * median / 1e12 if flops_per_image else None
  return {
    "images_per_s": median,
    "images_per_s_mean": statistics.fmean(rates),
    "images_per_s_per_device": median,
    "images_per_s_repeats": rates,
    "step_ms": batch_size / median * 1e3,  # of the median rate
    "compile_s": max(first_step_s - batch_size / median, 0.0),
    "first_step_s": first_step_s,
    "gflop_per_image": flops_per_image / 1e9 if flops_per_image else None,
    "tflops_per_device": tflops,
    "utilization": tflops / peak_tflops if tflops and peak_tflops > 0 else None,
  }


def count_flops(fn, batch_size: int) -> float | None:
  """FLOPs per image of one call of `fn`, by torch's FlopCounterMode (None where it is unavailable)."""
  try:
    from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  counter = FlopCounterMode(display=False)
  with counter:
    fn()
  return counter.get_total_flops() / batch_size


def run(args: argparse.Namespace) -> dict:
  started = time.perf_counter()
  modes = [m for m in args.modes.split(",") if m]
  if not modes or any(m not in MODES for m in modes):
    raise SystemExit(f"--modes={args.modes!r} must be a comma-separated subset of {', '.join(MODES)}.")
  if args.dtype not in _DTYPES:
    raise SystemExit(f"--dtype={args.dtype!r} is not valid; use one of {', '.join(_DTYPES)}.")
  torch.manual_seed(args.seed)
  device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
  if device.type == "cuda":
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  model = build_model(args.model, args.num_classes, args.stem).to(device, memory_format=torch.channels_last)
  fused = device.type == "cuda"
  optimizer = torch.optim.SGD(
    model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=fused or None
  )
  loss_fn = torch.nn.CrossEntropyLoss()
  generator = torch.Generator(device).manual_seed(args.seed)
  images = torch.randint(
    0,
    256,
    (args.batch_size, 3, args.image_size, args.image_size),
    dtype=torch.uint8,
    device=device,
    generator=generator,
  ).contiguous(memory_format=torch.channels_last)
  labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device, generator=generator)
  mean = torch.tensor(_MEAN, device=device).view(1, 3, 1, 1) * 255
  inv_std = 1.0 / (torch.tensor(_STD, device=device).view(1, 3, 1, 1) * 255)
  autocast_dtype = _DTYPES[args.dtype]
  net = torch.compile(model) if args.compile else model

  def forward(module):
    x = ((images.float() - mean) * inv_std).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
      return module(x)

  def train_step(module=net):
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(forward(module).float(), labels)
    loss.backward()
    optimizer.step()
    return loss

  @torch.no_grad()
  def infer_step(module=net):
    return forward(module).float().softmax(-1)

  results, time_to_first_step = {}, None
  for mode in modes:
    model.train(mode == "train")
    step = train_step if mode == "train" else infer_step
    # Eager, one step, called at once (so the loop variable is current): also a warm-up of the kernels.
    flops = count_flops(lambda: step(model), args.batch_size)  # noqa: B023
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    first_step_s = time.perf_counter() - start
    if mode == "train":
      time_to_first_step = time.perf_counter() - started
    if args.warmup:
      time_steps(step, args.warmup, 1, device)
    seconds = time_steps(step, args.steps, args.repeats, device)
    results[mode] = summarize_mode(seconds, args.batch_size, first_step_s, flops, args.peak_tflops)

  compiled = "compile" if args.compile else "eager"
  return {
    "framework": "torch",
    "label": args.label
    or " ".join(
      [
        "torch",
        args.model,
        *([f"stem={args.stem}"] if args.stem != "imagenet" else []),
        compiled,
        args.dtype,
        f"b{args.batch_size}",
        f"{args.image_size}px",
      ]
    ),
    "model": args.model,
    "model_args": {"stem": args.stem},
    "batch_size": args.batch_size,
    "image_size": args.image_size,
    "channels": 3,
    "num_classes": args.num_classes,
    "dtype": args.dtype,
    "backend": device.type,
    "device_kind": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
    "num_devices": 1,
    "versions": {
      "torch": torch.__version__,
      "torchvision": torchvision.__version__,
      "python": platform.python_version(),
    },
    "torch_compile": bool(args.compile),
    "fused_optimizer": fused,
    "warmup_steps": args.warmup,
    "steps_per_repeat": args.steps,
    "repeats": args.repeats,
    "peak_tflops": args.peak_tflops or None,
    "time_to_first_step_s": time_to_first_step,
    "flops_source": "torch_flop_counter",
    **results,
  }


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="resnet50", help="torchvision model name")
  p.add_argument("--stem", default="imagenet", help="imagenet | small (ResNets: 3x3/1 conv, no max pool)")
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--num_classes", type=int, default=1000)
  p.add_argument("--dtype", default="bfloat16", help="float32 | bfloat16 (autocast)")
  p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile the model")
  p.add_argument("--modes", default="train", help="comma-separated: train, infer")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--peak_tflops", type=float, default=0.0)
  p.add_argument("--device", default="", help="default: cuda when available, else cpu")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--label", default="")
  p.add_argument("--json", default="")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  record = run(args)
  for mode in MODES:
    if mode in record:
      m = record[mode]
      print(
        f"{record['label']} {mode}: {m['images_per_s']:,.0f} img/s, {m['step_ms']:.2f} ms/step, first step "
        f"{m['first_step_s']:.1f} s, {m['gflop_per_image'] or 0:.3f} GFLOP/img"
      )
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(record, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
