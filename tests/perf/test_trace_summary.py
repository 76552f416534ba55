"""Tests of jaxcls.trace_summary: the kernel-name categories on real GPU kernel names, a hand-built GPU-shaped trace
whose every figure is known, and a real CPU trace of a jitted convolution followed by reductions."""

import json
import os
import re
import subprocess
import time

import jax
import jax.numpy as jnp
import pytest
from conftest import subprocess_env

from jaxcls.core.errors import ConfigError, DataError
from jaxcls.perf import trace_summary


@pytest.mark.parametrize(
  "name, stats, expected",
  [
    # cuDNN convolutions (forward, data and filter gradients) and its own NCHW<->NHWC conversions.
    (
      "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1_g1"
      "_execute_segment_k_off_kernel__5x_cudnn",
      None,
      "convolution",
    ),
    (
      "sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x256x64_warpgroupsize2x1x1"
      "_execute_segment_k_off_kernel__5x_cudnn",
      None,
      "convolution",
    ),
    (
      "sm80_xmma_wgrad_implicit_gemm_indexed_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize64x64x64_stage4_warpsize2x2x1"
      "_g1_tensor16x8x16_execute_kernel__5x_cudnn",
      None,
      "convolution",
    ),
    (
      "void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized_bf16_128x128_32x5_nhwc_align8>("
      "cutlass_tensorop_bf16_s16816fprop_optimized_bf16_128x128_32x5_nhwc_align8::Params)",
      None,
      "convolution",
    ),
    (
      "void cudnn::cnn::implicit_convolve_sgemm<float, float, 128, 5, 5, 3, 3, 3, 1, false, false, true>(int, int)",
      None,
      "convolution",
    ),
    (
      "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false, true, "
      "(cudnnKernelDataType_t)0>(cudnn::engines_precompiled::nchw2nhwc_params_t<float>)",
      None,
      "layout",
    ),
    ("cudnn::bn_fw_tr_1C11_kernel_NCHW", None, "reduction"),
    # GEMMs: cuBLAS / cuBLASLt, CUTLASS, XLA's Triton GEMM fusions, cuBLAS split-K epilogue.
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNN", None, "matmul"),
    (
      "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off"
      "_kernel__5x_cublas",
      None,
      "matmul",
    ),
    (
      "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align8>("
      "cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align8::Params)",
      None,
      "matmul",
    ),
    ("gemm_fusion_dot_3", None, "matmul"),
    (
      "void splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16, true, false, false>("
      "cublasSplitKParams<float>, float const*)",
      None,
      "matmul",
    ),
    # XLA fusions, named <kind>_<hero ops>_fusion: reductions (batch-norm statistics), elementwise, layout.
    ("input_reduce_fusion", None, "reduction"),
    ("input_convert_reduce_fusion_2", None, "reduction"),
    ("loop_add_fusion", None, "elementwise"),
    ("loop_multiply_select_fusion_4", None, "elementwise"),
    ("loop_convert_fusion", None, "elementwise"),  # "conv" in "convert" is no convolution
    ("fusion_12", None, "elementwise"),
    ("loop_transpose_fusion_1", None, "layout"),
    ("wrapped_transpose", None, "layout"),
    ("loop_copy_fusion", None, "layout"),
    ("copy_12", None, "layout"),
    ("loop_bitcast_convert_fusion", None, "layout"),
    ("loop_dynamic_update_slice_fusion", None, "layout"),
    ("input_reduce_window_fusion", None, "pooling"),
    ("loop_select_and_scatter_fusion", None, "pooling"),
    # Collectives and copies: `reduce_scatter` is no reduction; CUPTI names memcpy/memset events by their kind.
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", None, "collective"),
    ("reduce-scatter.3", None, "collective"),
    ("MemcpyD2D", None, "memcpy"),
    ("Memset", None, "memcpy"),
    ("anything", {"memcpy_details": "kind_src:device kind_dst:device size:4096"}, "memcpy"),
    # An unhelpful kernel name falls back on the hlo_op stat, then hlo_category; else "other".
    ("kernel_17", {"hlo_op": "cudnn-conv-bw-filter.2"}, "convolution"),
    ("kernel_17", {"hlo_category": "data formatting"}, "layout"),
    ("redzone_checker", None, "other"),
    ("triton_softmax_fusion", None, "other"),
  ],
)
def test_categorize_real_kernel_names(name, stats, expected):
  assert trace_summary.categorize(name, stats) == expected


