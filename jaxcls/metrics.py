"""Exact streaming sums over many batches.

Integer sums (counts, confusion matrices) are added on the device, where int32 is exact and nothing waits on the
host; floating sums are kept per batch and added on the host in float64, so that a long eval split loses no
precision to float32 accumulation.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls import parallel


class SumAccumulator:
  """Adds dicts of per-batch sums without blocking the device until `result()`."""

  def __init__(self):
    self._ints: dict[str, jax.Array] = {}
    self._floats: dict[str, list[jax.Array]] = {}

  def add(self, sums: dict[str, Any]) -> None:
    for name, value in sums.items():
      if jnp.issubdtype(value.dtype, jnp.integer):
        self._ints[name] = value if name not in self._ints else self._ints[name] + value
      else:
        self._floats.setdefault(name, []).append(value)

  def result(self) -> dict[str, np.ndarray]:
    out = {name: parallel.to_host(v).astype(np.int64) for name, v in self._ints.items()}
    for name, values in self._floats.items():
      host = [parallel.to_host(v).astype(np.float64) for v in values]
      out[name] = np.sum(host, axis=0)
    return out


class MeanAccumulator:
  """Averages per-step scalar metrics between two log lines (device values, fetched once)."""

  def __init__(self):
    self._values: list[dict[str, jax.Array]] = []

  def add(self, metrics: dict[str, jax.Array]) -> None:
    self._values.append(metrics)

  def __len__(self) -> int:
    return len(self._values)

  def result(self) -> dict[str, float]:
    if not self._values:
      return {}
    host = parallel.to_host(self._values)
    self._values = []
    return {k: float(np.mean([np.float64(m[k]) for m in host])) for k in host[0]}
