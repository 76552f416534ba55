"""`python -m jaxcls.explain --workdir DIR [--class NAME_OR_INDEX] [--methods ...] [--output_dir OUT] IMAGE...`:
Draws which pixels made the trained model choose a class, one PNG per image file.

Each PNG shows the input as the model sees it and a heat overlay per attribution method (saliency, SmoothGrad,
integrated gradients, Grad-CAM) for each class explained (default: the predicted one; multi-label: each label at
or above its threshold), titled with the prediction; OUT/index.md and OUT/index.json list every file, its PNG or its
error. Folders are searched recursively. A file that cannot be read
gets an error line and the others go on; the exit status is 1 only when every file failed.
"""

import sys

from absl import flags

from jaxcls import cli
from jaxcls.core.errors import ConfigError


def define_flags() -> None:
  """Flags are defined only when this file runs as the command (so commands can be imported side by side)."""
  from jaxcls.inference.explainer import BASELINES, METHODS  # pylint: disable=g-import-not-at-top  (numpy only)

  flags.DEFINE_string(
    "workdir", None, "A trained run's directory (holds config.json and checkpoints/; local or gs://)."
  )
  flags.DEFINE_string("step", None, "Checkpoint step to explain: N, 'latest' (default) or 'best' (config.best_metric).")
  flags.DEFINE_string(
    "class",
    None,
    "Class(es) to explain, names or indices separated by commas "
    "(default: each image's predicted class; multi-label: its predicted labels).",
  )
  flags.DEFINE_string(
    "methods",
    None,
    f"Comma-separated subset of {','.join(METHODS)} (default: all; gradcam only for convolutional models).",
  )
  flags.DEFINE_string("output_dir", None, "Where the PNGs and index go (default: WORKDIR/explanations).")
  flags.DEFINE_enum("baseline", "black", BASELINES, "Integrated-gradients baseline: a black image or the dataset mean.")
  flags.DEFINE_integer("ig_steps", 32, "Integrated gradients: intervals of the trapezoid rule.")
  flags.DEFINE_integer("smoothgrad_samples", 32, "SmoothGrad: noisy copies averaged.")
  flags.DEFINE_float("smoothgrad_noise", 0.15, "SmoothGrad: noise std as a fraction of the image's range.")
  flags.DEFINE_integer("batch_size", 32, "Noisy copies or path points per model call.")
  flags.DEFINE_integer("seed", 0, "Seed of the SmoothGrad noise.")


def main(argv: list[str]) -> int | None:
  """--workdir and the image paths -> explainer.explain_files -> a line per image -> exit status."""
  f = flags.FLAGS
  if not f.workdir or not argv[1:]:
    raise ConfigError(
      "--workdir and at least one image or folder are required, e.g. `python -m jaxcls.explain "
      "--workdir DIR photo.jpg`."
    )
  from jaxcls.inference import explainer  # pylint: disable=g-import-not-at-top

  settings = explainer.Settings(
    methods=explainer.resolve_methods(f.methods),
    baseline=f.baseline,
    ig_steps=f.ig_steps,
    smoothgrad_samples=f.smoothgrad_samples,
    smoothgrad_noise=f.smoothgrad_noise,
    batch_size=f.batch_size,
    seed=f.seed,
  )
  index = explainer.explain_files(
    f.workdir, argv[1:], step=f.step, classes=f["class"].value, output_dir=f.output_dir, settings=settings
  )
  out, err = explainer.summary_lines(index)
  for line in err:
    print(line, file=sys.stderr)
  print("\n".join(out))
  return 1 if all(record["error"] for record in index["images"]) else 0


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, doc=__doc__)