def _gpu_plane(plane_id: int, name: str) -> str:
  """A /device:GPU plane as CUPTI writes it: kernels on a compute stream, a memcpy on another, CUPTI overhead.

  Times in microseconds (offsets in ps) from a line timestamp of 1 s; two steps 10 ms apart.
  """

  def event(metadata_id, start_us, duration_us, stats=""):
    return (
      f"events {{ metadata_id: {metadata_id} offset_ps: {int(start_us * 1e6)} "
      f"duration_ps: {int(duration_us * 1e6)} {stats} }}"
    )

  conv_stat = 'stats { metadata_id: 1 str_value: "cudnn-conv.1" }'
  compute = []
  for step_start in (0, 10000):
    compute += [
      event(1, step_start, 4000, conv_stat),
      event(2, step_start + 4000, 500),
      event(3, step_start + 5000, 1000),
      event(4, step_start + 6000, 500),
    ]
  memcpy = event(5, 3000, 2000, 'stats { metadata_id: 2 str_value: "kind_src:device kind_dst:device size:64" }')
  # A whole-graph record over the second step's kernels: reported apart, never added to them.
  graph = event(7, 10000, 6500, "stats { metadata_id: 3 uint64_value: 5 }")
  return f"""
planes {{
  id: {plane_id} name: "{name}"
  lines {{ id: 7 name: "Stream #7(Kernel,CudaGraph)" timestamp_ns: 1000000000 {" ".join(compute)} {graph} }}
  lines {{ id: 9 name: "Stream #9(MemcpyD2D)" timestamp_ns: 1000000000 {memcpy} }}
  lines {{ id: 99 name: "CUPTI overhead" timestamp_ns: 1000000000 {event(6, 20000, 10000)} }}
  event_metadata {{ key: 1 value {{ id: 1 name: "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc" }} }}
  event_metadata {{ key: 2 value {{ id: 2 name: "void cudnn::engines_precompiled::nchwToNhwcKernel<float>(int)" }} }}
  event_metadata {{ key: 3 value {{ id: 3 name: "input_reduce_fusion" }} }}
  event_metadata {{ key: 4 value {{ id: 4 name: "loop_add_fusion" }} }}
  event_metadata {{ key: 5 value {{ id: 5 name: "MemcpyD2D" }} }}
  event_metadata {{ key: 6 value {{ id: 6 name: "CUPTI overhead" }} }}
  event_metadata {{ key: 7 value {{ id: 7 name: "CudaGraphExec" }} }}
  stat_metadata {{ key: 1 value {{ id: 1 name: "hlo_op" }} }}
  stat_metadata {{ key: 2 value {{ id: 2 name: "memcpy_details" }} }}
  stat_metadata {{ key: 3 value {{ id: 3 name: "cuda_graph_exec_id" }} }}
}}"""


HOST_PLANE = """
planes {
  id: 3 name: "/host:CPU"
  lines { id: 1 name: "python" timestamp_ns: 1000000000
    events { metadata_id: 1 offset_ps: 0 duration_ps: 1000000 stats { metadata_id: 1 int64_value: 0 } }
    events { metadata_id: 1 offset_ps: 10000000000 duration_ps: 1000000 stats { metadata_id: 1 int64_value: 1 } }
    events { metadata_id: 2 offset_ps: 0 duration_ps: 90000000000 stats { metadata_id: 2 str_value: "fusion.9" } }
  }
  event_metadata { key: 1 value { id: 1 name: "train" } }
  event_metadata { key: 2 value { id: 2 name: "host thunk that must not count on a GPU trace" } }
  stat_metadata { key: 1 value { id: 1 name: "step_num" } }
  stat_metadata { key: 2 value { id: 2 name: "hlo_op" } }
}"""


def write_trace(root, text: str, run: str = "2026_01_01_00_00_00") -> str:
  """An XSpace text proto written where jax.profiler.trace would put it (plugins/profile/<time>/<host>)."""
  from jax.profiler import ProfileData

  folder = root / "plugins" / "profile" / run
  folder.mkdir(parents=True)
  (folder / "host.xplane.pb").write_bytes(ProfileData.text_proto_to_serialized_xspace(text))
  return str(root)


@pytest.fixture(scope="module")
def gpu_trace_dir(tmp_path_factory):
  """Two GPUs with the same work."""
  return write_trace(
    tmp_path_factory.mktemp("gpu_trace"), _gpu_plane(1, "/device:GPU:0") + _gpu_plane(2, "/device:GPU:1") + HOST_PLANE
  )


