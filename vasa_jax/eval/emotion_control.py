"""Emotion-control check (`vasa-jax eval-emotion`): does `--emotion E` make the face look like E?

For each portrait, one video per requested emotion and one with the baseline (`neutral`) are
generated from the same speech and seed (head crops, no paste-back), and the emotion network
(`facenets.nets.emotion_probs`, FER-2013 classes) labels every frame. The issue 19 acceptance
reads: `--emotion happy` must raise the network's "happy" probability over `--emotion neutral`
on unseen portraits, and so must at least two other emotions. Per emotion E the report gives the
mean P(E) with E asked and with the baseline asked, their difference, on how many portraits it
rose, and the share of frames whose argmax is E. A frame grid (portrait rows, emotion columns,
middle frame) goes beside it for looking.

Needs `vasa-jax fetch-face-nets`; fails at once without it.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Sequence

import numpy as np

from vasa_jax import fileio
from vasa_jax.errors import VasaInputError

JSON_NAME = "emotion_control.json"
MD_NAME = "emotion_control.md"
GRID_NAME = "emotion_grid.png"
BASELINE = "neutral"
# vasa-jax emotions the network has a class for (contempt has none; see face_metrics.TO_FER).
DEFAULT_EMOTIONS = ("happy", "sad", "angry", "surprised", "disgusted", "fear")


def summarize(probs: dict[str, dict[str, np.ndarray]], emotions: Sequence[str],
              baseline: str = BASELINE) -> dict:
  """Per-emotion figures from {portrait: {asked emotion: (T, 7) probs}}.

  Returns:
    {emotion: {"p_asked", "p_baseline", "delta" (means over portraits), "raised" (portraits
    where P(E) rose), "portraits", "acc_asked", "acc_baseline" (share of frames argmax = E)}}.
  """
  from vasa_jax.eval.face_metrics import TO_FER
  from vasa_jax.facenets.nets import EMOTIONS as FER
  out = {}
  for emo in emotions:
    k = FER.index(TO_FER[emo])
    asked = np.array([p[emo][:, k].mean() for p in probs.values()])
    base = np.array([p[baseline][:, k].mean() for p in probs.values()])
    out[emo] = {
        "p_asked": float(asked.mean()), "p_baseline": float(base.mean()),
        "delta": float((asked - base).mean()), "raised": int((asked > base).sum()),
        "portraits": len(asked),
        "acc_asked": float(np.mean([np.mean(p[emo].argmax(-1) == k) for p in probs.values()])),
        "acc_baseline": float(np.mean([np.mean(p[baseline].argmax(-1) == k)
                                       for p in probs.values()])),
    }
  return out


def render_markdown(result: dict) -> str:
  s = result["settings"]
  lines = ["# Emotion control", "",
           f"Checkpoint `{s['checkpoint']}`, {len(s['portraits'])} portraits, speech "
           f"`{os.path.basename(s['audio'])}` ({s['seconds']:g} s), seed {s['seed']}. P(E): the "
           "emotion network's mean probability of E over the frames; raised: portraits where "
           f"`--emotion E` gave a higher P(E) than `--emotion {s['baseline']}`.", "",
           f"| emotion | P(E) asked E | P(E) asked {s['baseline']} | delta | raised | "
           f"argmax=E asked E | argmax=E asked {s['baseline']} |",
           "|---|---|---|---|---|---|---|"]
  for emo, m in result["emotions"].items():
    lines.append(f"| {emo} | {m['p_asked']:.4f} | {m['p_baseline']:.4f} | {m['delta']:+.4f} | "
                 f"{m['raised']}/{m['portraits']} | {m['acc_asked']:.3f} | "
                 f"{m['acc_baseline']:.3f} |")
  lines += ["", f"Emotions raised on average: {result['raised_emotions']} "
            f"(acceptance: happy and at least two others)."]
  return "\n".join(lines) + "\n"


def grid_image(rows: list[tuple[str, list[np.ndarray]]], columns: Sequence[str]) -> np.ndarray:
  """Portrait rows x emotion columns of (R, R, 3) frames, with a title strip and row names."""
  from vasa_jax.eval.latent_quality import _text
  r = rows[0][1][0].shape[0]
  lw = max(24, r // 2)
  strips = [np.concatenate([_text(lw, 14, "")] + [_text(r, 14, c) for c in columns], axis=1)]
  for name, frames in rows:
    strips.append(np.concatenate([_text(lw, r, name[-12:])] + list(frames), axis=1))
  return np.concatenate(strips, axis=0)


def run(portraits: Sequence[str], audio: str, out_dir: str | os.PathLike, *,
        checkpoint: str | None = None, emotions: Sequence[str] = DEFAULT_EMOTIONS,
        baseline: str = BASELINE, seconds: float = 4.0, seed: int = 0,
        steps: int | None = None, progress: bool = True) -> dict:
  """Generates baseline + each emotion for every portrait and measures the emotion network.

  Args:
    portraits: portrait images (people the checkpoint never saw, for the acceptance).
    audio: one speech file, cut to `seconds`.
    out_dir: report directory (emotion_control.json/.md, emotion_grid.png).
    checkpoint: pipeline directory (default: the bundled demo).
    emotions: vasa-jax emotion names with a class in the emotion network.
    baseline: the emotion compared against.
    seconds, seed, steps: generation settings (the same for every video).
    progress: show a progress bar.
  Returns:
    {"settings", "emotions": summarize(...), "raised_emotions", "per_portrait"}.
  """
  from PIL import Image
  from tqdm import tqdm

  from vasa_jax.constants import SAMPLE_RATE
  from vasa_jax.data import emotion_labels, media
  from vasa_jax.eval.face_metrics import TO_FER
  from vasa_jax.inference.pipeline import load_pipeline

  bad = [e for e in list(emotions) + [baseline] if e not in TO_FER]
  if bad:
    raise VasaInputError(f"--emotions {bad}: the emotion network has no class for them; use "
                         f"some of {sorted(TO_FER)}.")
  if not portraits:
    raise VasaInputError("--portraits: give at least one portrait image.")
  nets = emotion_labels.load_nets()  # before any generation: a missing network fails at once
  pipe = load_pipeline(checkpoint)
  wav = media.read_audio(audio)[:int(seconds * SAMPLE_RATE)]
  asked = [baseline] + [e for e in emotions if e != baseline]
  probs, grid = {}, []
  bar = tqdm(total=len(portraits) * len(asked), desc="eval-emotion", disable=not progress)
  for path in portraits:
    name = pathlib.Path(path).stem
    if name in probs:
      raise VasaInputError(f"--portraits: two portraits are named {name!r}; rename one.")
    portrait = pipe.prepare_portrait(path)
    probs[name], frames = {}, []
    for emo in asked:
      res = pipe.generate(portrait, wav, emotion=emo, seed=seed, steps=steps, paste_back=False)
      probs[name][emo] = emotion_labels.clip_probs(nets, res.frames)
      frames.append(res.frames[len(res.frames) // 2])
      bar.update(1)
    grid.append((name, frames))
  bar.close()
  summary = summarize(probs, [e for e in asked if e != baseline], baseline)
  result = {
      "settings": {"checkpoint": checkpoint or "bundled demo", "portraits": list(portraits),
                   "audio": str(audio), "seconds": seconds, "seed": seed, "steps": steps,
                   "baseline": baseline},
      "emotions": summary,
      "raised_emotions": [e for e, m in summary.items() if m["delta"] > 0],
      "per_portrait": {n: {e: p.mean(0).round(4).tolist() for e, p in d.items()}
                       for n, d in probs.items()},
  }
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  fileio.atomic_write_text(out / JSON_NAME, json.dumps(result, indent=1))
  fileio.atomic_write_text(out / MD_NAME, render_markdown(result))
  with fileio.atomic_path(out / GRID_NAME) as tmp:
    Image.fromarray(grid_image(grid, asked)).save(tmp, format="PNG")
  return result
