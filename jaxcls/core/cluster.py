"""How `jaxcls.main` calls `jax.distributed.initialize`: the arguments, decided from flags and the environment.

Under SLURM, JAX's own detection gives every process `local_device_ids=[SLURM_LOCALID]`: with one task per node
that is GPU 0 only, 1 of 8. So a SLURM job is described to JAX explicitly (`cluster_detection_method='deactivate'`
with coordinator, process count and id from the SLURM variables) and this module decides the local devices:

- one task on this node: every device the task sees (no restriction);
- several tasks on this node, each already given its own GPUs by SLURM (`--gpus-per-task`, `--gpu-bind`, so its
  CUDA_VISIBLE_DEVICES is shorter than the node's GPU list): every device it sees;
- several tasks sharing all of the node's GPUs: an equal share each, by SLURM_LOCALID (one task per GPU gets
  `[SLURM_LOCALID]`, as JAX would);
- `JAX_LOCAL_DEVICE_IDS=0,1,...` set by the user wins over all of that.

The functions take the environment as a dict, so the decision is tested without a cluster.
"""

import re
from collections.abc import Mapping

from jaxcls.core.errors import ConfigError

_SLURM_REQUIRED = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def is_slurm_step(env: Mapping[str, str]) -> bool:
  """True inside an `srun` job step (the variables JAX's SlurmCluster also needs)."""
  return all(name in env for name in _SLURM_REQUIRED)


def looks_multi_process(env: Mapping[str, str]) -> bool:
  """True when the environment describes a job of several processes (SLURM tasks, a multi-host Cloud TPU)."""
  if "SLURM_JOB_ID" in env and _int(env, "SLURM_NTASKS", 1) > 1:
    return True
  return "," in env.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in env


