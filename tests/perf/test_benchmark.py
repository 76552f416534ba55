"""Tests of `python -m jaxcls.benchmark`: a tiny CPU run in a subprocess that cannot import TensorFlow, clu or
ml_collections (the GPU machine has none of them), its JSON record, the comparison table, and bad flags."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import subprocess_env

BLOCKED = ("tensorflow", "tensorflow_datasets", "clu", "ml_collections")
# Setting a module to None in sys.modules makes any import of it raise ImportError.
RUNNER = (
  "import sys\n"
  f"for name in {BLOCKED!r}:\n"
  "  sys.modules[name] = None\n"
  "import runpy\n"
  "sys.argv[0] = 'jaxcls.benchmark'\n"
  "try:\n"
  "  runpy.run_module('jaxcls.benchmark', run_name='__main__')\n"
  "finally:\n"
  f"  assert not any(sys.modules.get(m) for m in {BLOCKED!r})\n"
)
TINY = [
  "--model",
  "simple_cnn",
  "--model_arg",
  "widths=(4, 8)",
  "--model_arg",
  "dropout=0.1",
  "--batch_size",
  "8",
  "--image_size",
  "8",
  "--num_classes",
  "5",
  "--dtype",
  "float32",
  "--warmup",
  "1",
  "--steps",
  "2",
  "--repeats",
  "2",
  "--peak_tflops",
  "0.5",
  "--peak_gbps",
  "20",
]
MODE_FIELDS = (
  "images_per_s",
  "images_per_s_mean",
  "images_per_s_per_device",
  "images_per_s_repeats",
  "step_ms",
  "compile_s",
  "first_step_s",
  "gflop_per_image",
  "tflops_per_device",
  "utilization",
  "gbytes_per_image",
  "compute_floor_ms",
  "memory_floor_ms",
  "roofline_fraction",
)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
  """One tiny run on 2 CPU devices with a persistent compilation cache and a profile of 2 steps per mode: its JSON
  record, the cache folder and the output."""
  out = tmp_path_factory.mktemp("bench")
  cache = out / "cache"
  cmd = [
    sys.executable,
    "-c",
    RUNNER,
    *TINY,
    "--json",
    str(out / "r.json"),
    "--compilation_cache_dir",
    str(cache),
    "--profile_dir",
    str(out / "profile"),
    "--profile_steps",
    "2",
  ]
  proc = subprocess.run(cmd, env=subprocess_env(2), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / "r.json") as f:
    return json.load(f), str(cache), proc.stdout


def test_record_has_the_documented_fields_with_sane_values(record):
  r, _, stdout = record
  assert (r["framework"], r["model"], r["batch_size"], r["image_size"], r["dtype"]) == (
    "jaxcls",
    "simple_cnn",
    8,
    8,
    "float32",
  )
  assert r["num_devices"] == 2 and r["backend"] == "cpu" and r["flops_source"] == "xla_cost_analysis"
  for mode in ("train", "infer"):
    m = r[mode]
    assert set(MODE_FIELDS) <= set(m)
    assert len(m["images_per_s_repeats"]) == 2
    assert min(m["images_per_s_repeats"]) <= m["images_per_s"] <= max(m["images_per_s_repeats"])
    assert m["images_per_s_per_device"] == pytest.approx(m["images_per_s"] / 2)
    assert m["step_ms"] == pytest.approx(8 / m["images_per_s"] * 1e3)
    assert m["compile_s"] > 0 and m["first_step_s"] >= m["compile_s"]
    assert m["tflops_per_device"] == pytest.approx(m["gflop_per_image"] * m["images_per_s_per_device"] / 1e3)
    assert m["utilization"] == pytest.approx(m["tflops_per_device"] / 0.5)
    # The floors: FLOPs at 0.5 TFLOP/s and XLA's bytes at 20 GB/s for the 4 images each device runs.
    assert m["compute_floor_ms"] == pytest.approx(m["gflop_per_image"] * 4 / 0.5e3 * 1e3)
    assert m["memory_floor_ms"] == pytest.approx(m["gbytes_per_image"] * 4 / 20 * 1e3)
    assert m["roofline_fraction"] == pytest.approx(max(m["compute_floor_ms"], m["memory_floor_ms"]) / m["step_ms"])
  # The train step reads and writes the weights and optimizer state besides the activations: more bytes per image.
  assert r["train"]["gbytes_per_image"] > r["infer"]["gbytes_per_image"] > 8 * 8 * 3 / 1e9
  # Forward, backward and update cost about three forward passes.
  assert 2.0 < r["train"]["gflop_per_image"] / r["infer"]["gflop_per_image"] < 4.5
  assert r["time_to_first_step_s"] >= r["train"]["first_step_s"]
  assert r["label"] == "jaxcls simple_cnn widths=(4, 8) dropout=0.1 float32 b8 8px"
  assert r["label"][:50] in stdout and "img/s" in stdout


def test_forward_flops_agree_with_the_model_cost_command(record):
  """The eval step's FLOPs (plus its softmax) against jaxcls.models.cost, which compiles the bare forward pass."""
  from jaxcls import models
  from jaxcls.models import cost

  r, _, _ = record
  model = models.build({"name": "simple_cnn", "widths": (4, 8), "dropout": 0.1}, 5)
  forward = cost.forward_flops(model, (8, 8, 3), batch_size=4)
  assert forward > 0
  assert r["infer"]["gflop_per_image"] * 1e9 == pytest.approx(forward, rel=0.25)


