#!/usr/bin/env bash
# One-shot GPU benchmark suite for issue 7: jaxcls vs PyTorch training throughput, where jaxcls's step time goes,
# compile times, and the Fashion-MNIST speedrun, in under 9 minutes on one H200, ending with one table.
#
# 1. On a machine with internet (PyPI) and the Fashion-MNIST idx files (Debian: dataset-fashion-mnist):
#      bash benchmarks/gpu_suite.sh prepare
#    copies the four idx.gz files (~31 MB) and a pure-Python ml-collections wheel (jaxcls.main needs it; the GPU
#    machine has jax, flax, optax, orbax, torch but no ml_collections, TensorFlow or clu) into build/gpu_carry/.
# 2. On the GPU machine, from the repository root, carrying build/gpu_carry along (it is git-ignored):
#      bash benchmarks/gpu_suite.sh
#    Every step writes its JSON and log under build/gpu_results. At the end that folder is packed into
#    $OUT/gpu_results.tar.gz beside $OUT/summary.txt, when OUT is set (the device tool brings back at most 8 files).
#    Each step has its own time limit and the steps run in order of importance: once SUITE_BUDGET_S (default 500 s)
#    is spent, the rest are skipped, so a partial run still returns its JSON files and the table.
#    Profiler traces stay in build/traces (too big to bring back); their summaries are in the JSON files and logs.
#
# Environment: PYTHON (default python3), TORCH_PYTHON (default $PYTHON), OUT, PEAK_TFLOPS (default 989: H100/H200
# dense bf16), PEAK_GBPS (default 4300: an H200's measured copy rate), SUITE_BUDGET_S. SUITE_SMOKE=1 runs every step
# at toy sizes (CPU-friendly, torch eager) to check the script itself before spending device time on it.
set -u -o pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CARRY="$ROOT/build/gpu_carry"
cd "$ROOT"

