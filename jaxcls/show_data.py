"""`python -m jaxcls.show_data --config configs/default.py --output grid.png [--num 32] [--config.key=value ...]`:
Writes a PNG grid of training examples before and after augmentation, captioned with their class names.

Looking at the pictures is the quickest check that a pipeline is right: labels that match the images, crops that
keep the object, colours that survive augmentation. The top block is what the source yields (the first training
batch of config.seed); the bottom block is the same examples after config.augment, as the train step sees them
before normalisation. Mixed (Mixup / CutMix) labels are captioned with their two largest classes and weights.
"""

from absl import flags

from jaxcls import cli


def define_flags() -> None:
  """--config (with its overrides), --output and --num."""
  cli.define_config_flag()
  flags.DEFINE_string("output", "grid.png", "Where to write the grid: a .png, .jpg or .jpeg file (local or gs://).")
  flags.DEFINE_integer("num", 32, "Number of training examples to show (all of them when the split has fewer).")


def main(argv: list[str]) -> None:
  """The config -> data.preview.write_grid -> the path written."""
  del argv
  config = cli.config("--config=configs/default.py --output=grid.png")
  from jaxcls.data import preview  # pylint: disable=g-import-not-at-top

  print(f"Wrote {preview.write_grid(config, flags.FLAGS.output, flags.FLAGS.num)}")


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, doc=__doc__, flags_parser=cli.parse_config_flags)
