"""`vasa-jax calibrate-mouth`: picks a pipeline's mouth scale on real clips, never of the
evaluation people.

A briefly trained stage 2 regresses toward the mean: its mouth entry moves less than real mouths
(on the demo's training people, 0.43x the real detrended spread by `vasa-jax eval-motion`), and
the decoder renders only part of a change of that entry. `Pipeline.mouth_scale` multiplies the
mouth entry's departure from the portrait's own value; this measures which scale makes the
rendered mouth follow the speech most:

  for each clip: its first frame is driven by the clip's own audio once (one motion sample), the
  same motion is rendered at every candidate scale, and the face mesh measures the mouth opening
  of the rendered and of the real frames (`lipsync.analyze_clip`, as `vasa-jax eval` does);
  then `choose_scale` takes the candidate with the largest mean sync times mean spread, the
  spread capped at the real clips' (a larger scale adds motion until the decoder runs out of
  range and the sync drops).

Never use the people you evaluate on: that would tune on them. Best are people stage 1 trained on
and stage 2 did not (`select_clips(persons=...)`: the dev people a second stage 2 run held out),
since on its own training people stage 2 keeps its sync at larger scales than it will on anyone
else (the bundled demo: 2.5 there, 2 on the dev people; README). Writes calibration.json and
calibration.md; with `write=True` stores the scale in the pipeline's pipeline.json, with
`write_to` in another pipeline's (the stage 2 run trained on everybody).
"""
from __future__ import annotations

import csv
import json
import os
import pathlib
from typing import Sequence

import numpy as np
from tqdm import tqdm

from vasa_jax import fileio
from vasa_jax.constants import FPS, SAMPLE_RATE
from vasa_jax.data import face_crop, media
from vasa_jax.errors import CheckpointError, VasaInputError
from vasa_jax.eval import lipsync, report
from vasa_jax.inference import pipeline as pipeline_lib

JSON_NAME = "calibration.json"
MD_NAME = "calibration.md"
DEFAULT_SCALES = (1.0, 1.5, 2.0, 2.5, 3.0)