def initialize_args(
  env: Mapping[str, str],
  *,
  mode: str = "auto",
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> dict | None:
  """Keyword arguments for `jax.distributed.initialize`, or None to stay a single process.

  `mode` is main's --distributed flag: 'off', 'on' (always initialise) or 'auto' (when the environment describes
  several processes). An explicit coordinator address wins over everything.
  """
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ConfigError(
        f"--coordinator_address={coordinator_address} needs --num_processes and --process_id too, "
        f"e.g. --num_processes=2 --process_id=0."
      )
    args = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    return dict(args, **_user_device_ids(env))
  if mode == "off" or (mode == "auto" and not looks_multi_process(env)):
    return None
  if is_slurm_step(env):
    return slurm_args(env)
  return {}  # Cloud TPU and other environments JAX detects by itself


def slurm_args(env: Mapping[str, str]) -> dict:
  """initialize() arguments for an srun task: explicit coordinator, count and id, and its local devices."""
  args = dict(
    coordinator_address=slurm_coordinator(env),
    num_processes=_int(env, "SLURM_NTASKS"),
    process_id=_int(env, "SLURM_PROCID"),
    cluster_detection_method="deactivate",
  )
  ids = _user_device_ids(env)
  if not ids:
    ids = {"local_device_ids": slurm_local_device_ids(env)}
  return dict(args, **{k: v for k, v in ids.items() if v is not None})


def slurm_coordinator(env: Mapping[str, str]) -> str:
  """host:port of process 0: the step's first node, and JAX's port rule (JAX_COORDINATOR_PORT, else from the
  job id) so that a job started by jaxcls and one started by JAX's own detection agree."""
  port = env.get("JAX_COORDINATOR_PORT") or str(_int(env, "SLURM_JOB_ID") % 2**12 + (65535 - 2**12 + 1))
  return f"{first_host(env['SLURM_STEP_NODELIST'])}:{port}"


def first_host(node_list: str) -> str:
  """The first host of a SLURM node list: 'node001', 'node[001-015],x' and 'node[001,007-015]' give 'node001'."""
  match = re.match(r"([^,\[]+)(?:\[([^,\-\]]+))?", node_list.strip())
  if not match:
    raise ConfigError(f"SLURM_STEP_NODELIST={node_list!r} names no host; run jaxcls under srun.")
  return match.group(1) + (match.group(2) or "")


def tasks_on_this_node(env: Mapping[str, str]) -> int:
  """How many tasks of this step run on this task's node (SLURM_STEP_TASKS_PER_NODE such as '2(x3),1')."""
  spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
  node = _int(env, "SLURM_NODEID", 0)
  if spec:
    counts = []
    for part in spec.split(","):
      match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
      if not match:
        raise ConfigError(f"SLURM tasks-per-node {spec!r} is not in SLURM's 'N' or 'N(xM)' form.")
      counts += [int(match.group(1))] * int(match.group(2) or 1)
    if node < len(counts):
      return counts[node]
  if env.get("SLURM_NTASKS_PER_NODE"):
    return _int(env, "SLURM_NTASKS_PER_NODE")
  nodes = _int(env, "SLURM_STEP_NUM_NODES", 0) or _int(env, "SLURM_NNODES", 0)
  tasks = _int(env, "SLURM_NTASKS", 1)
  return max(tasks // nodes, 1) if nodes else 1


def slurm_local_device_ids(env: Mapping[str, str]) -> list[int] | None:
  """This task's local device ids, or None for every device it sees (see the module docstring)."""
  per_node = tasks_on_this_node(env)
  if per_node <= 1:
    return None
  local_id = _int(env, "SLURM_LOCALID")
  visible = _id_list(env.get("CUDA_VISIBLE_DEVICES") or env.get("ROCR_VISIBLE_DEVICES"))
  node_gpus = _id_list(env.get("SLURM_STEP_GPUS") or env.get("SLURM_JOB_GPUS"))
  if visible is not None and node_gpus is not None and len(visible) < len(node_gpus):
    return None  # SLURM bound this task to its own GPUs: use them all
  if visible is not None and len(visible) < per_node:
    return None  # fewer visible GPUs than tasks here: they were split by SLURM already
  if visible is None:
    return [local_id]  # unknown GPU count: one device per task, JAX's own default
  share = len(visible) // per_node
  return list(range(local_id * share, (local_id + 1) * share))


def _user_device_ids(env: Mapping[str, str]) -> dict:
  value = env.get("JAX_LOCAL_DEVICE_IDS", "").strip()
  if not value:
    return {}
  ids = _id_list(value)
  if ids is None or not all(x.isdigit() for x in ids):
    raise ConfigError(f"JAX_LOCAL_DEVICE_IDS={value!r} is not a list of device numbers; use e.g. '0,1,2,3'.")
  return {"local_device_ids": [int(x) for x in ids]}


def _id_list(value: str | None) -> list[str] | None:
  if value is None or not value.strip():
    return None
  return [v.strip() for v in value.split(",") if v.strip()]


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
  value = env.get(name)
  if value is None or value == "":
    if default is None:
      raise ConfigError(
        f"{name} is not set; run jaxcls under srun, or pass --coordinator_address, --num_processes and --process_id."
      )
    return default
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"{name}={value!r} is not a whole number; check the job's environment.") from None


def initialize(
  env: Mapping[str, str],
  *,
  mode: str = "auto",
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  timeout: int = 300,
) -> None:
  """jax.distributed.initialize with `initialize_args` (main's --distributed flags), then one log line of what
  each process got; nothing when the job is a single process."""
  args = initialize_args(
    env, mode=mode, coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  if args is None:
    return
  import jax  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top  (where initialize() records its devices)

  jax.distributed.initialize(**args, initialization_timeout=timeout)
  logging.info(
    "jax.distributed: process %d of %d, %d local / %d global devices, local_device_ids=%s "
    "(jax_cuda_visible_devices=%s).",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    ",".join(map(str, args.get("local_device_ids") or [])) or "all",
    xla_bridge.CUDA_VISIBLE_DEVICES.value,
  )