if [[ "${1:-run}" == "prepare" ]]; then
  set -e
  mkdir -p "$CARRY/fashion-mnist" "$CARRY/wheels"
  cp /usr/share/datasets/fashion-mnist/*-ubyte.gz "$CARRY/fashion-mnist/"
  "${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: -d "$CARRY/wheels" ml-collections
  du -sh "$CARRY"
  exit 0
fi

PY=${PYTHON:-python3}
PACK=${OUT:-}                # where the packed results go (the device tool's $OUT), if anywhere
OUT=$ROOT/build/gpu_results  # from here on, the suite's own results folder
TRACES=$ROOT/build/traces
PEAK=${PEAK_TFLOPS:-989}
PEAK_GBPS=${PEAK_GBPS:-4300}
BUDGET=${SUITE_BUDGET_S:-500}
rm -rf "$OUT" "$TRACES"
mkdir -p "$OUT" "$TRACES"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=2
START=$SECONDS
: > "$OUT/steps.txt"

# step NAME TIMEOUT_S ENV_ASSIGNMENTS... -- COMMAND...: runs COMMAND under `timeout`, logs it, records the outcome.
step() {
  local name=$1 limit=$2; shift 2
  local envs=()
  while [[ $1 != "--" ]]; do envs+=("$1"); shift; done; shift
  local left=$((BUDGET - (SECONDS - START)))
  if (( left < 30 )); then
    echo "$name: skipped (suite budget spent)" | tee -a "$OUT/steps.txt"; return
  fi
  limit=$((limit * LIMIT_SCALE))
  (( limit > left )) && limit=$left
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): ${envs[*]:-} $*"
  env ${envs[@]+"${envs[@]}"} timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc, $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
  tail -n 4 "$OUT/$name.log"
}

JAX=("$PY" -m jaxcls.benchmark --peak_tflops "$PEAK" --peak_gbps "$PEAK_GBPS")
TORCH=("${TORCH_PYTHON:-$PY}" benchmarks/torch_peer.py --peak_tflops "$PEAK")
R50=(--model resnet50 --batch_size 256 --image_size 224 --dtype bfloat16)
R18=(--model resnet18 --batch_size 512 --image_size 32 --num_classes 10 --dtype bfloat16)
# Variants time fewer steps: they are compared with the base runs, and compilation is most of their cost.
SHORT=(--warmup 2 --steps 10 --repeats 3)
B512=512 B1024=1024 B2048=2048 COMPILE=--compile FMNIST=() LIMIT_SCALE=1
if [[ "${SUITE_SMOKE:-0}" == 1 ]]; then  # toy sizes: checks the plumbing, measures nothing worth keeping
  TINY=(--warmup 0 --steps 1 --repeats 1 --image_size 32 --num_classes 10 --dtype float32)
  JAX+=("${TINY[@]}" --model_arg width=8) TORCH+=("${TINY[@]}")
  R50=(--model resnet18 --batch_size 8) R18=(--model resnet18 --batch_size 8) SHORT=(--steps 1)
  B512=8 B1024=16 B2048=16 COMPILE=--no-compile LIMIT_SCALE=5
  FMNIST=(--config.num_epochs=0 --config.num_train_steps=2 --config.optimizer.warmup_steps=1 --config.model.width=8
          --config.batch_size=16 --config.dtype=float32)
fi

{ "$PY" - <<'EOF'
import importlib.metadata as md
import platform
import jax
print("python", platform.python_version(), "jax", jax.__version__, jax.devices())
for name in ("jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections"):
  try:
    print(name, md.version(name))
  except md.PackageNotFoundError:
    print(name, "not installed")
EOF
  "${TORCH_PYTHON:-$PY}" - <<'EOF'
try:
  import torch
  print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no cuda")
except ImportError as e:
  print("torch missing:", e)
EOF
} 2>&1 | tee "$OUT/environment.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv >> "$OUT/environment.txt" 2>&1
if ! "$PY" -c "import ml_collections" 2>/dev/null; then  # into a side folder: the machine's own venv stays as it is
  if "$PY" -m pip install --no-deps --no-index -q --target /tmp/jaxcls_site "$CARRY"/wheels/ml_collections-*.whl \
      >> "$OUT/environment.txt" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:/tmp/jaxcls_site"
  else
    echo "ml_collections not installable: the speedrun step will fail (run 'prepare' first)" \
      | tee -a "$OUT/environment.txt"
  fi
fi

# In order of importance. The first jaxcls run also times the train step recompiled from the persistent cache.
CACHE=(--compilation_cache_dir "$ROOT/build/jax_cache")
step r50_jax 240 -- "${JAX[@]}" "${R50[@]}" --modes train,infer "${CACHE[@]}" --json "$OUT/r50_jax.json"
step r50_torch_compile 240 -- "${TORCH[@]}" "${R50[@]}" $COMPILE --json "$OUT/r50_torch_compile.json"
step r50_torch_eager 90 -- "${TORCH[@]}" "${R50[@]}" --no-compile --json "$OUT/r50_torch_eager.json"
step r18_jax 120 -- "${JAX[@]}" "${R18[@]}" --model_arg stem=small --modes train "${CACHE[@]}" \
  --json "$OUT/r18_jax.json"
# Its workdir stays off the results (the checkpoint is ~130 MB); the report and metrics are copied there.
rm -rf "$ROOT/build/fmnist_speedrun"
step fmnist_speedrun 180 -- "$PY" -m jaxcls.main --config configs/fashion_mnist_speedrun.py \
  --workdir "$ROOT/build/fmnist_speedrun" --config.dataset.path="$CARRY/fashion-mnist" ${FMNIST[@]+"${FMNIST[@]}"}
mkdir -p "$OUT/fmnist_speedrun" "$OUT/profiles"
cp "$ROOT"/build/fmnist_speedrun/{report.json,metrics.jsonl,config.json} "$OUT/fmnist_speedrun/" 2>/dev/null
# Where the time goes: the same two runs again, their steps loaded from the persistent cache (same flags, so the
# same programs), with a trace of 5 steps each. Separate processes, so a profiler failure cannot cost a figure.
step r50_jax_profile 120 -- "${JAX[@]}" "${R50[@]}" --modes train "${CACHE[@]}" --profile_dir "$TRACES/r50_jax" \
  --json "$OUT/profiles/r50_jax_profile.json"
step r18_jax_profile 90 -- "${JAX[@]}" "${R18[@]}" --model_arg stem=small --modes train "${CACHE[@]}" \
  --profile_dir "$TRACES/r18_jax" --json "$OUT/profiles/r18_jax_profile.json"
# Variants: each changes one thing against r50_jax / r18_jax (predictions and outcomes go in RESULTS.md).
step r50_jax_s2d 120 -- "${JAX[@]}" "${R50[@]}" "${SHORT[@]}" --model_arg space_to_depth_stem=True --modes train \
  --label "jaxcls resnet50 space-to-depth stem" --json "$OUT/r50_jax_s2d.json"
step r50_jax_bn16 120 -- "${JAX[@]}" "${R50[@]}" "${SHORT[@]}" --model_arg norm_float32_reductions=False \
  --modes train --label "jaxcls resnet50 bf16 BN reductions" --json "$OUT/r50_jax_bn16.json"
step r50_jax_b512 150 -- "${JAX[@]}" "${R50[@]}" "${SHORT[@]}" --batch_size $B512 --modes train \
  --label "jaxcls resnet50 b512" --json "$OUT/r50_jax_b512.json"
step r18_jax_b1024 90 -- "${JAX[@]}" "${R18[@]}" "${SHORT[@]}" --model_arg stem=small --batch_size $B1024 \
  --modes train --label "jaxcls resnet18 small-stem b1024" --json "$OUT/r18_jax_b1024.json"
step r18_jax_b2048 90 -- "${JAX[@]}" "${R18[@]}" "${SHORT[@]}" --model_arg stem=small --batch_size $B2048 \
  --modes train --label "jaxcls resnet18 small-stem b2048" --json "$OUT/r18_jax_b2048.json"
step r50_jax_lhs 120 XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true -- "${JAX[@]}" "${R50[@]}" \
  "${SHORT[@]}" --modes train --label "jaxcls resnet50 +latency-hiding sched" --json "$OUT/r50_jax_lhs.json"
step r50_jax_autotune0 120 XLA_FLAGS=--xla_gpu_autotune_level=0 -- "${JAX[@]}" "${R50[@]}" "${SHORT[@]}" \
  --modes train --label "jaxcls resnet50 autotune_level=0" --json "$OUT/r50_jax_autotune0.json"
step r18_torch_compile 150 -- "${TORCH[@]}" "${R18[@]}" --stem small $COMPILE --json "$OUT/r18_torch_compile.json"

{
  echo "GPU suite, $(date -u +%FT%TZ), $((SECONDS - START)) s in all"
  cat "$OUT/steps.txt"
  shopt -s nullglob
  jsons=("$OUT"/*.json)
  (( ${#jsons[@]} )) && "$PY" -m jaxcls.benchmark --summarize "${jsons[@]}"
  if [[ -f "$OUT/fmnist_speedrun/report.json" ]]; then
    "$PY" - "$OUT" <<'EOF'
import json, re, sys
out = sys.argv[1]
report = json.load(open(f"{out}/fmnist_speedrun/report.json"))
wall = re.search(r"fmnist_speedrun: rc=\d+, (\d+) s", open(f"{out}/steps.txt").read())
print(f"Fashion-MNIST speedrun: test accuracy {report['accuracy']:.4f} at step {report['step']}, "
      f"{wall.group(1) if wall else '?'} s wall time for the whole command (process start, compile, train, eval)")
EOF
  fi
  for name in r50_jax_profile r18_jax_profile; do  # where the step time goes, from the traced steps
    [[ -f "$OUT/$name.log" ]] && awk '/^profile of [0-9]+ train steps/{p=1; print; next} p && /^(profile of|run )/{exit} p' "$OUT/$name.log"
  done
} 2>&1 | tee "$OUT/summary.txt"

if [[ -n "$PACK" ]]; then
  mkdir -p "$PACK"
  tar -czf "$PACK/gpu_results.tar.gz" -C "$ROOT/build" gpu_results
  cp "$OUT/summary.txt" "$PACK/summary.txt"
  ls -l "$PACK"
fi
