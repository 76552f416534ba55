"""`python -m jaxcls.trace_summary TRACE_DIR [--steps N] [--top 20] [--json out.json]`: Where a step's device time
goes: a plain-text breakdown of a JAX profiler trace, without TensorBoard or xprof.

TRACE_DIR is the folder given to jax.profiler.trace (searched for its newest *.xplane.pb). Device time is shown per
category (convolution, matmul, reduction, elementwise, layout, pooling, collective, memcpy, other) and for the top
kernels/ops, per step and per device, with the idle share between the first and last device event.
"""

from absl import flags

from jaxcls import cli


def define_flags() -> None:
  """--steps, --top and --json; the trace folder is the one argument."""
  flags.DEFINE_integer(
    "steps", None, "Steps the trace covers (default: counted from StepTraceAnnotation events, else 1)."
  )
  flags.DEFINE_integer("top", 20, "How many kernels/ops to list.")
  flags.DEFINE_string("json", "", "Also write the numbers here.")


def main(argv: list[str]) -> None:
  """TRACE_DIR -> perf.trace_summary.summarize -> the table (and the JSON)."""
  from jaxcls import perf  # pylint: disable=g-import-not-at-top
  from jaxcls.core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxcls.perf import trace_summary  # pylint: disable=g-import-not-at-top

  if len(argv) != 2:
    raise ConfigError(
      "Give one trace folder, e.g. python -m jaxcls.trace_summary /tmp/trace (what jax.profiler.trace wrote)."
    )
  summary = trace_summary.summarize(argv[1], flags.FLAGS.steps, flags.FLAGS.top)
  print(trace_summary.format_summary(summary))
  if flags.FLAGS.json:
    perf.write_json(summary, flags.FLAGS.json)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, doc=__doc__)
