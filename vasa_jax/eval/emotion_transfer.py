"""Stage 1's share of emotion control (`vasa-jax eval-emotion-transfer`): can the face latent
space carry a real expression onto a face it never saw?

`--emotion E` needs stage 2 to choose motion that means E and stage 1 to render that motion so it
shows. `eval-emotion` measures both at once; this measures stage 1 alone. Real clips whose file
names state an emotion (MEAD's `..._front_sad_level3_001`, CREMA-D's `1001_DFA_SAD_XX`) drive
each portrait (reenactment, the drivers' own motion), and the emotion network labels the rendered
frames and, as the reference row, the driving clips themselves. Per emotion E the report gives
P(E) when E's clips drive against when the baseline's clips drive (`emotion_control.summarize`
with the driver's emotion as the asked one). When the drivers differ clearly and the rendered
frames do not, no stage 2 can make `--emotion E` show: the stage 1 model is what to retrain.

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

JSON_NAME = "emotion_transfer.json"
MD_NAME = "emotion_transfer.md"
GRID_NAME = "emotion_transfer_grid.png"
REAL_ROW = "driving clips (real)"


def group_drivers(paths: Sequence[str], baseline: str) -> dict[str, list[str]]:
  """{vasa-jax emotion: clip paths} from the emotions the file names state.

  Raises VasaInputError naming the clip when a name states no emotion or one the emotion network
  has no class for, and when no clip is of the baseline or of any other emotion.
  """
  from vasa_jax.data.clip_labels import EMOTIONS, emotion_from_name
  from vasa_jax.eval.face_metrics import TO_FER
  groups: dict[str, list[str]] = {}
  for path in paths:
    k = emotion_from_name(pathlib.Path(path).stem)
    if k is None or EMOTIONS[k] not in TO_FER:
      said = "no emotion" if k is None else f"{EMOTIONS[k]!r}, which the network has no class for"
      raise VasaInputError(f"--drivers {path}: its file name states {said}; give clips named "
                           f"like MEAD's (`M030_front_sad_level3_001`) or CREMA-D's "
                           f"(`1001_DFA_SAD_XX`), with one of {sorted(TO_FER)}.")
    groups.setdefault(EMOTIONS[k], []).append(str(path))
  if baseline not in groups or len(groups) < 2:
    raise VasaInputError(f"--drivers: need clips of the baseline {baseline!r} and of at least "
                         f"one other emotion; got {sorted(groups) or 'none'}.")
  return groups


def render_markdown(result: dict) -> str:
  s = result["settings"]
  lines = ["# Emotion transfer (stage 1)", "",
           f"Checkpoint `{s['checkpoint']}`, {len(s['portraits'])} portraits driven by "
           f"{sum(len(v) for v in s['drivers'].values())} real clips (first {s['max_frames']} "
           "frames each, the drivers' own motion). P(E): the emotion network's mean probability "
           f"of E; baseline: the same with the {s['baseline']} clips driving. raised: portraits "
           "where E's clips gave the higher P(E) (the real row pools the drivers).", "",
           "| emotion | rows | P(E) E drives | P(E) baseline drives | delta | raised |",
           "|---|---|---|---|---|---|"]
  for emo in result["rendered"]:
    for rows, m in (("rendered", result["rendered"][emo]), ("real drivers", result["real"][emo])):
      lines.append(f"| {emo} | {rows} | {m['p_asked']:.4f} | {m['p_baseline']:.4f} | "
                   f"{m['delta']:+.4f} | {m['raised']}/{m['portraits']} |")
  lines += ["", f"Carried by stage 1 (rendered delta > 0): {result['carried']}."]
  return "\n".join(lines) + "\n"


def run(portraits: Sequence[str], drivers: Sequence[str], out_dir: str | os.PathLike, *,
        checkpoint: str | None = None, baseline: str = "neutral", max_frames: int = 75,
        progress: bool = True) -> dict:
  """Drives every portrait with every clip and measures the emotion network.

  Args:
    portraits: portrait images (people the checkpoint never saw).
    drivers: real clips whose file names state their emotion (see `group_drivers`).
    out_dir: report directory (emotion_transfer.json/.md, and emotion_transfer_grid.png: the
      first clip of each emotion, its middle frame, above each portrait driven by it).
    checkpoint: stage 1 workdir, export or pipeline directory (default: the bundled demo).
    baseline: the emotion whose clips every other emotion is compared against.
    max_frames: frames of each driver used (from its start).
    progress: show a progress bar.
  Returns:
    {"settings", "rendered": summarize(...) of the rendered frames, "real": the same of the
    drivers, "carried": emotions whose rendered P(E) rose on average}.
  """
  from PIL import Image
  from tqdm import tqdm

  from vasa_jax.data import emotion_labels
  from vasa_jax.eval.emotion_control import grid_image, summarize
  from vasa_jax.inference.extract_motion import load_face_model
  from vasa_jax.inference.pipeline_io import DEFAULT_CHECKPOINT
  from vasa_jax.inference.reenact import crop_driver, crop_source, reenact_frames
  from vasa_jax.models import layers

  if not portraits:
    raise VasaInputError("--portraits: give at least one portrait image.")
  if max_frames < 1:
    raise VasaInputError(f"--max-frames {max_frames}: use 1 or more.")
  groups = group_drivers(drivers, baseline)
  nets = emotion_labels.load_nets()  # before any rendering: a missing network fails at once
  config, model, params = load_face_model(checkpoint or DEFAULT_CHECKPOINT)
  r = int(config.model.resolution)
  face_cfg = layers.as_face_config(config.model)
  sources = {}  # {portrait: (crop (R, R, 3), its motion labels)}
  for path in portraits:
    name = pathlib.Path(path).stem
    if name in sources:
      raise VasaInputError(f"--portraits: two portraits are named {name!r}; rename one.")
    sources[name] = crop_source(path, r, face_cfg)
  rendered = {n: {} for n in sources}  # {portrait: {emotion: (sum T, 7)}}
  real = {REAL_ROW: {}}
  grid = {n: [] for n in [REAL_ROW, *sources]}  # middle frames of each emotion's first clip
  bar = tqdm(total=len(drivers) * len(sources), desc="eval-emotion-transfer",
             disable=not progress)
  for emo, paths in groups.items():
    for path in paths:
      _, drv, drv_labels = crop_driver(path, r, face_cfg, max_frames=max_frames)
      real[REAL_ROW].setdefault(emo, []).append(emotion_labels.clip_probs(nets, drv))
      first = path == paths[0]
      if first:
        grid[REAL_ROW].append(drv[len(drv) // 2])
      for name, (src, src_labels) in sources.items():
        frames = reenact_frames(model, params, src, drv, source_labels=src_labels,
                                driver_labels=drv_labels)
        rendered[name].setdefault(emo, []).append(emotion_labels.clip_probs(nets, frames))
        if first:
          grid[name].append(frames[len(frames) // 2])
        bar.update(1)
  bar.close()

  def cat(probs):  # {row: {emotion: [(T, 7) per clip]}} -> {row: {emotion: (sum T, 7)}}
    return {n: {e: np.concatenate(p) for e, p in v.items()} for n, v in probs.items()}

  emotions = [e for e in groups if e != baseline]
  result = {
      "settings": {"checkpoint": checkpoint or "bundled demo", "portraits": list(portraits),
                   "drivers": groups, "baseline": baseline, "max_frames": max_frames},
      "rendered": summarize(cat(rendered), emotions, baseline),
      "real": summarize(cat(real), emotions, baseline),
  }
  result["carried"] = [e for e, m in result["rendered"].items() if m["delta"] > 0]
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  fileio.atomic_write_text(out / JSON_NAME, json.dumps(result, indent=1))
  fileio.atomic_write_text(out / MD_NAME, render_markdown(result))
  with fileio.atomic_path(out / GRID_NAME) as tmp:
    Image.fromarray(grid_image(list(grid.items()), list(groups))).save(tmp, format="PNG")
  return result