def select_clips(data_dir, *, persons: Sequence[str] | None = None,
                 exclude_persons: Sequence[str] = (), min_seconds: float = 6.0,
                 max_clips: int = 20) -> list[str]:
  """One talking clip with audio per person from a data directory's manifest.csv.

  Clips are taken in manifest order with no filter on how well they sync, so the real spread is
  the population's, not that of a hand-picked subset; clips whose mp4 has no audio track of its
  own (manifest `audio` not "...Hz") are passed over.

  Args:
    data_dir: a directory laid out as ../shared/data (manifest.csv with `path`, `kind` (A =
      talking clip with audio), `person`, `dur_s`).
    persons: only these persons (None: everyone), e.g. people a stage 2 run held out.
    exclude_persons: persons left out (the evaluation people).
    min_seconds: shortest clip kept.
    max_clips: at most this many clips.

  Returns:
    paths of the chosen clips.
  """
  manifest = pathlib.Path(data_dir) / "manifest.csv"
  if not manifest.is_file():
    raise VasaInputError(f"{manifest} not found: --data must be a directory with a manifest.csv "
                         "(columns path, kind, person, dur_s), or pass the clips with --clips.")
  excluded, seen, out = set(exclude_persons), set(), []
  with open(manifest, newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      person = row.get("person", "")
      # `audio` names the clip's own track ("16000Hz"); "no", "" or "paired wav ..." (a separate
      # file) leave the mp4 silent.
      audio = row.get("audio", "Hz")
      if (row.get("kind") != "A" or person in excluded or person in seen
          or (persons is not None and person not in persons)
          or float(row.get("dur_s") or 0) < min_seconds or not audio.endswith("Hz")):
        continue
      seen.add(person)
      out.append(str(pathlib.Path(data_dir) / row["path"]))
      if len(out) >= max_clips:
        break
  if not out:
    among = "" if persons is None else f" among the persons {sorted(persons)}"
    raise VasaInputError(f"No talking clip of at least {min_seconds:g} s with audio in {manifest}"
                         f"{among} outside the excluded persons {sorted(excluded)}.")
  return out


def choose_scale(scales: Sequence[float], spreads: Sequence[float], syncs: Sequence[float],
                 real_spread: float) -> tuple[float, list[float]]:
  """The candidate whose mouth motion follows the speech most.

  The score is the mean sync times the mean spread, the spread capped at the real mouths': the
  size of the mouth motion that goes with the speech (a correlation times a standard deviation is
  a covariance with the normalised speech envelope). A larger scale first adds motion, then the
  decoder runs out of range (the rendered opening stops growing, or the mouth shuts) and the sync
  drops; motion beyond the real spread is not rewarded.

  Args:
    scales: increasing candidate scales.
    spreads: mean rendered spread (detrended std of the mouth opening) at each scale.
    syncs: mean rendered sync (detrended correlation with the speech envelope) at each scale.
    real_spread: the real clips' mean spread.

  Returns:
    (chosen scale, the score of every candidate).
  """
  s = np.asarray(scales, np.float64)
  y = np.asarray(spreads, np.float64)
  c = np.asarray(syncs, np.float64)
  if s.ndim != 1 or s.size == 0 or y.shape != s.shape or c.shape != s.shape:
    raise ValueError(f"scales, spreads and syncs must be equal-length 1-D sequences, got "
                     f"{s.shape}, {y.shape} and {c.shape}")
  if np.any(np.diff(s) <= 0):
    raise ValueError(f"scales must be increasing, got {list(s)}")
  if not (np.all(np.isfinite(y)) and np.all(np.isfinite(c)) and np.isfinite(real_spread)):
    raise ValueError(f"spreads, syncs and the real spread must be finite, got {list(y)}, "
                     f"{list(c)} and {real_spread}")
  scores = c * np.minimum(y, real_spread)
  return float(s[int(np.argmax(scores))]), [float(v) for v in scores]


def measure_clip(pipe, path: str, scales: Sequence[float], *, seed: int = 0,
                 max_seconds: float = 10.0, analyzer=None) -> dict:
  """Real and rendered mouth figures of one clip at every scale (one motion sample)."""
  video = media.read_video(path, fps=float(FPS), max_side=720)
  if video.audio is None:
    raise VasaInputError(f"{path} has no audio track: calibration drives each clip's first frame "
                         "with the clip's own speech.")
  n = max(1, int(round(max_seconds * FPS)))
  frames = video.frames[:n]
  wav = video.audio[:int(round(len(frames) * SAMPLE_RATE / FPS))]

  def scores(clip_frames):
    series = lipsync.analyze_clip(clip_frames, wav, analyzer=analyzer, source=path)
    s = lipsync.lipsync_scores(series["mouth_open"], series["envelope"])
    return {"spread": s["mouth_std_detrended"], "sync": s["corr_detrended"],
            "lag": s["lag_detrended"], "face_found": float(series["detected"].mean())}

  real = scores(frames)
  portrait = pipe.prepare_portrait(frames[0], source=path)
  motion = pipe.generate(portrait, wav, seed=seed, mouth_scale=1.0, paste_back=False,
                         progress=False).motion
  rendered = {}
  for scale in scales:
    rendered[f"{scale:g}"] = scores(pipe.render_frames(portrait,
                                                       pipe.scale_mouth(motion, portrait, scale)))
  return {"clip": path, "frames": int(len(frames)), "real": real, "rendered": rendered}


def calibrate(checkpoint, clips: Sequence[str], out_dir, *,
              scales: Sequence[float] = DEFAULT_SCALES, seed: int = 0,
              max_seconds: float = 10.0, write: bool = False, write_to=None, pipe=None,
              analyzer=None) -> dict:
  """Measures every clip, picks the scale, writes the report (and the pipeline's default).

  Args:
    checkpoint: a pipeline directory (`vasa-jax export`); None = the bundled demo.
    clips: real talking clips with audio, of people the pipeline's stage 1 trained on.
    out_dir: report directory (calibration.json, calibration.md).
    scales: increasing candidate mouth scales.
    seed: sampling seed.
    max_seconds: use only the first seconds of each clip.
    write: store the chosen scale as the pipeline's default `mouth_scale` in pipeline.json.
    write_to: store it in this other pipeline directory instead (implies `write`): calibrate a
      stage 2 run that held the clips' people out, write the scale into the one that did not.
    pipe, analyzer: a loaded `Pipeline` and `FaceAnalyzer` to reuse (tests).

  Returns:
    the report dict (also written as calibration.json).
  """
  scales = [float(s) for s in scales]
  if not scales or any(not np.isfinite(s) or s < 0 for s in scales):
    raise VasaInputError(f"--scales must be finite numbers >= 0, got {scales}")
  if any(b <= a for a, b in zip(scales, scales[1:])):
    raise VasaInputError(f"--scales must be increasing, got {scales}")
  if not clips:
    raise VasaInputError("No clips to calibrate on: pass --clips or --data.")
  for c in clips:
    if not os.path.isfile(c):
      raise VasaInputError(f"Clip {c} not found.")
  checkpoint_dir = pathlib.Path(checkpoint if checkpoint is not None
                                else pipeline_lib.DEFAULT_CHECKPOINT)
  write = write or write_to is not None
  meta_path = pathlib.Path(write_to or checkpoint_dir) / pipeline_lib.PIPELINE_FILE
  if write and not meta_path.is_file():
    raise CheckpointError(f"{meta_path} not found: --write and --write-to need a pipeline "
                          "directory written by `vasa-jax export`.")
  pipe = pipe or pipeline_lib.load_pipeline(checkpoint)
  analyzer = analyzer or face_crop.FaceAnalyzer()
  rows, skipped = [], []
  for path in tqdm(clips, desc="calibrate-mouth", unit="clip"):
    try:
      row = measure_clip(pipe, path, scales, seed=seed, max_seconds=max_seconds,
                         analyzer=analyzer)
    except VasaInputError as e:  # no face, no audio track, unreadable: say so in the report
      skipped.append({"clip": path, "why": str(e)})
      continue
    spreads = [row["real"]["spread"]] + [v["spread"] for v in row["rendered"].values()]
    if np.all(np.isfinite(spreads)):
      rows.append(row)
    else:
      skipped.append({"clip": path, "why": "no mouth measured in its real or rendered frames"})
  if not rows:
    reasons = "; ".join(f"{s['clip']}: {s['why']}" for s in skipped[:3])
    raise VasaInputError(f"No clip gave a measurable mouth, all {len(skipped)} skipped ({reasons}"
                         f"{'; ...' if len(skipped) > 3 else ''}). Pass talking clips with their "
                         "own audio track, and a pipeline that renders faces (a trained "
                         "checkpoint, not a random one).")
  target = float(np.mean([r["real"]["spread"] for r in rows]))
  curve = [float(np.mean([r["rendered"][f"{s:g}"]["spread"] for r in rows])) for s in scales]
  sync = [float(np.mean([r["rendered"][f"{s:g}"]["sync"] for r in rows])) for s in scales]
  chosen, scores = choose_scale(scales, curve, sync, target)
  result = {"version": 1, "checkpoint": str(checkpoint_dir), "seed": seed,
            "max_seconds": max_seconds, "scales": scales, "real_spread": target,
            "real_sync": float(np.mean([r["real"]["sync"] for r in rows])),
            "rendered_spread": curve, "rendered_sync": sync, "score": scores,
            "mouth_scale": chosen, "clips": rows, "skipped": skipped, "written": False}
  if write:
    meta = json.loads(meta_path.read_text())
    meta["mouth_scale"] = pipeline_lib.check_mouth_scale(result["mouth_scale"])
    fileio.atomic_write_text(meta_path, json.dumps(meta, indent=1))
    result["written"] = str(meta_path)
  os.makedirs(out_dir, exist_ok=True)
  fileio.atomic_write_text(os.path.join(out_dir, JSON_NAME),
                            json.dumps(report.to_jsonable(result), indent=1))
  fileio.atomic_write_text(os.path.join(out_dir, MD_NAME), render_markdown(result))
  return result


def render_markdown(result: dict) -> str:
  """The report as a table: rendered spread and sync per scale against the real clips'."""
  lines = [f"# Mouth scale calibration: {result['checkpoint']}", "",
           f"{len(result['clips'])} clips ({len(result['skipped'])} skipped), first "
           f"{result['max_seconds']:g} s each, seed {result['seed']}. Real mouths: spread "
           f"{result['real_spread']:.4f}, sync {result['real_sync']:.3f}.", "",
           f"**Mouth scale {result['mouth_scale']:g}**: the largest sync x spread (spread capped "
           "at the real one)" + (f", written to {result['written']}." if result["written"] else "."), "",
           "| mouth scale | rendered spread | / real | rendered sync | sync x spread |",
           "|---|---|---|---|---|"]
  for s, y, c, v in zip(result["scales"], result["rendered_spread"], result["rendered_sync"],
                        result["score"]):
    ratio = f"{y / result['real_spread']:.2f}x" if result["real_spread"] > 0 else "-"
    lines.append(f"| {s:g} | {y:.4f} | {ratio} | {c:.3f} | {v:.5f} |")
  lines += ["", "| clip | real spread | real sync | " + " | ".join(
      f"spread @{s:g}" for s in result["scales"]) + " |",
            "|---|---|---|" + "---|" * len(result["scales"])]
  for r in result["clips"]:
    cells = " | ".join(f"{r['rendered'][f'{s:g}']['spread']:.4f}" for s in result["scales"])
    lines.append(f"| {os.path.basename(r['clip'])} | {r['real']['spread']:.4f} | "
                 f"{r['real']['sync']:.3f} | {cells} |")
  for s in result["skipped"]:
    lines.append(f"\nSkipped {s['clip']}: {s['why']}")
  return "\n".join(lines) + "\n"


__all__ = ["DEFAULT_SCALES", "calibrate", "choose_scale", "measure_clip", "render_markdown",
           "select_clips"]
