"""The launchers: jaxcls.core.cluster's SLURM decisions, launch/slurm.sbatch under a stand-in srun, the TPU dry run."""

import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, saved_state, subprocess_env

from jaxcls.core import cluster
from jaxcls.core.errors import ConfigError

SLURM = {
  "SLURM_JOB_ID": "4242",
  "SLURM_STEP_NODELIST": "gpu[003-004]",
  "SLURM_NTASKS": "2",
  "SLURM_PROCID": "1",
  "SLURM_LOCALID": "0",
  "SLURM_NODEID": "1",
  "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
  "SLURM_NNODES": "2",
}


# --- jaxcls.core.cluster: what jax.distributed.initialize is given ---------------------------------------------------


def test_one_task_per_node_keeps_every_local_device():
  args = cluster.initialize_args(SLURM, mode="on")
  assert args == {
    "coordinator_address": "gpu003:61586",
    "num_processes": 2,
    "process_id": 1,
    "cluster_detection_method": "deactivate",
  }  # no local_device_ids: all of the node's GPUs


def test_coordinator_matches_jax_own_slurm_rule(monkeypatch):
  from jax._src.clusters.slurm_cluster import SlurmCluster  # pylint: disable=g-import-not-at-top

  for nodes in ("node001", "node001,host2", "node[001-0015],host2", "node[001,007-015],host2", "localhost"):
    env = dict(SLURM, SLURM_STEP_NODELIST=nodes)
    for name, value in env.items():
      monkeypatch.setenv(name, value)
    assert cluster.slurm_coordinator(env) == SlurmCluster.get_coordinator_address(None, None)
  env["JAX_COORDINATOR_PORT"] = "1234"
  assert cluster.slurm_coordinator(env) == "localhost:1234"


@pytest.mark.parametrize(
  "extra, expected",
  [
    ({}, [1]),  # 4 tasks, GPUs unknown: one each, as JAX would do
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, [2, 3]),  # 4 tasks share 8 GPUs: two each
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, [1]),
    ({"CUDA_VISIBLE_DEVICES": "5", "SLURM_STEP_GPUS": "4,5,6,7"}, None),  # SLURM bound one GPU to the task
    ({"CUDA_VISIBLE_DEVICES": "2,3", "SLURM_STEP_GPUS": "0,1,2,3,4,5,6,7"}, None),  # --gpus-per-task=2
    ({"JAX_LOCAL_DEVICE_IDS": "6,7"}, [6, 7]),  # the user's choice wins
  ],
)
def test_several_tasks_per_node_split_the_gpus(extra, expected):
  env = dict(SLURM, SLURM_NTASKS="8", SLURM_PROCID="5", SLURM_LOCALID="1", SLURM_STEP_TASKS_PER_NODE="4(x2)", **extra)
  assert cluster.initialize_args(env, mode="auto").get("local_device_ids") == expected


def test_tasks_per_node_forms():
  assert cluster.tasks_on_this_node(dict(SLURM, SLURM_STEP_TASKS_PER_NODE="2(x3),1", SLURM_NODEID="3")) == 1
  assert cluster.tasks_on_this_node(dict(SLURM, SLURM_STEP_TASKS_PER_NODE="2(x3),1", SLURM_NODEID="2")) == 2
  env = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_TASKS_PER_NODE"}
  assert cluster.tasks_on_this_node(dict(env, SLURM_NTASKS="16")) == 8  # 16 tasks on 2 nodes
  assert cluster.tasks_on_this_node(dict(env, SLURM_NTASKS_PER_NODE="4")) == 4


def test_when_to_initialise():
  assert cluster.initialize_args({}, mode="auto") is None
  assert cluster.initialize_args(SLURM, mode="off") is None
  assert cluster.initialize_args(dict(SLURM, SLURM_NTASKS="1"), mode="auto") is None  # one task: no need
  assert cluster.initialize_args(dict(SLURM, SLURM_NTASKS="1", SLURM_PROCID="0"), mode="on")["num_processes"] == 1
  assert cluster.initialize_args({"TPU_WORKER_HOSTNAMES": "a,b"}, mode="auto") == {}  # JAX detects TPU pods
  assert cluster.initialize_args({}, mode="on") == {}
  manual = cluster.initialize_args(SLURM, coordinator_address="h:1", num_processes=3, process_id=2)
  assert manual == {"coordinator_address": "h:1", "num_processes": 3, "process_id": 2}


