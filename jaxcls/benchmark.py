"""`python -m jaxcls.benchmark`: Training and inference throughput of the real jaxcls steps on synthetic, device-resident data.

A command: it hands its flags to `jaxcls.perf.benchmark`, where the work is done.
"""

import sys

from jaxcls.perf.benchmark import main

if __name__ == "__main__":
  sys.exit(main())
