"""`python -m jaxcls.benchmark --model resnet50 --batch_size 256 --image_size 224 --dtype bfloat16 [--json out.json]`:
Training and inference throughput of the real jaxcls steps on synthetic data that already sits on the devices.

Prints images/s, step time, compile time, XLA's FLOPs and bytes per image, and with --peak_tflops / --peak_gbps the
utilisation and how near the step runs to its compute or memory floor. More examples:
  python -m jaxcls.benchmark --model resnet18 --model_arg stem=small --image_size 32 --num_classes 10
  python -m jaxcls.benchmark --profile_dir /tmp/prof ...   # then where the device time goes, per op category
  python -m jaxcls.benchmark --summarize a.json b.json ...   # one table of saved records, jaxcls vs PyTorch ratios
"""

from absl import flags

from jaxcls import cli
from jaxcls.perf.options import Options


def define_flags() -> None:
  """One flag per field of perf.options.Options, plus where the record goes and --summarize."""
  cli.define_dataclass_flags(Options)
  flags.DEFINE_string("json", "", "Write the record here.")
  flags.DEFINE_boolean(
    "summarize",
    False,
    "Print one table of the JSON records given as arguments (this command's "
    "and benchmarks/torch_peer.py's) instead of measuring.",
  )


def main(argv: list[str]) -> None:
  """Measures (or, with --summarize, tabulates saved records) and prints the table."""
  from jaxcls import perf  # pylint: disable=g-import-not-at-top
  from jaxcls.core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxcls.perf import benchmark  # pylint: disable=g-import-not-at-top

  if flags.FLAGS.summarize:
    if len(argv) < 2:
      raise ConfigError("--summarize needs the JSON records to show, e.g. --summarize r50.json r50_torch.json.")
    print(benchmark.table(benchmark.load_records(argv[1:])))
    return
  if len(argv) > 1:
    raise ConfigError(f"Unexpected arguments {' '.join(argv[1:])!r}; only --summarize takes files.")
  record = benchmark.run(cli.dataclass_from_flags(Options))
  print(benchmark.table([record]))
  print(benchmark.describe(record))
  if flags.FLAGS.json:
    perf.write_json(record, flags.FLAGS.json)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, doc=__doc__)
