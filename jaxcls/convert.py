"""`python -m jaxcls.convert --model resnet50 --input resnet50.pth --output resnet50.msgpack`: Imports torchvision
ImageNet weights as the params and batch stats of a jaxcls model, to fine-tune from (config.init_from).

--input is a torchvision state_dict: .pth/.pt (needs torch), .safetensors (needs safetensors) or .npz (NumPy arrays
named by the state_dict keys). The class count is read from the checkpoint's head. --output is a flax .msgpack file
(or .npz), or a folder to write <model>.msgpack into.
"""

from absl import flags

from jaxcls import cli


def define_flags() -> None:
  """--model, --input, --output (all three required) and --image_size."""
  flags.DEFINE_string("model", None, "Registered model name with torchvision weights, e.g. resnet50.", required=True)
  flags.DEFINE_string("input", None, "The torchvision state_dict: .pth, .pt, .safetensors or .npz.", required=True)
  flags.DEFINE_string("output", None, "Output .msgpack (default format) or .npz file, or a folder.", required=True)
  flags.DEFINE_integer("image_size", 224, "Image side; only ViTs depend on it (their position embedding).")


def main(argv: list[str]) -> None:
  """The flags -> models.torchvision.run -> one line naming the file written."""
  del argv
  from jaxcls.models import torchvision  # pylint: disable=g-import-not-at-top

  f = flags.FLAGS
  output, num_classes, count = torchvision.run(f.model, f.input, f.output, f.image_size)
  print(f"Wrote {output}: {f.model}, {num_classes} classes, {count:,} parameters.")


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, doc=__doc__)
