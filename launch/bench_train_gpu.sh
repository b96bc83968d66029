#!/usr/bin/env bash
# Training throughput and MFU of both stages at 512x512 (`base` and `large`) on one GPU, with
# each lever on and off, for docs/benchmarks.md ("Training throughput").
#
#   launch/bench_train_gpu.sh OUT_DIR
#
# Runs `vasa-jax bench-train` once per variant and lever group (one JSON and log each under
# OUT_DIR), most important first, each bounded by BENCH_TIMEOUT seconds (default 420):
#   dtype   float32 vs bfloat16 compute (params stay float32), both stages
#   remat   stage 2 remat policy none / dots / full (bfloat16)
#   scan    stage 2 scanned vs unrolled layers (bfloat16)
#   batch   stage 1 at 8 / 16 / 32 and stage 2 at 64 / 256 / 512 global batch (bfloat16)
# MFU is against the dense bf16 peak of the device (vasa_jax/chips.py: 989 TFLOP/s for an H100
# SXM or an H200); FLOPs come from XLA:CPU's cost analysis of the same step.
# Compilations are shared between runs through JAX's persistent cache.
set -uo pipefail
if [ $# -lt 1 ]; then
  sed -n 2,15p "$0"; exit 1
fi
out=$1
vasa=${VASA_JAX:-vasa-jax}
limit=${BENCH_TIMEOUT:-420}
steps=${BENCH_STEPS:-10}
mkdir -p "$out"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/vasa_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"

run() {  # NAME ARGS...
  local name=$1; shift
  echo "=== $name: $*"
  timeout "$limit" $vasa bench-train --steps "$steps" --out "$out/$name.json" "$@" 2>&1 \
    | tee "$out/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]}"
}

bf16=train.compute_dtype=bfloat16
for variant in base large; do
  cfg=configs/demo.py:$variant
  run "$variant-dtype" --config "$cfg" --sweep "" "$bf16"
  run "$variant-remat" --config "$cfg" --stages motion \
    --sweep "$bf16" "$bf16,model.remat_policy=dots" "$bf16,model.remat_policy=full"
  run "$variant-scan" --config "$cfg" --stages motion \
    --sweep "$bf16,model.scan_layers=True" "$bf16,model.scan_layers=False"
  for b in 8,256 32,512; do
    run "$variant-batch-${b/,/-}" --config "$cfg" --batch "$b" --sweep "$bf16"
  done
done
