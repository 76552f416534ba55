"""The device mesh, shardings, and moving host-local batches to global arrays.

One 1-D mesh axis, 'data', over every device of every process: state is replicated, batches are split along
their first axis. The same code serves 1 CPU, 8 GPUs and a multi-host pod.
"""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcls.core.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D data-parallel mesh (classic auto-sharded axis) over `devices` (default: all)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array: the train state, and eval outputs every process reads."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """The first axis split over the data axis: a global batch, each device holding its slice."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def chunk_sharded(mesh: Mesh) -> NamedSharding:
  """Several steps' batches stacked on a leading axis [steps, batch, ...]: each step's batch split along 'data'."""
  return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
  """Global batches are split evenly over devices and processes; say so plainly if they cannot be. `name` is a
  config key ('batch_size': config.batch_size) or, starting with '--', a command's flag."""
  n = mesh.devices.size
  label = name if name.startswith("--") else f"config.{name}"
  if batch_size <= 0 or batch_size % n:
    raise ConfigError(
      f"{label}={batch_size} must be a positive multiple of the {n} devices in use; "
      f"try {max(n, round(batch_size / n) * n)}."
    )
  if batch_size % jax.process_count():
    raise ConfigError(f"{label}={batch_size} must be divisible by the {jax.process_count()} processes.")


def to_global(batch: dict[str, np.ndarray], mesh: Mesh, *, stacked: bool = False) -> dict[str, jax.Array]:
  """Assembles each process's local share into one global array sharded along 'data'.

  `stacked`: the arrays are [steps, local batch, ...] (several steps' batches, `chunk_sharded`), sent in one
  transfer per array: a transfer's fixed cost is paid once for all of them.
  """
  axis = 1 if stacked else 0
  sharding = chunk_sharded(mesh) if stacked else batch_sharded(mesh)
  nproc = jax.process_count()
  if nproc == 1:  # one call for the whole dict: the cheapest transfer there is
    return jax.device_put({k: np.asarray(v) for k, v in batch.items()}, sharding)

  def one(x):
    x = np.asarray(x)
    global_shape = x.shape[:axis] + (x.shape[axis] * nproc,) + x.shape[axis + 1 :]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  return {k: one(v) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree of host values on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def to_host(tree: Any) -> Any:
  """Fetches a pytree of (replicated or fully addressable) arrays to numpy on this host, in one transfer.

  `jax.device_get` starts every leaf's copy before waiting for any, so a tree of many small values costs one
  round trip, not one per leaf. Arrays split over other processes are gathered (every process must call it).
  """
  leaves, treedef = jax.tree.flatten(tree)
  local = [
    x.addressable_data(0)
    if isinstance(x, jax.Array) and not x.is_fully_addressable and x.sharding.is_fully_replicated
    else x
    for x in leaves
  ]
  gathered = [
    np.asarray(multihost_utils.process_allgather(x, tiled=True))
    if isinstance(x, jax.Array) and not x.is_fully_addressable
    else None
    for x in local
  ]
  fetched = jax.device_get([x for x, g in zip(local, gathered) if g is None])
  it = iter(fetched)
  return jax.tree.unflatten(treedef, [np.asarray(next(it)) if g is None else g for g in gathered])


def is_main_process() -> bool:
  """Process 0 alone writes the workdir's shared files (reports, plots, config), so hosts never race."""
  return jax.process_index() == 0
