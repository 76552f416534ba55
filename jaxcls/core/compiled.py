"""Ahead-of-time compilation at a step's first call, so a step's compile time and XLA cost are known.

Used by the training loop, `python -m jaxcls.evaluate` and the benchmark, which is why it sits in core/ rather
than beside the train step.
"""

import time
from collections.abc import Callable

from absl import logging


class CompiledOnFirstCall:
  """A jitted step compiled ahead of time at its first call, so its cost is known without compiling twice.

  XLA's cost analysis of the compiled, partitioned program gives the FLOPs one device runs per call, and the bytes
  its kernels read and write; divided by the examples each device processes, these are the FLOPs per example that
  the throughput log is measured against and the bytes behind a step's memory floor (jaxcls.benchmark).
  """

  def __init__(self, jitted: Callable, name: str, examples_per_device: float):
    self._jitted = jitted
    self._compiled = None
    self.name = name
    self.examples_per_device = examples_per_device
    self.compile_seconds = None
    self.flops_per_example = None
    self.bytes_per_example = None

  def __call__(self, *args):
    """Runs the step; the first call compiles it, timing that and reading XLA's FLOPs and bytes per example."""
    if self._compiled is None:
      start = time.perf_counter()
      self._compiled = self._jitted.lower(*args).compile()
      self.compile_seconds = time.perf_counter() - start
      analysis = self._compiled.cost_analysis()
      analysis = (analysis[0] if isinstance(analysis, (list, tuple)) else analysis) or {}
      flops, accessed = analysis.get("flops"), analysis.get("bytes accessed")
      self.flops_per_example = flops / self.examples_per_device if flops else None
      self.bytes_per_example = accessed / self.examples_per_device if accessed else None
      logging.info(
        "%s compiled in %.1f s; %s GFLOP per example (XLA cost analysis).",
        self.name,
        self.compile_seconds,
        "unknown" if self.flops_per_example is None else f"{self.flops_per_example / 1e9:.4f}",
      )
    return self._compiled(*args)
