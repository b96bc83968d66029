#!/usr/bin/env bash
# Speed of the paper-scale `base` pipeline (512x512, random weights) on one accelerator, with
# each lever on and off, for docs/benchmarks.md.
#
#   launch/bench_gpu.sh OUT_DIR [SECONDS]
#
# Runs `vasa-jax bench` several times (one JSON and log each under OUT_DIR), most important
# first, each bounded by BENCH_TIMEOUT seconds (default 240) so one stuck run cannot eat the rest:
#   fast    bfloat16, 10 steps, 5 frames per decoder call, short first window of 1 frame
#   paper   the same with the paper's 50 steps
#   batchW  one decoder call per window (the render-batch lever)
#   fp32    float32 compute (the bfloat16 lever)
# Compilations are shared between runs through JAX's persistent cache (JAX_COMPILATION_CACHE_DIR,
# default /tmp/vasa_jax_cache), so only the first run of each dtype pays full compile times.
# BENCH_CONFIG (default configs/demo.py:base) picks another pipeline config.
set -uo pipefail
if [ $# -lt 1 ]; then
  sed -n 2,16p "$0"; exit 1
fi
out=$1; seconds=${2:-4}
vasa=${VASA_JAX:-vasa-jax}
limit=${BENCH_TIMEOUT:-240}
config=${BENCH_CONFIG:-configs/demo.py:base}
mkdir -p "$out"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/vasa_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
export PYTHONUNBUFFERED=1

run() {  # NAME OVERRIDES...
  local name=$1; shift
  echo "=== $name: $*"
  timeout "$limit" $vasa bench --config "$config" --seconds "$seconds" \
    --first-window 1 --out "$out/$name.json" "$@" 2>&1 | tee "$out/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]}"
}

bf16=(--config.inference.compute_dtype=bfloat16)
run fast "${bf16[@]}" --config.inference.steps=10 --config.inference.render_batch=5
run paper "${bf16[@]}" --config.inference.steps=50 --config.inference.render_batch=5
run batchW "${bf16[@]}" --config.inference.steps=10 --config.inference.render_batch=0
run fp32 --config.inference.compute_dtype=float32 --config.inference.steps=10 \
  --config.inference.render_batch=5