@pytest.mark.parametrize(
  "env, kwargs, message",
  [
    ({}, dict(coordinator_address="h:1"), "--coordinator_address=h:1 needs --num_processes and --process_id"),
    (dict(SLURM, SLURM_NTASKS="two"), dict(mode="on"), "SLURM_NTASKS='two' is not a whole number"),
    (dict(SLURM, JAX_LOCAL_DEVICE_IDS="0,x"), dict(mode="on"), "JAX_LOCAL_DEVICE_IDS='0,x' is not a list"),
    (dict(SLURM, SLURM_STEP_TASKS_PER_NODE="2x"), dict(mode="on"), "SLURM tasks-per-node '2x' is not"),
    (dict(SLURM, SLURM_STEP_NODELIST="[1]"), dict(mode="on"), "SLURM_STEP_NODELIST='[1]' names no host"),
  ],
)
def test_bad_cluster_environments_get_one_line(env, kwargs, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    cluster.initialize_args(env, **kwargs)


# --- launch/slurm.sbatch itself, under fake SLURM variables and a stand-in srun ----------------------------------

FAKE_SRUN = r'''#!{python}
"""Stand-in srun: starts SLURM_NTASKS copies of the command on this host, FAKE_TASKS_PER_NODE per "node"."""
import os, subprocess, sys
args = sys.argv[1:]
while args and args[0].startswith("-"):
  args.pop(0)
n, per_node = int(os.environ["SLURM_NTASKS"]), int(os.environ.get("FAKE_TASKS_PER_NODE", "1"))
procs = []
for i in range(n):
  env = dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i % per_node), SLURM_NODEID=str(i // per_node),
             SLURM_STEP_ID="0")
  log = open(os.path.join(os.environ["FAKE_SRUN_LOGS"], f"task{i}.log"), "w")
  procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
  with open(os.path.join(os.environ["FAKE_SRUN_LOGS"], f"task{i}.pid"), "w") as f:
    f.write(str(procs[-1].pid))
sys.exit(max(p.wait() for p in procs))
'''

FAKE_SCONTROL = """#!/usr/bin/env bash
echo "$@" >> "$FAKE_SRUN_LOGS/scontrol.calls"
"""

RUN_ARGS = [
  "--config.num_train_steps=30",
  "--config.eval_every_steps=15",
  "--config.checkpoint_every_steps=15",
  "--config.model.widths=(8, 16)",
  "--config.async_checkpointing=False",
  "--config.optimizer.warmup_steps=5",
  "--distributed_timeout=60",
]
DEVICES = re.compile(
  r"jax\.distributed: process (\d) of 2, (\d+) local / (\d+) global devices, "
  r"local_device_ids=(\S+) \(jax_cuda_visible_devices=(\S+)\)"
)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _fake_slurm(tmp_path, tasks_per_node, **extra):
  bin_dir, logs = tmp_path / "bin", tmp_path / "logs"
  bin_dir.mkdir()
  logs.mkdir()
  for name, text in (("srun", FAKE_SRUN.replace("{python}", sys.executable)), ("scontrol", FAKE_SCONTROL)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(stat.S_IRWXU)
  env = subprocess_env(4)  # 4 CPU devices per task
  env.update(
    PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
    PYTHON=sys.executable,
    FAKE_SRUN_LOGS=str(logs),
    FAKE_TASKS_PER_NODE=str(tasks_per_node),
    SLURM_JOB_ID="777",
    JAX_COORDINATOR_PORT=str(_free_port()),
    SLURM_NTASKS="2",
    SLURM_NNODES=str(2 // tasks_per_node),
    SLURM_STEP_NODELIST="localhost",
    SLURM_STEP_TASKS_PER_NODE="1(x2)" if tasks_per_node == 1 else "2",
    **extra,
  )
  for name in ("JAX_LOCAL_DEVICE_IDS", "CUDA_VISIBLE_DEVICES"):
    if name not in extra:
      env.pop(name, None)
  return env, logs


def _sbatch(env, workdir, *extra):
  return subprocess.Popen(
    [
      "bash",
      os.path.join(REPO, "launch", "slurm.sbatch"),
      os.path.join(REPO, "configs", "default.py"),
      str(workdir),
      *RUN_ARGS,
      *extra,
    ],
    env=env,
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_process")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxcls.main",
      "--config",
      os.path.join(REPO, "configs", "default.py"),
      "--workdir",
      str(workdir),
      *RUN_ARGS,
    ],
    env=subprocess_env(8),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def _same_result(workdir, reference):
  with open(workdir / "report.json") as f1, open(reference / "report.json") as f2:
    multi, one = json.load(f1), json.load(f2)
  assert multi["num_examples"] == one["num_examples"] == 360
  assert multi["accuracy"] == one["accuracy"]
  a, b = saved_state(workdir), saved_state(reference)
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
  "tasks_per_node, extra, expected_ids",
  [
    (1, {}, ["all", "all"]),  # one task per "node": each keeps all 4 of its devices
    (2, {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, ["0,1,2,3", "4,5,6,7"]),  # two tasks share a node's GPUs
  ],
)
def test_slurm_sbatch_drives_every_local_device_and_matches_one_process(
  tmp_path, one_process_run, tasks_per_node, extra, expected_ids
):
  env, logs = _fake_slurm(tmp_path, tasks_per_node, **extra)
  proc = _sbatch(env, tmp_path / "run")
  out, _ = proc.communicate(timeout=900)
  task_logs = [(logs / f"task{i}.log").read_text() for i in range(2)]
  assert proc.returncode == 0, (out[-2000:], task_logs[0][-3000:], task_logs[1][-3000:])
  for i, log in enumerate(task_logs):
    match = DEVICES.search(log)
    assert match, log[-3000:]
    process, local, total, ids, visible = match.groups()
    assert (int(process), int(local), int(total)) == (i, 4, 8)  # every task keeps all of its local devices
    assert ids == visible == expected_ids[i]  # what jaxcls decided, and what JAX applied
  _same_result(tmp_path / "run", one_process_run)
  assert not (logs / "scontrol.calls").exists()  # a finished job is not requeued


@pytest.mark.slow
def test_slurm_sbatch_requeues_a_preempted_job(tmp_path):
  env, logs = _fake_slurm(tmp_path, 1)
  proc = _sbatch(env, tmp_path / "run", "--config.num_train_steps=400")
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if (
      all(
        "First step (compilation included)" in (logs / f"task{i}.log").read_text()
        for i in range(2)
        if (logs / f"task{i}.log").exists()
      )
      and len(list(logs.glob("task*.log"))) == 2
    ):
      break
    time.sleep(0.2)
  assert proc.poll() is None, "the job ended before it could be preempted"
  os.kill(int((logs / "task1.pid").read_text()), signal.SIGTERM)  # as SLURM's --signal=TERM@120 would
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 75, out[-3000:]
  assert "requeueing job" in out
  assert (logs / "scontrol.calls").read_text().split() == ["requeue", env["SLURM_JOB_ID"]]
  assert re.search(r"jaxcls: preempted at step \d+; checkpoint saved to ", (logs / "task0.log").read_text())


# --- launch/tpu_vm.py: the commands it would run, and what it refuses ---------------------------------------------

TPU = [
  sys.executable,
  os.path.join(REPO, "launch", "tpu_vm.py"),
  "--name",
  "jx-1",
  "--zone",
  "us-central2-b",
  "--version",
  "tpu-ubuntu2204-base",
  "--config",
  os.path.join(REPO, "configs", "default.py"),
]


def _tpu(*args, env=None):
  return subprocess.run([*TPU, *args], capture_output=True, text=True, timeout=60, cwd=REPO, env=env)


def _gcloud_calls(stdout):
  return [shlex.split(line) for line in stdout.splitlines() if line.startswith("gcloud ")]


def _flags(cmd):
  return {a.split("=", 1)[0]: a.split("=", 1)[1] if "=" in a else True for a in cmd if a.startswith("--")}


@pytest.mark.parametrize("queued", [False, True])
def test_tpu_dry_run_prints_every_gcloud_command_in_order(queued):
  proc = _tpu(
    "--accelerator-type",
    "v4-32",
    "--spot",
    "--project",
    "my-proj",
    "--workdir",
    "gs://bkt/runs/a",
    "--dry-run",
    *(["--queued"] if queued else []),
    "--",
    "--config.num_epochs=3",
    "--config.model.widths=(8, 16)",
  )
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert "pip wheel --no-deps" in lines[0]  # the package is built here, then copied: no shared filesystem
  calls = _gcloud_calls(proc.stdout)
  verbs = [" ".join(c[3:5]) for c in calls]
  if queued:
    assert verbs == [
      "queued-resources create",
      "queued-resources describe",
      "tpu-vm ssh",
      "tpu-vm scp",
      "tpu-vm ssh",
      "tpu-vm ssh",
      "queued-resources delete",
    ]
    create = _flags(calls[0])
    assert create["--node-id"] == "jx-1" and create["--runtime-version"] == "tpu-ubuntu2204-base"
    assert "--force" in calls[-1] and "--quiet" in calls[-1]
  else:
    assert verbs == ["tpu-vm create", "tpu-vm ssh", "tpu-vm scp", "tpu-vm ssh", "tpu-vm ssh", "tpu-vm delete"]
    assert _flags(calls[0])["--version"] == "tpu-ubuntu2204-base" and "--quiet" in calls[-1]
  assert calls[0][5] == "jx-1" and _flags(calls[0])["--accelerator-type"] == "v4-32" and "--spot" in calls[0]
  for cmd in calls:
    assert _flags(cmd)["--zone"] == "us-central2-b" and _flags(cmd)["--project"] == "my-proj", cmd
  for cmd in calls:
    if cmd[4] in ("ssh", "scp"):
      assert _flags(cmd)["--worker"] == "all", cmd  # every worker
  scp = next(c for c in calls if c[4] == "scp")
  assert scp[5].endswith(".whl") and scp[6].endswith("default.py") and scp[7] == "jx-1:~/jaxcls_run/"
  install, train_cmd = [_flags(c)["--command"] for c in calls if c[4] == "ssh"][1:]
  assert "pip install" in install and "jax[tpu]==" in install and "[gcs]" in install
  train_args = shlex.split(train_cmd.split("&&", 1)[1])
  assert train_args[:3] == ["python3", "-m", "jaxcls.main"]
  assert "--workdir=gs://bkt/runs/a" in train_args and "--distributed=on" in train_args
  assert train_args[-2:] == ["--config.num_epochs=3", "--config.model.widths=(8, 16)"]


def test_tpu_keep_skips_the_delete():
  proc = _tpu("--accelerator-type", "v5litepod-8", "--workdir", "gs://bkt/a", "--keep", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  calls = _gcloud_calls(proc.stdout)
  assert [c[4] for c in calls] == ["create", "ssh", "scp", "ssh", "ssh"] and "--spot" not in calls[0]
  assert "--distributed=auto" in _flags(calls[-1])["--command"]  # one host: no jax.distributed needed
  assert "keeping jx-1 (--keep)" in proc.stderr


@pytest.mark.parametrize(
  "args, message",
  [
    (
      ["--accelerator-type", "v4-32", "--workdir", "/mnt/run"],
      "--workdir=/mnt/run is not a gs:// bucket; the 4 workers of a v4-32 share no filesystem",
    ),
    (
      ["--accelerator-type", "v6e-8", "--workdir", "/tmp/run"],
      "--workdir=/tmp/run is on the TPU VM's own disk, which is deleted at the end",
    ),
    (["--accelerator-type", "v9-8", "--workdir", "gs://b/r"], "--accelerator-type='v9-8' is not a TPU type"),
    (["--accelerator-type", "v4-8", "--workdir", "gs://b/r", "--wheel", "nope.whl"], "--wheel=nope.whl is not a"),
  ],
)
def test_tpu_refuses_bad_arguments_with_one_line(args, message):
  proc = _tpu(*args, "--dry-run")
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr.startswith("tpu_vm: error: ") and message in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_tpu_worker_counts():
  sys.path.insert(0, os.path.join(REPO, "launch"))
  import tpu_vm  # pylint: disable=g-import-not-at-top

  assert [
    tpu_vm.workers(t) for t in ("v4-8", "v4-32", "v5p-128", "v3-8", "v5litepod-8", "v5litepod-16", "v6e-256", "v2-32")
  ] == [1, 4, 16, 1, 1, 4, 64, 4]


def test_tpu_deletes_the_vm_when_a_step_fails(tmp_path):
  """With a stand-in gcloud that fails at the copy, the launcher still deletes the VM and says why it stopped."""
  (tmp_path / "gcloud").write_text(
    '#!/usr/bin/env bash\necho "$@" >> "$GCLOUD_LOG"\n[ "$4" = scp ] && exit 3\nexit 0\n'
  )
  (tmp_path / "gcloud").chmod(stat.S_IRWXU)
  wheel = tmp_path / "jaxcls-0.1.0-py3-none-any.whl"
  wheel.write_bytes(b"PK")
  env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", GCLOUD_LOG=str(tmp_path / "log"))
  proc = _tpu("--accelerator-type", "v4-16", "--workdir", "gs://b/r", "--wheel", str(wheel), env=env)
  assert proc.returncode == 2 and "tpu_vm: error: `gcloud compute tpus tpu-vm scp" in proc.stderr
  verbs = [line.split()[3] for line in (tmp_path / "log").read_text().splitlines()]
  assert verbs == ["create", "ssh", "scp", "delete"]
