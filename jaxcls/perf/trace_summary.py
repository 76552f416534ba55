"""Where a step's device time goes: a plain-text breakdown of a JAX profiler trace, without TensorBoard or xprof.

  python -m jaxcls.trace_summary TRACE_DIR [--steps N] [--top 20] [--json out.json]

TRACE_DIR is what `jax.profiler.trace(TRACE_DIR)` wrote (the newest `*.xplane.pb` run below it is read with
`jax.profiler.ProfileData`). Device work is found where each backend records it:
  - GPU: planes `/device:GPU:N`, lines `Stream #S(...)`: one event per CUDA kernel, memcpy or memset (CUPTI), with
    stats such as `hlo_op`, `hlo_module`, `kernel_details`, `memcpy_details`.
  - CPU: the `/host:CPU` plane; XLA's thunk executions are the events with an `hlo_op` stat (one per HLO op or
    fusion, e.g. `conv_general_dilated.1`, `broadcast_multiply_fusion`) on the client and Eigen threads, with
    `device_ordinal` naming the (virtual) device.
Each event goes to one category by its kernel name, then its `hlo_op` and `hlo_category` stats (`categorize`);
anything unmatched is "other" and still appears in the top list, so nothing is hidden. Times are per profiled step
and per device. Device-busy time (the union of event intervals) against the span from the first to the last device
event shows the idle gaps: kernel-launch and host overhead.
"""

import collections
import glob
import os
import re
from collections.abc import Iterable
from typing import Any

from jaxcls.core.errors import ConfigError, DataError

CATEGORIES = ("convolution", "matmul", "reduction", "elementwise", "layout", "pooling", "collective", "memcpy", "other")

# First match wins. Library kernels carry their purpose in the name (cuDNN's `sm90_xmma_fprop_implicit_gemm_...`,
# cuBLASLt's `nvjet_tst_...`); XLA names its fusions `<loop|input|output>_<hero ops>_fusion` (RenameFusions), so a
# reduce hero reads as `input_reduce_fusion` and a transpose as `loop_transpose_fusion`. Collectives come first
# (`reduce_scatter` is not a reduction), cuDNN's own layout and batch-norm kernels before convolution, convolution
# before matmul (cuDNN runs convolutions as implicit GEMMs), and "conv" never matches "convert".
_NAME_RULES = tuple(
  (category, re.compile(pattern))
  for category, pattern in (
    ("collective", r"nccl|all[-_]?reduce|all[-_]?gather|reduce[-_]?scatter|all[-_]?to[-_]?all|collective"),
    ("memcpy", r"memcpy|memset"),
    ("layout", r"nchw_?to_?nhwc|nhwc_?to_?nchw"),
    ("elementwise", r"bn_fw_inf"),
    ("reduction", r"(?<![a-z])bn_(fw|bw)|batch_?norm"),
    ("pooling", r"reduce[-_]?window|select[-_]?and[-_]?scatter|pool"),
    ("convolution", r"conv(?!ert)|fprop|dgrad|wgrad|winograd|implicit_?gemm|cudnn"),
    ("matmul", r"gemm|gemv|cublas|nvjet|matmul|cutlass|(?<![a-z])dot(?![a-z])|s16816|hmma|wmma"),
    ("reduction", r"reduce|reduction|argmax|argmin"),
    (
      "layout",
      r"transpose|(?<![a-z])copy|bitcast[-_]?convert|(?<![a-z])pad(?![a-z])|concatenate|slice|reverse|"
      r"gather|scatter",
    ),
  )
)
# Single elementwise HLO opcodes (as they appear in op and fusion names, '-' written '_').
_ELEMENTWISE_OPS = frozenset(
  (
    "abs add and atan2 bitcast broadcast cbrt ceil clamp compare complex constant convert cosine divide erf exp "
    "exponential expm1 floor imag iota is_finite log log1p logistic map maximum minimum multiply negate not or popcnt "
    "power real remainder reshape round round_nearest_afz round_nearest_even rsqrt select shift_left "
    "shift_right_arithmetic shift_right_logical sign sine sqrt subtract tan tanh xor"
  ).split()
)
_FUSION_KIND_WORDS = frozenset(("loop", "input", "output", "wrapped", "fusion", "fused"))
# xprof's `hlo_category` values that the name rules do not already cover.
_HLO_CATEGORIES = {
  "data formatting": "layout",
  "non-fusion elementwise": "elementwise",
  "loop fusion": "elementwise",
  "input fusion": "reduction",
}
_DEVICE_PLANE = re.compile(r"^/device:(GPU|TPU):\d+")
_STREAM_LINE = re.compile(r"^Stream #\d+")
# Lines of a device plane that hold no kernels, or hold them again under another name (xprof's derived lines).
_NOT_KERNEL_LINE = re.compile(
  r"overhead|counter|^XLA Modules$|^Steps$|Framework|TensorFlow|Source|Launch Stats", re.IGNORECASE
)


