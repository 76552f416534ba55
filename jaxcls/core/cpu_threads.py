"""Enough threads in XLA's CPU client for virtual CPU devices, set before JAX starts its CPU backend.

XLA runs each device's share of a program on one pool of max(cores, devices) threads. With
`--xla_force_host_platform_device_count=N` (or `JAX_NUM_CPU_DEVICES=N`) on a machine with fewer than N cores
the pool has exactly N threads, and a collective step can block all of them: N-1 participants wait in the
all-reduce while the last device's launch waits for a thread to finish its previous program, which needs a free
thread of the same pool. The run then hangs until XLA ends the process ("Termination timeout ... Exiting to
ensure a consistent program state", 40 s). Seen with 8 virtual devices on 2 cores in about one run in three under
load; with a pool of 2N threads it went away, and the same steps ran 2-3x faster. XLA reads the pool size from
`PJRT_NPROC` when the backend starts, so this sets it (2N, or the core count if larger) unless the user has.
"""

import os
import re

_FORCED_DEVICES = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def virtual_cpu_devices(environ=os.environ) -> int:
  """The CPU device count the environment forces (XLA_FLAGS, else JAX_NUM_CPU_DEVICES); 0 when it forces none."""
  found = _FORCED_DEVICES.findall(environ.get("XLA_FLAGS", ""))
  if found:
    return int(found[-1])  # XLA takes the last occurrence of a flag
  value = environ.get("JAX_NUM_CPU_DEVICES", "").strip()
  return int(value) if value.isdigit() else 0


def ensure_client_threads(environ=os.environ) -> int | None:
  """Sets PJRT_NPROC for virtual CPU devices (see the module docstring); returns the value set, or None.

  Nothing changes when the user set PJRT_NPROC or NPROC, when no virtual devices are forced, or when the cores
  already outnumber twice the devices. Effective only before JAX's CPU backend starts (the first jax.devices(),
  device_put or jit call), which is why `import jaxcls` runs it.
  """
  if "PJRT_NPROC" in environ or "NPROC" in environ:
    return None
  devices = virtual_cpu_devices(environ)
  cores = os.cpu_count() or 1
  if devices <= 1 or cores >= 2 * devices:
    return None
  environ["PJRT_NPROC"] = str(2 * devices)
  return 2 * devices
