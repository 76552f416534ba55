"""What `python -m jaxcls.benchmark` measures: its options with their defaults and help, in one place.

The command turns each field into a flag of the same name (`cli.define_dataclass_flags`), and scripts build
`Options(...)` directly; this module imports nothing heavy, so `--help` needs no jax.
"""

import dataclasses
from typing import Any


def _option(default: Any, help_text: str) -> Any:
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass
class Options:
  """One benchmark run: the model and batch, what to time, and what the device can do at best."""

  model: str = _option("resnet50", "Registry name (python -m jaxcls.list_models).")
  model_arg: tuple[str, ...] = _option((), "A model argument KEY=VALUE, e.g. stem=small.")
  batch_size: int = _option(256, "Global batch, split over all devices.")
  image_size: int = _option(224, "Square side in pixels.")
  channels: int = _option(3, "Image channels.")
  num_classes: int = _option(1000, "Classes of the head.")
  dtype: str = _option("bfloat16", "Computation dtype: float32 | bfloat16.")
  augment: str = _option("", "Device augmentations inside the train step, e.g. 'flip_lr'.")
  modes: str = _option("train,infer", "Comma-separated: train, infer.")
  warmup: int = _option(3, "Untimed steps after the first (compiling) one.")
  steps: int = _option(20, "Steps per timed repeat.")
  repeats: int = _option(3, "Timed repeats; the median is reported.")
  peak_tflops: float = _option(
    0.0, "The device's peak TFLOP/s for --dtype (e.g. 989 for H100/H200 dense bf16), for utilisation."
  )
  peak_gbps: float = _option(
    0.0,
    "The device's memory bandwidth in GB/s (e.g. 4300, an H200's measured copy "
    "rate), for the memory floor of a step from XLA's bytes accessed.",
  )
  compilation_cache_dir: str = _option(
    "", "Persistent compilation cache; also reports the train step recompiled from it (warm)."
  )
  profile_dir: str = _option(
    "",
    "After timing, trace --profile_steps steps of each mode into DIR/<mode> with the "
    'JAX profiler and print where the device time goes (also under "profile" in the '
    "JSON).",
  )
  profile_steps: int = _option(5, "Steps per profiled mode.")
  seed: int = _option(0, "Seed of the initial weights.")
  label: str = _option("", "Name of this run in the table.")