def test_compilation_cache_is_written_and_serves_the_recompile(record):
  r, cache, _ = record
  assert r["compilation_cache_entries_at_start"] == 0
  assert any("train_step" in name for name in os.listdir(cache))
  assert 0 < r["compile_warm_s"] < r["train"]["compile_s"]


def test_summary_table_gives_the_ratio_to_the_pytorch_run_of_the_same_shape(record, tmp_path):
  from jaxcls.perf import benchmark

  r, _, _ = record
  peer = json.loads(json.dumps(r))
  peer.update(framework="torch", label="torch peer")
  peer["train"]["images_per_s"] = r["train"]["images_per_s"] / 2
  other_shape = dict(peer, batch_size=16, label="torch other batch")
  paths = []
  for i, rec in enumerate((r, peer, other_shape)):
    paths.append(str(tmp_path / f"{i}.json"))
    with open(paths[-1], "w") as f:
      json.dump(rec, f)
  rows = [line for line in benchmark.table(benchmark.load_records(paths)).splitlines() if " train " in line]
  assert len(rows) == 3
  assert rows[0].rstrip().endswith("2.00x")
  assert rows[1].rstrip().endswith("-") and rows[2].rstrip().endswith("-")


def test_profile_section_breaks_down_each_modes_device_time(record):
  """After timing, 2 traced steps per mode: per-device device time by category and the top ops, also printed."""
  from jaxcls.perf import trace_summary

  r, _, stdout = record
  assert set(r["profile"]) == {"train", "infer"}
  for mode, p in r["profile"].items():
    assert (p["steps"], p["steps_source"], p["num_devices"]) == (2, "given", 2)
    assert p["source"].startswith("host CPU thunk executions") and "hlo_op" in p["stats_seen"]
    assert os.path.isdir(p["trace_dir"]) and p["trace_dir"].endswith(mode)
    assert 0 < p["device_busy_ms_per_step"] <= p["device_span_ms_per_step"] <= p["traced_wall_ms_per_step"]
    assert {c["category"] for c in p["categories"]} <= set(trace_summary.CATEGORIES)
    assert sum(c["percent"] for c in p["categories"]) == pytest.approx(100)
    assert sum(c["ms_per_step"] for c in p["categories"]) == pytest.approx(p["device_op_ms_per_step"])
    assert 0 < len(p["top"]) <= 10 and all("short_name" in op and "name" not in op for op in p["top"])
    assert f"profile of 2 {mode} steps" in stdout
  # The simple CNN's convolutions run as their own thunks on CPU at this size.
  assert any(c["category"] == "convolution" for c in r["profile"]["train"]["categories"])