def _elementwise_by_name(name: str) -> bool:
  """`loop_add_multiply_fusion_3`, `wrapped_convert`, `fusion.12`, `add.4`: made only of elementwise ops."""
  words = [w for w in re.split(r"[^a-z0-9]+", name) if w and not w.isdigit()]
  if not words:
    return False
  if words[0] in ("loop", "wrapped"):
    return True
  joined = "_".join(w for w in words if w not in _FUSION_KIND_WORDS)
  if not joined:  # plain `fusion.N`: an unrenamed loop fusion
    return words[-1] == "fusion"
  return all(part in _ELEMENTWISE_OPS for part in _split_ops(joined))


def _split_ops(joined: str) -> list[str]:
  """'shift_left_add' -> ['shift_left', 'add']: greedy longest match of known op names (which contain '_')."""
  parts, rest = [], joined.split("_")
  while rest:
    for size in range(min(4, len(rest)), 0, -1):
      candidate = "_".join(rest[:size])
      if candidate in _ELEMENTWISE_OPS or size == 1:
        parts.append(candidate)
        rest = rest[size:]
        break
  return parts


def _by_name(text: str) -> str | None:
  text = text.lower()
  for category, pattern in _NAME_RULES:
    if pattern.search(text):
      return category
  return "elementwise" if _elementwise_by_name(text) else None


def categorize(name: str, stats: dict[str, Any] | None = None) -> str:
  """The category (one of CATEGORIES) of one device event, from its kernel/op name, then its `hlo_op` and
  `hlo_category` stats; memcpy/memset events are known by their CUPTI detail stats whatever their name."""
  stats = stats or {}
  if "memcpy_details" in stats or "memset_details" in stats:
    return "memcpy"
  for text in (name, stats.get("hlo_op"), stats.get("hlo_category")):
    if text:
      category = _by_name(str(text)) or _HLO_CATEGORIES.get(str(text).lower())
      if category:
        return category
  return "other"


def find_trace_files(trace_dir: str) -> list[str]:
  """The `*.xplane.pb` files of the newest run under `trace_dir` (jax writes plugins/profile/<time>/<host>...)."""
  if not os.path.isdir(trace_dir):
    raise DataError(f"Trace directory {trace_dir!r} does not exist; pass the folder given to jax.profiler.trace.")
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not files:
    raise DataError(f"No *.xplane.pb under {trace_dir!r}; capture one with jax.profiler.trace({trace_dir!r}).")
  newest_run = max(os.path.dirname(f) for f in files)  # run folders are named by their start time
  return sorted(f for f in files if os.path.dirname(f) == newest_run)


class _Event(collections.namedtuple("_Event", "device line start_ns end_ns name stats")):
  """One device execution: a kernel, memcpy or memset on GPU, an XLA thunk on CPU."""


def _stats(event) -> dict[str, Any]:
  return {k: v for k, v in event.stats if k is not None}


def _is_whole_graph(event: _Event) -> bool:
  """A CUDA graph execution recorded as one activity (graph-level tracing), as opposed to its kernels."""
  return "cuda_graph_exec_id" in event.stats or event.name.startswith("CudaGraph")


def _device_events(profile) -> tuple[str, list[_Event], list[str]]:
  """(source, events, plane names): GPU stream events if the trace has device planes, else CPU thunk events."""
  events, planes = [], []
  for plane in profile.planes:
    if not _DEVICE_PLANE.match(plane.name):
      continue
    planes.append(plane.name)
    all_lines = list(plane.lines)
    lines = (
      [line for line in all_lines if _STREAM_LINE.match(line.name)]
      or [line for line in all_lines if line.name == "XLA Ops"]  # TPU-like: XLA ops on a derived line
      or [line for line in all_lines if not _NOT_KERNEL_LINE.search(line.name)]
    )  # unknown line names
    for line in lines:
      for e in line.events:
        if e.duration_ns > 0:
          events.append(_Event(plane.name, line.name, e.start_ns, e.end_ns, e.name, _stats(e)))
  if planes:
    return "device planes (" + ", ".join(planes) + ")", events, planes
  for plane in profile.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    for line in plane.lines:
      for e in line.events:
        if e.duration_ns <= 0:
          continue
        stats = _stats(e)
        if "hlo_op" in stats:
          device = f"cpu:{stats.get('device_ordinal', 0)}"
          events.append(_Event(device, line.name, e.start_ns, e.end_ns, e.name, stats))
    planes.append(plane.name)
  return "host CPU thunk executions (events with an hlo_op stat)", _drop_enclosing(events), planes


