#!/usr/bin/env bash
# Lip-sync evaluation of a pipeline on people and speech kept out of the demo's training.
#
#   launch/eval_demo.sh DATA_DIR OUT_DIR [CHECKPOINT]
#
# DATA_DIR has the layout of ../shared/data (clips/, portraits/, speech/, manifest.csv).
# Generates 15 videos: the first frame of each held-out clip with its own audio (the demo's
# validation people), and every portrait of portraits/ with one clip of speech/ (neither is in
# training); then `vasa-jax eval` against 12 real clips (the held-out ones and 8 others spread
# over the manifest), whose own audio and another clip's audio give the real and chance rows.
# Each input is cut to its first 12 s. CHECKPOINT defaults to the bundled demo.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n 2,11p "$0"; exit 1
fi
data=$1; out=$2; ckpt=${3:-}
vasa=${VASA_JAX:-vasa-jax}
py=${PYTHON:-python}
mkdir -p "$out/inputs" "$out/videos"
held=(SadTalker__examples_ref_video_WDA_AlexandriaOcasioCortez_000
      SadTalker__test_examples_source_image_WDA_BobMenendez_000
      smirk__samples_skarsgard video-retalking__examples_face_3)
mapfile -t portraits < <(ls "$data"/portraits/* | sort)
# First frames and 12 s of audio of the held-out clips; 12 s of speech/ clip (i * 5) mod n for
# portrait i; the real clips for the reference rows.
"$py" - "$data" "$out" "${#portraits[@]}" "${held[@]}" <<'PY'
import csv, pathlib, sys
from PIL import Image
from vasa_jax.data import media
data, out, n_portraits, held = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
for name in held:
  v = media.read_video(f"{data}/clips/{name}.mp4", fps=25.0, max_side=720)
  Image.fromarray(v.frames[0]).save(f"{out}/inputs/{name}.png")
  media.write_wav(f"{out}/inputs/{name}.wav", v.audio[:16000 * 12], 16000)
speech = sorted(str(p) for p in pathlib.Path(data, "speech").iterdir())
for i in range(n_portraits):
  wav = media.read_audio(speech[(i * 5) % len(speech)])
  media.write_wav(f"{out}/inputs/speech_{i}.wav", wav[:16000 * 12], 16000)
rows = list(csv.DictReader(open(f"{data}/manifest.csv")))
others = sorted(r["path"] for r in rows
                if r["kind"] == "A" and float(r["dur_s"]) >= 4
                and float(r["speech_frac"] or 0) >= 0.8 and r["audio"] not in ("", "no", "paired")
                and r["path"] not in {f"clips/{n}.mp4" for n in held})
real = [f"clips/{n}.mp4" for n in held] + others[::max(1, len(others) // 8)][:8]
open(f"{out}/real.txt", "w").write("\n".join(f"{data}/{p}" for p in real) + "\n")
PY
gen() {  # image audio name
  "$vasa" generate --image "$1" --audio "$2" --out "$out/videos/$3.mp4" \
      ${ckpt:+--checkpoint "$ckpt"}
}
for n in "${held[@]}"; do
  gen "$out/inputs/$n.png" "$out/inputs/$n.wav" "val_$n"
done
for i in "${!portraits[@]}"; do
  gen "${portraits[$i]}" "$out/inputs/speech_$i.wav" "$(printf 'unseen_%02d' "$i")_$(basename "${portraits[$i]%.*}")"
done
mapfile -t real < "$out/real.txt"
"$vasa" eval --videos "$out"/videos/*.mp4 --real "${real[@]}" --max-seconds 12 --out "$out/eval"
