"""`python -m jaxcls.list_models [--image_size 224] [--num_classes 1000] [--models resnet18,vit_b16] [--no_flops]`:
Lists every registered model with its parameter count and forward GFLOPs per image.

FLOPs come from XLA's cost analysis of each forward pass: of the lowered HLO by default (seconds per model), of the
compiled program with --compiled (minutes per large model on a small CPU). A model that cannot take the image size
(too small for its pooling, or a ViT patch that does not divide it) is listed with the reason instead.
"""

from collections.abc import Iterator

from absl import flags

from jaxcls import cli


def define_flags() -> None:
  """The input shape, the class count and which models."""
  flags.DEFINE_integer("image_size", 224, "Side of the square input images.")
  flags.DEFINE_integer("channels", 3, "Image channels.")
  flags.DEFINE_integer("num_classes", 1000, "Classes of the head.")
  flags.DEFINE_string("models", "", "Comma-separated names (default: every registered model).")
  flags.DEFINE_boolean("no_flops", False, "Parameter counts only.")
  flags.DEFINE_boolean("compiled", False, "FLOPs of the compiled program (slow on a CPU).")


def table(
  names: list[str], image_shape: tuple[int, int, int], num_classes: int, flops: bool = True, compiled: bool = False
) -> Iterator[str]:
  """The header, then one line per model as soon as it is measured (name, parameters, GFLOPs, or the reason)."""
  from jaxcls import models  # pylint: disable=g-import-not-at-top
  from jaxcls.core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxcls.models import cost  # pylint: disable=g-import-not-at-top

  sizes = {"--image_size": image_shape[0], "--channels": image_shape[2], "--num_classes": num_classes}
  for flag, value in sizes.items():
    if value < 1:
      raise ConfigError(f"{flag}={value} must be at least 1.")
  unknown = [n for n in names if n not in models.MODELS]
  if unknown:
    raise ConfigError(f"Unknown model(s) {', '.join(unknown)}; known: {', '.join(models.model_names())}.")
  yield f"{'model':<18} {'params':>14} {'GFLOPs':>9}   ({'x'.join(map(str, image_shape))}, {num_classes} classes)"
  for name in names or models.model_names():
    try:
      model = models.build({"name": name}, num_classes)
      params = cost.count_params(model, image_shape)
      gflops = f"{cost.forward_flops(model, image_shape, compiled=compiled) / 1e9:.3f}" if flops else "-"
      yield f"{name:<18} {params:>14,} {gflops:>9}"
    except Exception as e:  # pylint: disable=broad-except  # a model that cannot take this size is a row
      yield f"{name:<18} {'-':>14} {'-':>9}   {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def main(argv: list[str]) -> None:
  """Prints the table, one model at a time."""
  del argv
  f = flags.FLAGS
  for line in table(
    [n for n in f.models.split(",") if n],
    (f.image_size, f.image_size, f.channels),
    f.num_classes,
    not f.no_flops,
    f.compiled,
  ):
    print(line, flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, doc=__doc__)