def _drop_enclosing(events: list[_Event]) -> list[_Event]:
  """Drops events that enclose a later one on the same thread (a while/call thunk around its body), so no time
  is counted twice."""
  by_line = collections.defaultdict(list)
  for e in events:
    by_line[(e.device, e.line)].append(e)
  kept = []
  for line_events in by_line.values():
    line_events.sort(key=lambda e: (e.start_ns, -e.end_ns))
    for i, e in enumerate(line_events):
      following = line_events[i + 1] if i + 1 < len(line_events) else None
      if following is None or following.start_ns >= e.end_ns:
        kept.append(e)
  return kept


def _count_steps(profile) -> int:
  """Distinct `step_num`s of StepTraceAnnotation events on the host planes (0 when there are none)."""
  steps = set()
  for plane in profile.planes:
    if not plane.name.startswith("/host:"):
      continue
    for line in plane.lines:
      for e in line.events:
        for key, value in e.stats:
          if key == "step_num":
            steps.add((e.name, str(value)))
  return len(steps)


def _union_ns(intervals: Iterable[tuple[float, float]]) -> float:
  total, current_start, current_end = 0.0, None, None
  for start, end in sorted(intervals):
    if current_end is None or start > current_end:
      if current_end is not None:
        total += current_end - current_start
      current_start, current_end = start, end
    else:
      current_end = max(current_end, end)
  return total + (current_end - current_start if current_end is not None else 0.0)


def _short_name(name: str) -> str:
  """Kernel names without `void ` and their C++ argument list."""
  name = name.removeprefix("void ")
  depth = 0
  for i, ch in enumerate(name):
    depth += ch == "<"
    depth -= ch == ">"
    if ch == "(" and depth == 0 and i > 0:
      return name[:i]
  return name


