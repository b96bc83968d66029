#!/usr/bin/env bash
# Face metrics (`vasa-jax eval --face-metrics`: CSIM, M-LMD, emotion accuracy) of a pipeline
# against real video, as in docs/face_networks.md:
#   launch/eval_face_metrics.sh DATA_DIR OUT_DIR [CHECKPOINT]
# 1. Self-reenactment of the demo's held-out people (first frame + own audio, 8 s) -> CSIM to
#    the first frame and M-LMD to the real clip; the real clips are the reference rows.
# 2. Two unseen portraits x four emotions (4 s of speech/) -> emotion-control accuracy, next to
#    real MEAD / CREMA-D clips whose names give their emotion.
# CHECKPOINT defaults to the bundled demo. Needs `vasa-jax fetch-face-nets`.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n 2,9p "$0"; exit 1
fi
data=$1; out=$2; ckpt=${3:-}
vasa=${VASA_JAX:-vasa-jax}
py=${PYTHON:-python}
mkdir -p "$out/inputs" "$out/videos" "$out/emo"
held=(SadTalker__examples_ref_video_WDA_AlexandriaOcasioCortez_000
      SadTalker__test_examples_source_image_WDA_BobMenendez_000
      smirk__samples_skarsgard video-retalking__examples_face_3)
"$py" - "$data" "$out" "${held[@]}" <<'PY'
import sys
from PIL import Image
from vasa_jax.data import media
data, out, held = sys.argv[1], sys.argv[2], sys.argv[3:]
for name in held:
  v = media.read_video(f"{data}/clips/{name}.mp4", fps=25.0, max_side=720)
  Image.fromarray(v.frames[0]).save(f"{out}/inputs/{name}.png")
  media.write_wav(f"{out}/inputs/{name}.wav", v.audio[:16000 * 8], 16000)
wav = media.read_audio(f"{data}/speech/SadTalker__examples_driven_audio_RD_Radio34_002.wav")
media.write_wav(f"{out}/inputs/speech.wav", wav[:16000 * 4], 16000)
PY
for n in "${held[@]}"; do
  [ -f "$out/videos/val_$n.mp4" ] || "$vasa" generate --image "$out/inputs/$n.png" \
      --audio "$out/inputs/$n.wav" --out "$out/videos/val_$n.mp4" ${ckpt:+--checkpoint "$ckpt"}
done
"$vasa" eval --videos $(for n in "${held[@]}"; do echo "$out/videos/val_$n.mp4"; done) \
    --portraits $(for n in "${held[@]}"; do echo "$out/inputs/$n.png"; done) \
    --ground-truth $(for n in "${held[@]}"; do echo "$data/clips/$n.mp4"; done) \
    --real $(for n in "${held[@]}"; do echo "$data/clips/$n.mp4"; done) \
    --max-seconds 8 --face-metrics --out "$out/eval_val"
# Emotion-control accuracy: two unseen portraits x four emotions, vs real clips named by emotion.
vids=(); labels=(); ports=()
for p in EAMM__test_image_21.png face_recognition__examples_biden.jpg; do
  for e in happy sad angry surprised; do
    v="$out/emo/${p%.*}_$e.mp4"
    [ -f "$v" ] || "$vasa" generate --image "$data/portraits/$p" --audio "$out/inputs/speech.wav" \
        --emotion "$e" --out "$v" ${ckpt:+--checkpoint "$ckpt"}
    vids+=("$v"); labels+=("$e"); ports+=("$data/portraits/$p")
  done
done
"$vasa" eval --videos "${vids[@]}" --portraits "${ports[@]}" --emotion-labels "${labels[@]}" \
    --real "$data/clips/spectre__samples_MEAD_W036_level_3_happy_007.mp4" \
           "$data/clips/spectre__samples_MEAD_W023_level_2_surprised_010.mp4" \
           "$data/clips/spectre__samples_MEAD_M030_level_3_angry_016.mp4" \
           "$data/clips/EAMM__test_crop_M030_sad_3_001.mp4" \
           "$data/clips/emotion__tests_test_data_data_1001_DFA_SAD_XX.flv" \
           "$data/clips/emotion__tests_test_data_data_1001_DFA_ANG_XX.flv" \
    --max-seconds 4 --face-metrics --out "$out/eval_emo"
