"""`python -m jaxcls.export --workdir DIR --output MODEL_DIR [--step N|best] [--platforms cpu,cuda,tpu]`: Writes
a trained model as a self-contained inference function that runs with only jax and numpy.

MODEL_DIR gets model.jax (the serialized function: uint8 images in, probabilities out, with normalisation and
test-time augmentation inside), weights.npz and model.json (class names, task, thresholds or class tree,
preprocessing); examples/serve_exported.py loads it. An existing export is replaced only with --overwrite.
"""

from absl import flags

from jaxcls import cli
from jaxcls.core.errors import ConfigError


def define_flags() -> None:
  """Flags are defined only when this file runs as the command (so commands can be imported side by side)."""
  flags.DEFINE_string("workdir", None, "A trained run's directory (holds config.json and checkpoints/; local or gs://).")
  flags.DEFINE_string("output", None, "Folder to write model.jax, weights.npz and model.json into.")
  flags.DEFINE_string("step", None, "Checkpoint step to export: N, 'latest' (default) or 'best' (config.best_metric).")
  flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"],
                    "Platforms the exported function can run on (it is lowered for each).")
  flags.DEFINE_bool("overwrite", False, "Replace an export already in --output (without it, that is an error).")


def main(argv: list[str]) -> int | None:
  """--workdir and --output -> exporter.export_workdir -> one summary line."""
  del argv
  f = flags.FLAGS
  if not f.workdir or not f.output:
    raise ConfigError("--workdir and --output are required, e.g. `python -m jaxcls.export --workdir DIR "
                      "--output MODEL_DIR`.")
  from absl import logging  # pylint: disable=g-import-not-at-top

  from jaxcls.core import paths  # pylint: disable=g-import-not-at-top
  from jaxcls.inference import exporter  # pylint: disable=g-import-not-at-top  (jax: not for --help)
  metadata = exporter.export_workdir(f.workdir, f.output, step=f.step, platforms=f.platforms, overwrite=f.overwrite)
  size = metadata["preprocessing"]["image_size"]
  message = (f"Exported {metadata['model']} (step {metadata['step']}, {metadata['task']}, "
             f"{len(metadata['class_names'])} classes, {size[0]}x{size[1]} input) for "
             f"{', '.join(metadata['platforms'])} to {paths.path(f.output)}")
  logging.info("%s", message)
  print(message)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, doc=__doc__)
