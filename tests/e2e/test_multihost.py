"""Two processes on localhost (jax.distributed, gloo CPU collectives) train one model together and agree."""

import json
import os
import re
import socket
import subprocess

import pytest
from conftest import REPO, subprocess_env

ARGS = [
  "-m",
  "jaxcls.main",
  "--config",
  os.path.join(REPO, "configs", "default.py"),
  "--config.num_train_steps=30",
  "--config.eval_every_steps=15",
  "--config.checkpoint_every_steps=15",
  "--config.model.widths=(8, 16)",
  "--config.async_checkpointing=False",
  "--config.optimizer.warmup_steps=5",
]
FINAL = re.compile(r"Final test metrics at step (\d+): loss ([\d.]+), accuracy ([\d.]+)")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_one(python, tmp_path):
  port = _free_port()
  workdir = str(tmp_path / "multi")
  procs = [
    subprocess.Popen(
      [
        python,
        *ARGS,
        "--workdir",
        workdir,
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      env=subprocess_env(2),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  finals = [FINAL.search(err).groups() for _, err in outputs]
  assert finals[0] == finals[1]  # both processes computed the same global metrics
  assert "process 1 of 2" in outputs[1][1]

  single = str(tmp_path / "single")
  proc = subprocess.run(
    [python, *ARGS, "--workdir", single], env=subprocess_env(4), cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "report.json")) as f1, open(os.path.join(single, "report.json")) as f2:
    multi, one = json.load(f1), json.load(f2)
  # 2 processes x 2 devices and 1 process x 4 devices run the same global computation.
  assert multi["num_examples"] == one["num_examples"] == 360
  assert multi["accuracy"] == pytest.approx(one["accuracy"], abs=1 / 360 + 1e-9)
  assert multi["loss"] == pytest.approx(one["loss"], rel=1e-4)
