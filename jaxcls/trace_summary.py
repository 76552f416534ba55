"""`python -m jaxcls.trace_summary`: Where a step's device time goes: a plain-text breakdown of a JAX profiler trace, without TensorBoard or xprof.

A command: it hands its flags to `jaxcls.perf.trace_summary`, where the work is done.
"""

import sys

from jaxcls.perf.trace_summary import main

if __name__ == "__main__":
  sys.exit(main())
