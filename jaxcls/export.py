"""`python -m jaxcls.export --workdir DIR --output MODEL_DIR [--format jax|onnx] [--step N|best]`: Writes a trained
model as a self-contained inference function (uint8 images in, probabilities out, with normalisation and test-time
augmentation inside) that runs without jaxcls.

--format jax (default): model.jax (jax.export) and weights.npz, served by jax. --format onnx: model.onnx, served by
onnxruntime (needs jax2onnx to export). Both write model.json (class names, task, thresholds or class tree,
preprocessing) and requirements.txt (what serving needs); examples/serve_exported.py loads either, and
docs/export.md lists the model families each format takes. An existing export is replaced only with --overwrite.
"""

from absl import flags

from jaxcls import cli
from jaxcls.core.errors import ConfigError


def define_flags() -> None:
  """Flags are defined only when this file runs as the command (so commands can be imported side by side)."""
  flags.DEFINE_string(
    "workdir", None, "A trained run's directory (holds config.json and checkpoints/; local or gs://)."
  )
  flags.DEFINE_string("output", None, "Folder to write the model, model.json and requirements.txt into.")
  flags.DEFINE_enum("format", "jax", ["jax", "onnx"], "jax: jax.export (model.jax); onnx: model.onnx for onnxruntime.")
  flags.DEFINE_string("step", None, "Checkpoint step to export: N, 'latest' (default) or 'best' (config.best_metric).")
  flags.DEFINE_list(
    "platforms",
    ["cpu", "cuda", "tpu"],
    "--format jax: platforms the exported function can run on (it is lowered for each).",
  )
  flags.DEFINE_bool("overwrite", False, "Replace an export already in --output (without it, that is an error).")


def main(argv: list[str]) -> int | None:
  """--workdir and --output -> exporter.export_workdir -> one summary line."""
  del argv
  f = flags.FLAGS
  if not f.workdir or not f.output:
    raise ConfigError(
      "--workdir and --output are required, e.g. `python -m jaxcls.export --workdir DIR --output MODEL_DIR`."
    )
  from jaxcls.core import paths  # pylint: disable=g-import-not-at-top
  from jaxcls.inference import exporter  # pylint: disable=g-import-not-at-top  (jax: not for --help)

  metadata = exporter.export_workdir(
    f.workdir, f.output, step=f.step, platforms=f.platforms, overwrite=f.overwrite, format=f.format
  )
  size = metadata["preprocessing"]["image_size"]
  where = ", ".join(metadata["platforms"]) if f.format == "jax" else "onnxruntime"
  print(
    f"Exported {metadata['model']} (step {metadata['step']}, {metadata['task']}, "
    f"{len(metadata['class_names'])} classes, {size[0]}x{size[1]} input) as {metadata['function']} for "
    f"{where} to {paths.path(f.output)}"
  )


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, doc=__doc__)
