"""core/cpu_threads: virtual CPU devices get an XLA client pool of twice their count (PJRT_NPROC), set on import."""

import os
import subprocess
import sys

from conftest import REPO

from jaxcls.core import cpu_threads


def test_the_forced_device_count_is_read_from_xla_flags_then_jax_num_cpu_devices():
  flags = "--xla_force_host_platform_device_count=4 --foo --xla_force_host_platform_device_count=8"
  assert cpu_threads.virtual_cpu_devices({"XLA_FLAGS": flags}) == 8  # XLA keeps the last one
  assert cpu_threads.virtual_cpu_devices({"JAX_NUM_CPU_DEVICES": "6"}) == 6
  assert cpu_threads.virtual_cpu_devices({"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}) == 0
  assert cpu_threads.virtual_cpu_devices({}) == 0


def test_pjrt_nproc_is_twice_the_devices_unless_the_user_chose_or_the_cores_suffice():
  many = 2 * (os.cpu_count() or 1) + 2  # more devices than half the cores: the pool needs the slack
  env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={many}"}
  assert cpu_threads.ensure_client_threads(env) == 2 * many
  assert env["PJRT_NPROC"] == str(2 * many)
  for users in ({"PJRT_NPROC": "3"}, {"NPROC": "3"}):
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={many}", **users}
    assert cpu_threads.ensure_client_threads(env) is None
    assert env.get("PJRT_NPROC") == users.get("PJRT_NPROC")
  assert cpu_threads.ensure_client_threads({}) is None  # one CPU device: XLA's own pool is right
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  assert cpu_threads.ensure_client_threads(env) is None and "PJRT_NPROC" not in env


def test_importing_jaxcls_sizes_the_pool_xla_really_starts():
  """XLA's intra-op pool (threads named tf_XLAEigen) is as large as the client pool: the count shows what XLA read."""
  devices = 2 * (os.cpu_count() or 1) + 2
  code = (
    "import os, jaxcls, jax, jax.numpy as jnp\n"
    "jax.jit(lambda x: x + 1)(jnp.ones(4)).block_until_ready()\n"
    "names = [open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task')]\n"
    "print(os.environ.get('PJRT_NPROC'), names.count('tf_XLAEigen'))\n"
  )
  env = {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC", "JAX_NUM_CPU_DEVICES")}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == [str(2 * devices), str(2 * devices)], out.stdout