def test_a_failing_profile_is_reported_not_raised(tmp_path, capsys):
  """The profile runs after the timing: if it fails, the record keeps the error and the run goes on."""
  from jaxcls.perf import benchmark

  def failing_step():
    raise RuntimeError("no CUPTI")

  out = benchmark.profile_mode(failing_step, "train", 2, str(tmp_path / "train"))
  assert out == {"error": "RuntimeError: no CUPTI", "trace_dir": str(tmp_path / "train")}
  assert "profile of train failed: RuntimeError: no CUPTI" in capsys.readouterr().err


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--modes", "train,backward"], "--modes"),
    (["--dtype", "float64"], "--dtype"),
    (["--model_arg", "stem"], "key=value"),
    (["--batch_size", "7"], "multiple of the 8 devices"),
    (["--model", "resnet5"], "resnet50"),
    (["--profile_dir", "/tmp/unused", "--profile_steps", "0"], "--profile_steps"),
  ],
)
def test_bad_options_raise_one_clear_config_error(flags, message):
  """Each is checked before anything compiles (8 devices here, so a batch of 7 cannot be split)."""
  from jaxcls.core.errors import ConfigError
  from jaxcls.perf import benchmark

  options = {name.lstrip("-"): value for name, value in zip(flags[::2], flags[1::2])}
  types = {f.name: f.type for f in dataclasses.fields(benchmark.Options)}
  options = {k: (v,) if k == "model_arg" else types[k](v) for k, v in options.items()}
  with pytest.raises(ConfigError, match=re.escape(message)):
    benchmark.run(benchmark.Options(**options))


def test_the_command_turns_a_bad_flag_and_unreadable_records_into_one_line(python, tmp_path):
  for args, message in (
    (["--dtype", "float64"], "--dtype='float64' is not valid"),
    (["--steps", "two"], "flag --steps=two"),
    (["--summarize", str(tmp_path / "none.json")], "Cannot read the benchmark record"),
    (["--summarize"], "--summarize needs the JSON records"),
  ):
    proc = subprocess.run(
      [python, "-m", "jaxcls.benchmark", *args], env=subprocess_env(2), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.startswith(f"jaxcls: error: {message}"), (args, proc.stderr)
    assert len(proc.stderr.splitlines()) == 1 and proc.stdout == ""


def test_model_args_are_literals_or_strings():
  from jaxcls.perf import benchmark

  assert benchmark.parse_model_args(["stem=small", "width=32", "widths=(8, 16)", "dropout=0.5"]) == {
    "stem": "small",
    "width": 32,
    "widths": (8, 16),
    "dropout": 0.5,
  }


def test_roofline_takes_the_larger_floor():
  from jaxcls.perf import benchmark

  # 2 GFLOP/img at 100 TFLOP/s and 50 MB/img at 1,000 GB/s, 100 images: 2 ms of arithmetic, 5 ms of memory traffic.
  r = benchmark.roofline(10.0, 100, 2e9, 5e7, peak_tflops=100, peak_gbps=1000)
  assert r == pytest.approx({"compute_floor_ms": 2.0, "memory_floor_ms": 5.0, "roofline_fraction": 0.5})
  assert benchmark.roofline(10.0, 100, 2e9, None, peak_tflops=100, peak_gbps=1000)[
    "roofline_fraction"
  ] == pytest.approx(0.2)
  assert benchmark.roofline(10.0, 100, 2e9, 5e7, peak_tflops=0, peak_gbps=0) == {
    "compute_floor_ms": None,
    "memory_floor_ms": None,
    "roofline_fraction": None,
  }