def test_gpu_trace_figures_match_the_hand_computed_ones(gpu_trace_dir):
  s = trace_summary.summarize(gpu_trace_dir)
  assert (s["num_devices"], s["steps"], s["steps_source"]) == (2, 2, "StepTraceAnnotation")
  assert s["source"].startswith("device planes") and s["stats_seen"] == ["hlo_op", "memcpy_details"]
  ms = {c["category"]: c["ms_per_step"] for c in s["categories"]}
  # Per step and device: conv 4 ms, NCHW->NHWC 0.5 ms, reduce 1 ms, add 0.5 ms; one 2 ms memcpy over two steps.
  assert ms == pytest.approx({"convolution": 4.0, "layout": 0.5, "reduction": 1.0, "elementwise": 0.5, "memcpy": 1.0})
  assert [c["category"] for c in s["categories"]][0] == "convolution"
  assert s["device_op_ms_per_step"] == pytest.approx(7.0)
  # The memcpy overlaps the conv; busy = [0, 6.5] + [10, 14.5] + [15, 16.5] ms; span = 16.5 ms over two steps.
  assert s["device_busy_ms_per_step"] == pytest.approx(6.25)
  assert s["device_span_ms_per_step"] == pytest.approx(8.25)
  assert s["idle_percent"] == pytest.approx(100 * (1 - 6.25 / 8.25))
  assert s["whole_cuda_graph_ms_per_step"] == pytest.approx(3.25)
  assert "whole CUDA graph executions" in trace_summary.format_summary(s)
  assert sum(c["percent"] for c in s["categories"]) == pytest.approx(100)
  conv = s["top"][0]
  assert (conv["category"], conv["hlo_op"], conv["calls_per_step"]) == ("convolution", "cudnn-conv.1", 1.0)
  assert conv["percent"] == pytest.approx(100 * 4 / 7)
  layout = next(op for op in s["top"] if op["category"] == "layout")
  assert layout["short_name"] == "cudnn::engines_precompiled::nchwToNhwcKernel<float>"
  # Given steps win over the annotations.
  assert trace_summary.summarize(gpu_trace_dir, steps=1)["device_op_ms_per_step"] == pytest.approx(14.0)


def test_unknown_stream_line_names_still_count_and_the_newest_run_is_read(tmp_path):
  """A device plane without `Stream #` lines: every line but overhead/counter/derived ones holds kernels. An older
  run in the same folder is ignored."""
  plane = """
planes {
  id: 1 name: "/device:GPU:0"
  lines { id: 3 name: "GPU queue 3" timestamp_ns: 0
    events { metadata_id: 1 offset_ps: 0 duration_ps: 2000000000 } }
  lines { id: 4 name: "CUPTI overhead" timestamp_ns: 0
    events { metadata_id: 2 offset_ps: 0 duration_ps: 9000000000 } }
  lines { id: 5 name: "XLA Modules" timestamp_ns: 0
    events { metadata_id: 2 offset_ps: 0 duration_ps: 9000000000 } }
  event_metadata { key: 1 value { id: 1 name: "loop_transpose_fusion" } }
  event_metadata { key: 2 value { id: 2 name: "jit_train_step" } }
}"""
  write_trace(tmp_path, plane.replace("loop_transpose_fusion", "old_run_kernel"), run="2026_01_01_00_00_00")
  write_trace(tmp_path, plane, run="2026_01_01_00_05_00")
  s = trace_summary.summarize(str(tmp_path), steps=2)
  assert s["steps_source"] == "given" and len(s["trace_files"]) == 1 and "00_05_00" in s["trace_files"][0]
  assert s["categories"] == [
    {"category": "layout", "ms_per_step": pytest.approx(1.0), "percent": 100.0, "kernels_per_step": 0.5}
  ]


def test_a_gpu_plane_without_kernels_is_an_error_not_a_host_fallback(tmp_path):
  write_trace(tmp_path, 'planes { id: 1 name: "/device:GPU:0" }\n' + HOST_PLANE)
  with pytest.raises(DataError, match="no device events.*/device:GPU:0.*CUPTI"):
    trace_summary.summarize(str(tmp_path))


def conv_then_reduce(x, w):
  """A convolution, then batch-norm-like statistics and a loss-like sum."""
  y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  mean = y.mean(axis=(0, 1, 2))
  var = y.var(axis=(0, 1, 2))
  return jnp.sum(jax.nn.relu((y - mean) * jax.lax.rsqrt(var + 1e-5)))


@pytest.fixture(scope="module")
def cpu_trace(tmp_path_factory):
  """A real trace of 3 steps of a jitted conv + reductions on CPU device 0, and the wall seconds of the steps."""
  root = str(tmp_path_factory.mktemp("cpu_trace"))
  step = jax.jit(conv_then_reduce)
  # The convolution (0.6 GFLOP) outweighs the reductions over its 1M outputs some 100x, so that it is the costliest
  # event however a loaded machine delays single ops (at 38 MFLOP a reduction overtook it under CI's load).
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 64))
  w = jax.random.normal(jax.random.key(1), (3, 3, 64, 128))
  jax.block_until_ready(step(x, w))  # compile outside the trace
  with jax.profiler.trace(root):
    start = time.perf_counter()
    for i in range(3):
      with jax.profiler.StepTraceAnnotation("step", step_num=i):
        out = step(x, w)
      jax.block_until_ready(out)
    wall_s = time.perf_counter() - start
  return root, wall_s, step.lower(x, w).compile().as_text()