def summarize(trace_dir: str, steps: int | None = None, top: int = 20) -> dict[str, Any]:
  """Device time per category and per kernel/op, per step and per device, from the newest trace in `trace_dir`."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top

  if steps is not None and steps < 1:
    raise ConfigError(f"--steps={steps} must be >= 1 (the number of steps the trace covers).")
  if top < 0:
    raise ConfigError(f"--top={top} must be >= 0 (how many kernels/ops to list).")
  files = find_trace_files(trace_dir)
  sources, events, planes, annotated = [], [], [], 0
  for path in files:
    profile = ProfileData.from_file(path)
    source, file_events, file_planes = _device_events(profile)
    sources.append(source)
    events += file_events
    planes += file_planes
    annotated = max(annotated, _count_steps(profile))
  if not events:
    raise DataError(
      f"The trace in {os.path.dirname(files[0])!r} has no device events (planes: "
      f"{', '.join(planes) or 'none'}); profile while the jitted steps run and block on their result "
      "(on GPU the profiler also needs CUPTI, which the jax[cuda] wheels install)."
    )
  # Graph-level records would count their kernels twice: kept apart, reported on their own line.
  graph_events = [e for e in events if _is_whole_graph(e)]
  if len(graph_events) < len(events):
    events = [e for e in events if not _is_whole_graph(e)]
  else:  # graph-level tracing only: the graphs are all there is
    graph_events = []
  if steps is not None:
    num_steps, steps_source = steps, "given"
  elif annotated:
    num_steps, steps_source = annotated, "StepTraceAnnotation"
  else:
    num_steps, steps_source = 1, "assumed (no StepTraceAnnotation; pass --steps)"

  devices = sorted({e.device for e in events})
  scale = 1e-6 / (num_steps * len(devices))  # ns summed over all devices and steps -> ms per step per device
  stats_seen = sorted({k for e in events for k in e.stats if not k.startswith("_")})  # '_'-keys: trace plumbing
  by_category = collections.defaultdict(lambda: [0.0, 0])
  by_name = {}
  for e in events:
    category = categorize(e.name, e.stats)
    duration = e.end_ns - e.start_ns
    by_category[category][0] += duration
    by_category[category][1] += 1
    entry = by_name.setdefault(e.name, {"ns": 0.0, "count": 0, "category": category, "hlo_ops": collections.Counter()})
    entry["ns"] += duration
    entry["count"] += 1
    if e.stats.get("hlo_op") and str(e.stats["hlo_op"]) != e.name:
      entry["hlo_ops"][str(e.stats["hlo_op"])] += duration
  op_ns = sum(ns for ns, _ in by_category.values())
  busy_ns = sum(_union_ns((e.start_ns, e.end_ns) for e in events if e.device == d) for d in devices)
  span_ns = sum(
    max(e.end_ns for e in events if e.device == d) - min(e.start_ns for e in events if e.device == d) for d in devices
  )

  def percent(ns):
    return 100.0 * ns / op_ns

  categories = [
    {
      "category": c,
      "ms_per_step": by_category[c][0] * scale,
      "percent": percent(by_category[c][0]),
      "kernels_per_step": by_category[c][1] / (num_steps * len(devices)),
    }
    for c in sorted(by_category, key=lambda c: -by_category[c][0])
  ]
  ranked = sorted(by_name.items(), key=lambda item: -item[1]["ns"])[:top]
  top_ops = [
    {
      "name": name,
      "short_name": _short_name(name),
      "category": v["category"],
      "ms_per_step": v["ns"] * scale,
      "percent": percent(v["ns"]),
      "calls_per_step": v["count"] / (num_steps * len(devices)),
      "hlo_op": v["hlo_ops"].most_common(1)[0][0] if v["hlo_ops"] else None,
    }
    for name, v in ranked
  ]
  return {
    "trace_files": files,
    "source": "; ".join(sorted(set(sources))),
    "devices": devices,
    "num_devices": len(devices),
    "steps": num_steps,
    "steps_source": steps_source,
    "stats_seen": stats_seen,
    "num_events": len(events),
    "device_op_ms_per_step": op_ns * scale,
    "device_busy_ms_per_step": busy_ns * scale,
    "device_span_ms_per_step": span_ns * scale,
    "idle_percent": 100.0 * (1 - busy_ns / span_ns) if span_ns else 0.0,
    "whole_cuda_graph_ms_per_step": sum(e.end_ns - e.start_ns for e in graph_events) * scale,
    "categories": categories,
    "top": top_ops,
  }


def compact(summary: dict[str, Any], top: int = 10) -> dict[str, Any]:
  """The summary without file paths and with the `top` largest ops: small enough for a benchmark record."""
  keep = (
    "source",
    "num_devices",
    "steps",
    "steps_source",
    "stats_seen",
    "device_op_ms_per_step",
    "device_busy_ms_per_step",
    "device_span_ms_per_step",
    "idle_percent",
    "whole_cuda_graph_ms_per_step",
    "categories",
  )
  out = {k: summary[k] for k in keep}
  out["top"] = [{k: v for k, v in op.items() if k != "name"} for op in summary["top"][:top]]
  return out


def format_summary(summary: dict[str, Any], name_width: int = 70) -> str:
  """The category table, the top ops and the busy/idle line, as plain text."""
  lines = [
    f"trace: {summary['source']}; {summary['num_devices']} device(s); {summary['steps']} step(s) "
    f"({summary['steps_source']}); stats seen: {', '.join(summary['stats_seen']) or 'none'}",
    f"{'category':<12} {'ms/step':>9} {'% device':>9} {'kernels/step':>13}",
  ]
  for c in summary["categories"]:
    lines.append(f"{c['category']:<12} {c['ms_per_step']:>9.3f} {c['percent']:>8.1f}% {c['kernels_per_step']:>13.1f}")
  lines.append(f"{'total':<12} {summary['device_op_ms_per_step']:>9.3f} {100:>8.1f}%")
  lines.append(
    f"device busy {summary['device_busy_ms_per_step']:.3f} ms/step of a "
    f"{summary['device_span_ms_per_step']:.3f} ms/step span from first to last device event: "
    f"{summary['idle_percent']:.1f}% idle (launch / host overhead, gaps between steps)"
  )
  if summary["whole_cuda_graph_ms_per_step"]:
    lines.append(
      f"whole CUDA graph executions (not in the table, their kernels are): "
      f"{summary['whole_cuda_graph_ms_per_step']:.3f} ms/step"
    )
  lines.append(f"top {len(summary['top'])} kernels/ops by time:")
  lines.append(f"{'name':<{name_width}} {'ms/step':>9} {'%':>6} {'calls':>6}  category")
  for op in summary["top"]:
    name = op["short_name"] + (f" [{op['hlo_op']}]" if op.get("hlo_op") else "")
    if len(name) > name_width:
      name = name[: name_width - 3] + "..."
    lines.append(
      f"{name:<{name_width}} {op['ms_per_step']:>9.3f} {op['percent']:>5.1f}% "
      f"{op['calls_per_step']:>6.1f}  {op['category']}"
    )
  return "\n".join(lines)
