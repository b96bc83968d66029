#!/usr/bin/env bash
# Trains the bundled demo pipeline from raw clips, end to end, on one machine.
#
#   launch/train_demo.sh DATA_DIR WORK_DIR [OUT_DIR]
#
# DATA_DIR holds clips/, silent/ and manifest.csv (the layout of ../shared/data); OUT_DIR
# defaults to vasa_jax/assets/demo. Each step is resumable: rerun the script after a stop.
# On the 2-core CPU it took about 40 min for stage 1 (1200 steps) and 15 min for stage 2.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n 2,9p "$0"; exit 1
fi
data=$1; work=$2; out=${3:-vasa_jax/assets/demo}
vasa=${VASA_JAX:-vasa-jax}
mkdir -p "$work"
$vasa preprocess --input "$data/clips" "$data/silent" --persons "$data/manifest.csv" \
    --resolution 128 --out "$work/data128"
$vasa train --config configs/latent.py:demo --workdir "$work/latent_demo" \
    --config.data.shards="$work/data128"
$vasa extract-motion --latent-checkpoint "$work/latent_demo" --shards "$work/data128" \
    --out "$work/motion_data"
$vasa train --config configs/motion.py:demo --workdir "$work/motion_demo" \
    --config.data.motion="$work/motion_data"
$vasa export --latent "$work/latent_demo" --motion "$work/motion_demo" --out "$out" --steps 10
