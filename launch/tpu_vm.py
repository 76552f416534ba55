"""Cloud TPU: create a TPU VM (or a queued resource), install jaxcls on every worker, train, delete the VM.

  python launch/tpu_vm.py --name my-tpu --zone us-central2-b --accelerator-type v4-32 \
      --version tpu-ubuntu2204-base --spot --config configs/my_config.py --workdir gs://my-bucket/runs/my_run \
      [--queued] [--project P] [--keep] [--dry-run] [-- --config.key=value ...]

TPU VMs share no filesystem, so the package is built here as a wheel and copied with the config file to every
worker, and the workdir must be a gs:// bucket every worker writes to (and that outlives the VM). The VM is
deleted at the end, also when a step fails or the run is interrupted, unless --keep. --dry-run prints every
command (the local wheel build, then each gcloud call) and runs none. Re-running the same command after a spot
preemption creates a fresh VM and resumes from the checkpoint in the bucket.
"""

import argparse
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = "jaxcls_run"  # in each worker's home directory
READY, FAILED = "ACTIVE", ("FAILED", "SUSPENDED")


class LaunchError(Exception):
  """A bad launcher argument or a failed step: printed as one line."""


def workers(accelerator_type: str) -> int:
  """Hosts in a TPU slice: v2/v3/v4/v5p-N count TensorCores (8 per host), v5litepod/v5e/v6e-N count chips
  (one host up to 8, then 4 per host)."""
  match = re.fullmatch(r"(v2|v3|v4|v5p|v5litepod|v5e|v6e)-(\d+)", accelerator_type)
  if not match:
    raise LaunchError(
      f"--accelerator-type={accelerator_type!r} is not a TPU type such as v4-32, v5p-16, v5litepod-8 or v6e-16."
    )
  family, n = match.group(1), int(match.group(2))
  if family in ("v2", "v3", "v4", "v5p"):
    return max(n // 8, 1)
  return 1 if n <= 8 else n // 4


def parse_args(argv):
  """The launcher's flags: which TPU VM, where, how to get capacity, and the jaxcls command to run on it."""
  parser = argparse.ArgumentParser(prog="launch/tpu_vm.py", description=__doc__.split("\n")[0])
  parser.add_argument("--name", required=True, help="TPU VM name (and queued-resource id with --queued).")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", help="Google Cloud project (default: gcloud's configured one).")
  parser.add_argument("--accelerator-type", required=True, help="e.g. v4-32, v5litepod-16, v6e-8.")
  parser.add_argument("--version", required=True, help="TPU runtime version, e.g. tpu-ubuntu2204-base.")
  capacity = parser.add_mutually_exclusive_group()
  capacity.add_argument("--spot", action="store_true", help="Spot capacity (preemptible; jaxcls saves on SIGTERM).")
  capacity.add_argument("--on-demand", action="store_true", help="On-demand capacity (the default).")
  parser.add_argument("--queued", action="store_true", help="Ask through a queued resource and wait for it.")
  parser.add_argument("--config", required=True, help="The config file, copied to every worker.")
  parser.add_argument("--workdir", required=True, help="gs://bucket/path every worker writes to.")
  parser.add_argument("--wheel", help="A jaxcls wheel built already (default: build one from this checkout).")
  parser.add_argument("--keep", action="store_true", help="Do not delete the VM at the end.")
  parser.add_argument("--dry-run", action="store_true", help="Print every command instead of running it.")
  parser.add_argument("--poll-seconds", type=float, default=30.0, help="Queued resource: seconds between checks.")
  parser.add_argument("overrides", nargs="*", help="--config.key=value ... passed on (after a '--').")
  args = parser.parse_args(argv)
  n = workers(args.accelerator_type)
  if not args.workdir.startswith("gs://"):
    if n > 1:
      raise LaunchError(
        f"--workdir={args.workdir} is not a gs:// bucket; the {n} workers of a "
        f"{args.accelerator_type} share no filesystem, so use --workdir=gs://BUCKET/PATH."
      )
    if not args.keep:
      raise LaunchError(
        f"--workdir={args.workdir} is on the TPU VM's own disk, which is deleted at the end; "
        f"use --workdir=gs://BUCKET/PATH, or --keep to keep the VM."
      )
  if not os.path.isfile(args.config):
    raise LaunchError(f"--config={args.config} does not exist; pass a config file such as configs/default.py.")
  if args.wheel and not (args.wheel.endswith(".whl") and os.path.isfile(args.wheel)):
    raise LaunchError(f"--wheel={args.wheel} is not a wheel file; build one with `pip wheel --no-deps -w dist .`.")
  args.workers = n
  return args


class Runner:
  """Runs (or, in a dry run, prints) commands; every command is also echoed, so a log shows what ran."""

  def __init__(self, dry_run: bool):
    self.dry_run = dry_run

  def __call__(self, cmd: list[str], *, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    """Echoes and runs `cmd` (a dry run succeeds at once, READY as its output); a failure raises if `check`."""
    print(shlex.join(cmd), flush=True)
    if self.dry_run:
      return subprocess.CompletedProcess(cmd, 0, stdout=READY if capture else None)
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE if capture else None)
    if check and proc.returncode != 0:
      raise LaunchError(f"`{shlex.join(cmd[:5])} ...` failed with exit code {proc.returncode}.")
    return proc


def _where(args) -> list[str]:
  return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def wheel_name() -> str:
  """The file name of this checkout's wheel (from pyproject.toml's version), the one copied to every worker."""
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    version = tomllib.load(f)["project"]["version"]
  return f"jaxcls-{version}-py3-none-any.whl"


def jax_requirement() -> str:
  """jax[tpu] at the version this checkout is tested with."""
  try:
    return f"jax[tpu]=={importlib.metadata.version('jax')}"
  except importlib.metadata.PackageNotFoundError:
    return "jax[tpu]"


def create(run: Runner, args) -> None:
  """Creates the TPU VM (spot when asked); a queued resource is polled until it is ready or has failed."""
  capacity = ["--spot"] if args.spot else []
  if args.queued:
    run(
      [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "create",
        args.name,
        f"--node-id={args.name}",
        *_where(args),
        f"--accelerator-type={args.accelerator_type}",
        f"--runtime-version={args.version}",
        *capacity,
      ]
    )
    while True:
      state = run(
        [
          "gcloud",
          "compute",
          "tpus",
          "queued-resources",
          "describe",
          args.name,
          *_where(args),
          "--format=value(state.state)",
        ],
        capture=True,
      ).stdout.strip()
      if state == READY:
        return
      if state in FAILED:
        raise LaunchError(
          f"The queued resource {args.name} ended in state {state}; see `gcloud compute tpus "
          f"queued-resources describe {args.name} --zone={args.zone}`."
        )
      print(f"tpu_vm: queued resource {args.name} is {state or 'not ready'}; waiting.", file=sys.stderr)
      time.sleep(args.poll_seconds)
  run(
    [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "create",
      args.name,
      *_where(args),
      f"--accelerator-type={args.accelerator_type}",
      f"--version={args.version}",
      *capacity,
    ]
  )


def delete(run: Runner, args) -> None:
  """Deletes the TPU VM (or its queued resource), so a finished or failed run stops costing money."""
  if args.queued:
    run(
      ["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_where(args), "--force", "--quiet"],
      check=False,
    )
  else:
    run(["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *_where(args), "--quiet"], check=False)


def ssh_all(args, command: str) -> list[str]:
  """The gcloud command that runs `command` on every worker of the pod at once (a multi-host run needs all)."""
  return [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    args.name,
    *_where(args),
    "--worker=all",
    f"--command={command}",
  ]


def launch(args, run: Runner) -> int:
  """Builds the wheel, creates the VM, copies the wheel and config to every worker and runs the same training there."""
  if args.wheel:
    local_wheel = args.wheel
  else:
    build_dir = os.path.join(REPO, "dist")
    local_wheel = os.path.join(build_dir, wheel_name())
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", build_dir, REPO])
  wheel = os.path.basename(local_wheel)
  config_name = os.path.basename(args.config)
  train = [
    "python3",
    "-m",
    "jaxcls.main",
    f"--config={config_name}",
    f"--workdir={args.workdir}",
    f"--distributed={'on' if args.workers > 1 else 'auto'}",
    *args.overrides,
  ]
  create(run, args)
  try:
    run(ssh_all(args, f'mkdir -p "$HOME/{REMOTE_DIR}"'))
    run(
      [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        local_wheel,
        args.config,
        f"{args.name}:~/{REMOTE_DIR}/",
        *_where(args),
        "--worker=all",
      ]
    )
    run(
      ssh_all(args, f'python3 -m pip install -q {shlex.quote(jax_requirement())} "$HOME/{REMOTE_DIR}/{wheel}[gcs]"')
    )  # gcsfs: gs:// workdirs through etils.epath
    code = run(ssh_all(args, f'cd "$HOME/{REMOTE_DIR}" && {shlex.join(train)}'), check=False).returncode
    if code == 75:
      print(
        f"tpu_vm: the run was preempted after saving a checkpoint in {args.workdir}; run this command again to resume.",
        file=sys.stderr,
      )
    elif code != 0:
      print(
        f"tpu_vm: the run ended with exit code {code} (255: the VM went away, e.g. a spot preemption; run "
        f"this command again to resume from {args.workdir}).",
        file=sys.stderr,
      )
    return code
  finally:
    if args.keep:
      print(
        f"tpu_vm: keeping {args.name} (--keep); delete it with `gcloud compute tpus "
        f"{'queued-resources' if args.queued else 'tpu-vm'} delete {args.name} --zone={args.zone}`.",
        file=sys.stderr,
      )
    else:
      delete(run, args)


def main(argv=None) -> int:
  """Runs the launcher; its own errors are one line and exit 2, Ctrl-C exits 130."""
  try:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return launch(args, Runner(args.dry_run))
  except LaunchError as e:
    print(f"tpu_vm: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("tpu_vm: interrupted.", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
