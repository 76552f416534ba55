"""List every registered model with its parameter count and forward GFLOPs per image.

  python -m jaxcls.list_models [--image_size 224] [--num_classes 1000] [--models resnet18,vit_b16] [--no_flops]

FLOPs come from XLA's cost analysis of each forward pass (see `jaxcls.models.cost`): of the lowered HLO by
default (seconds per model), of the compiled program with `--compiled` (minutes per large model on a small CPU).
`--models` picks a few and `--no_flops` lists parameter counts only.
A model that cannot take the image size (too small for its pooling, or a ViT patch that does not divide it)
is listed with the reason instead.
"""

import argparse
import sys

from jaxcls import models
from jaxcls.models import cost

def rows(names, image_shape, num_classes, flops=True, compiled=False):
  """Yields (name, parameters, GFLOPs or None, error or None) for each model name."""
  for name in names:
    try:
      model = models.build({"name": name}, num_classes)
      params = cost.count_params(model, image_shape)
      gflops = cost.forward_flops(model, image_shape, compiled=compiled) / 1e9 if flops else None
      yield name, params, gflops, None
    except Exception as e:  # pylint: disable=broad-except  # a model that cannot take this size is a row
      yield name, None, None, str(e).splitlines()[0] if str(e) else type(e).__name__


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m jaxcls.list_models", description=__doc__.splitlines()[0])
  parser.add_argument("--image_size", type=int, default=224, help="side of the square input images")
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--models", default="", help="comma-separated names (default: every registered model)")
  parser.add_argument("--no_flops", action="store_true", help="parameter counts only")
  parser.add_argument("--compiled", action="store_true", help="FLOPs of the compiled program (slow on a CPU)")
  args = parser.parse_args(argv)
  names = [n for n in args.models.split(",") if n] or models.model_names()
  unknown = [n for n in names if n not in models.MODELS]
  if unknown:
    print(f"Error: unknown model(s) {', '.join(unknown)}; known: {', '.join(models.model_names())}.",
          file=sys.stderr)
    sys.exit(1)
  image_shape = (args.image_size, args.image_size, args.channels)
  print(f"{'model':<18} {'params':>14} {'GFLOPs':>9}   ({image_shape[0]}x{image_shape[1]}x{image_shape[2]}, "
        f"{args.num_classes} classes)")
  for name, params, gflops, error in rows(names, image_shape, args.num_classes, not args.no_flops, args.compiled):
    if error:
      print(f"{name:<18} {'-':>14} {'-':>9}   {error}")
    else:
      shown = "-" if gflops is None else f"{gflops:.3f}"
      print(f"{name:<18} {params:>14,} {shown:>9}", flush=True)


if __name__ == "__main__":
  main()