def entry_instructions(hlo_text: str) -> dict[str, str]:
  """{instruction name: its jax op_name} for the ENTRY computation of compiled HLO text."""
  entry = hlo_text[hlo_text.index("\nENTRY") :]
  out = {}
  for match in re.finditer(r"^\s+(?:ROOT )?%(\S+) = .*?op_name=\"([^\"]*)\"", entry, re.MULTILINE):
    out[match.group(1)] = match.group(2)
  return out


def test_cpu_trace_finds_the_thunks_and_the_convolution(cpu_trace):
  root, wall_s, hlo_text = cpu_trace
  s = trace_summary.summarize(root)
  assert s["source"].startswith("host CPU thunk executions")
  assert (s["num_devices"], s["steps"], s["steps_source"]) == (1, 3, "StepTraceAnnotation")
  assert {"hlo_op", "hlo_module", "device_ordinal"} <= set(s["stats_seen"])
  assert 0 < s["device_busy_ms_per_step"] <= s["device_span_ms_per_step"]
  # Three steps of device work fit in the wall time measured around them.
  assert s["device_span_ms_per_step"] * 3 <= wall_s * 1e3
  assert s["device_op_ms_per_step"] * 3 <= wall_s * 1e3
  assert sum(c["percent"] for c in s["categories"]) == pytest.approx(100)
  # What the CPU trace exposes: each event is one instruction of the compiled program's ENTRY computation, named
  # as in the HLO text. The convolution is the costliest; XLA:CPU may run it inside a YNNPACK custom fusion
  # (`ynn_fusion.N`), whose name hides it, so it is "other" then, and "convolution" when it runs on its own.
  instructions = entry_instructions(hlo_text)
  assert {op["name"] for op in s["top"]} <= set(instructions)
  biggest = s["top"][0]
  assert instructions[biggest["name"]].endswith("conv_general_dilated")
  assert biggest["category"] == ("other" if biggest["name"].startswith("ynn_fusion") else "convolution")


def test_cpu_trace_total_equals_a_direct_sum_of_the_hlo_op_events(cpu_trace):
  """Against a plain loop over ProfileData: every event with an hlo_op stat, summed and divided by 3 steps."""
  from jax.profiler import ProfileData

  root, _, _ = cpu_trace
  total_ns = 0.0
  for path in trace_summary.find_trace_files(root):
    for plane in ProfileData.from_file(path).planes:
      for line in plane.lines:
        total_ns += sum(e.duration_ns for e in line.events if any(k == "hlo_op" for k, _ in e.stats))
  assert total_ns > 0
  assert trace_summary.summarize(root)["device_op_ms_per_step"] == pytest.approx(total_ns / 3 / 1e6)


def test_cli_prints_the_table_and_writes_the_same_numbers(python, cpu_trace, tmp_path):
  root, _, _ = cpu_trace
  out = tmp_path / "summary.json"
  proc = subprocess.run(
    [python, "-m", "jaxcls.trace_summary", root, "--top", "2", "--json", str(out)],
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = proc.stdout
  assert "category" in text and "% idle" in text and "top 2 kernels/ops" in text
  saved = json.loads(out.read_text())
  assert len(saved["top"]) == 2 and saved["steps"] == 3
  for c in saved["categories"]:
    assert f"{c['category']:<12} {c['ms_per_step']:>9.3f} {c['percent']:>8.1f}%" in text
  assert saved["top"][0]["name"] in text


def test_the_command_reports_a_missing_trace_dir_in_one_line(python, tmp_path):
  proc = subprocess.run(
    [python, "-m", "jaxcls.trace_summary", str(tmp_path / "nope")],
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2 and proc.stderr.startswith("jaxcls: error: Trace directory"), proc.stderr
  assert len(proc.stderr.splitlines()) == 1 and proc.stdout == ""


def test_missing_or_empty_trace_dirs_fail_with_one_clear_error(tmp_path):
  with pytest.raises(DataError, match="Trace directory"):
    trace_summary.summarize(str(tmp_path / "nope"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(DataError, match="No \\*.xplane.pb"):
    trace_summary.summarize(str(tmp_path / "empty"))
  with pytest.raises(ConfigError, match="--steps=0"):
    trace_summary.summarize(str(tmp_path / "empty"), steps=0)
  with pytest.raises(ConfigError, match="--top=-1"):
    trace_summary.summarize(str(tmp_path / "empty"), top=-1)
