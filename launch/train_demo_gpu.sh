#!/usr/bin/env bash
# The recipe of the bundled demo checkpoint: stage 1 (a 32x32 volume, batch 32, 11250 steps) on
# one GPU from slim shards, stage 2 on a GPU or the CPU, everything else on the CPU.
#
#   launch/train_demo_gpu.sh DATA_DIR WORK_DIR [OUT_DIR]
#
# DATA_DIR has the layout of ../shared/data; OUT_DIR defaults to vasa_jax/assets/demo. On one
# H100 stage 1 ran at 28 steps/s (about 7 min of training plus a minute of compiling per leg);
# on the 2-core CPU, preprocessing took 24 min and extract-motion 2.5 min. The GPU machine needs
# only the repository and WORK_DIR/slim (43 MB): run the stage-1 legs there with STAGE=1, copy
# WORK_DIR/latent back, and the rest where the full shards are with STAGE=2. The bundled stage 2
# (batch 64) trained on a lent H200 in 3.5 min, sharing it with six other runs, from
# `vasa-jax slim-motion` output (features in float16, 32 MB): the train command below with
# --config.data.motion=SLIM. On the CPU it is the same command on the full motion data (0.9
# steps/s on the 2-core CPU, about 28 min).
# Each command resumes after a stop.
# Launch/train_demo.sh is the all-CPU recipe (16^2 volume).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n 2,17p "$0"; exit 1
fi
data=$1; work=$2; out=${3:-vasa_jax/assets/demo}
vasa=${VASA_JAX:-vasa-jax}
stage=${STAGE:-all}
val=(bob_menendez aoc bill_skarsgard)  # configs/common.DEMO_VAL_PERSONS
mkdir -p "$work"
if [ "$stage" != 2 ]; then
  [ -f "$work/data128/index.json" ] || $vasa preprocess --input "$data/clips" "$data/silent" \
      --persons "$data/manifest.csv" --resolution 128 --out "$work/data128"
  # Every 3rd frame at JPEG quality 80, training people only: what stage 1 reads, in 43 MB.
  [ -f "$work/slim/index.json" ] || $vasa slim-shards --shards "$work/data128" \
      --out "$work/slim" --every 3 --quality 80 \
      --exclude-persons "${val[@]}"
  # Three legs, as the bundled run went (configs/demo_recipe.py: latent_gpu_1..3 hold the
  # recipe; its legs were time-boxed and --max-steps are the steps they reached).
  latent=(--workdir "$work/latent" --config.data.shards="$work/slim")
  $vasa train --config configs/demo_recipe.py:latent_gpu_1 "${latent[@]}" --max-steps 2900
  $vasa train --config configs/demo_recipe.py:latent_gpu_2 "${latent[@]}" --max-steps 7075
  $vasa train --config configs/demo_recipe.py:latent_gpu_3 "${latent[@]}" --max-steps 11250
fi
if [ "$stage" != 1 ]; then
  [ -f "$work/motion_data/index.json" ] || $vasa extract-motion \
      --latent-checkpoint "$work/latent" --shards "$work/data128" --out "$work/motion_data"
  # Stage 2: 1500 steps of batch 64 with the audio augmentation and 2 frames of audio
  # look-ahead (configs/motion.py demo defaults).
  $vasa train --config configs/demo_recipe.py:motion --workdir "$work/motion" \
      --config.data.motion="$work/motion_data"
  # The same recipe with 8 more training people held out (configs/common.DEMO_DEV_PERSONS):
  # the mouth scale is chosen on people stage 2 never saw, one clip of each, and written into
  # the pipeline (2 for the bundle). The other defaults were chosen on training people: audio
  # guidance 0.5 (the paper's) gave the previous stage 2's mouth entry the best sync with their
  # speech (0.34 vs 0.27 at 1.5 and 0.24 at 3, 10 steps; 25 steps 0.35, 50 steps 0.38).
  dev=(cremad_1001 german_news_anchor latentsync_model1 lrs2_deepavsr_00016 lrs3_laalm_s4
       mead_W040 style_trump_clip1 vox_00473)  # configs/common.DEMO_DEV_PERSONS
  $vasa train --config configs/demo_recipe.py:motion_dev --workdir "$work/motion_dev" \
      --config.data.motion="$work/motion_data"
  $vasa export --latent "$work/latent" --motion "$work/motion" --out "$out" --steps 25 \
      --cfg-audio 0.5
  $vasa export --latent "$work/latent" --motion "$work/motion_dev" --out "$work/pipeline_dev" \
      --steps 25 --cfg-audio 0.5
  $vasa calibrate-mouth --checkpoint "$work/pipeline_dev" --data "$data" --persons "${dev[@]}" \
      --out "$work/calibration" --write-to "$out"
fi
