"""Face metrics with the pretrained face networks (`vasa-jax eval --face-metrics`).

  CSIM     cosine identity similarity (MobileFaceNet, `nets.identity_cosine`) of every frame to
           the portrait, per frame and per clip (mean). Real clips: to their own first frame,
           the reference row (how much a real person's identity "drifts" over a clip).
  M-LMD    mouth-landmark distance: mean L2 distance of the 40 lip landmarks (face mesh, in
           shares of the crop side) between a generated video and the real video it re-enacts
           (self-reenactment), frame by frame. Reference row: each real clip against its own mean
           mouth, i.e. the score of a mouth that never moves (lower is better; 0 = exact).
  emotion  emotion-control accuracy: share of frames whose emotion-network argmax is the
           requested emotion (`--emotion-labels`, one per video), and the mean probability of
           it. Reference row: real clips whose file name names their emotion (MEAD, CREMA-D).

Every video (generated or real) is cropped the same way (`face_crop.crop_clip`, 256x256), so
both rows are measured alike. Needs `vasa-jax fetch-face-nets`; fails at once without it.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from vasa_jax.constants import FPS
from vasa_jax.data import clip_labels
from vasa_jax.errors import VasaInputError
from vasa_jax.facenets import nets as nets_lib

JSON_NAME = "face_metrics.json"
MD_NAME = "face_metrics.md"
RESOLUTION = 256
BATCH = 16
LIPS = nets_lib.LIPS  # MediaPipe face mesh lip contours (outer + inner), 40 points
# vasa-jax emotion names -> the emotion network's (FER) classes; contempt has no FER class.
TO_FER = {"neutral": "neutral", "angry": "angry", "disgusted": "disgust", "fear": "fear",
          "happy": "happy", "sad": "sad", "surprised": "surprise"}


def _load_nets():
  return nets_lib.FaceNets.load(why="vasa-jax eval --face-metrics")


def read_crops(path: str, max_seconds: float | None = None, analyzer=None) -> np.ndarray:
  """(T, 256, 256, 3) uint8 head crops of a video or image, at 25 fps."""
  from vasa_jax.data import face_crop, media
  if os.path.splitext(path)[1].lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
    return face_crop.crop_image(media.read_image(path), RESOLUTION, analyzer=analyzer,
                                source=path).image[None]
  frames = []
  for frame in media.iter_video_frames(path, fps=FPS, max_side=720):
    frames.append(frame)
    if max_seconds and len(frames) >= max_seconds * FPS:
      break
  if not frames:
    raise VasaInputError(f"{path}: no frames")
  return face_crop.crop_clip(np.stack(frames), RESOLUTION, analyzer=analyzer, source=path).frames


def analyse(nets, crops: np.ndarray) -> dict[str, np.ndarray]:
  """Embedding (T, 192), mesh (T, 468, 3) and emotion probabilities (T, 7) of uint8 crops."""
  import jax
  import jax.numpy as jnp

  @jax.jit
  def run(x):
    x = x.astype(jnp.float32) / 127.5 - 1
    mesh, _ = nets_lib.face_mesh(nets, x)
    return (nets_lib.identity_embedding(nets, x, mesh=mesh), mesh,
            nets_lib.emotion_probs(nets, x))

  outs = []
  for i in range(0, len(crops), BATCH):
    chunk = crops[i:i + BATCH]
    pad = BATCH - len(chunk)  # one compiled shape
    res = run(jnp.asarray(np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])))
    outs.append([np.asarray(r)[:len(chunk)] for r in res])
  emb, mesh, emo = (np.concatenate(parts) for parts in zip(*outs))
  return {"embedding": emb, "mesh": mesh, "emotion": emo}


def csim(frames_emb: np.ndarray, portrait_emb: np.ndarray) -> np.ndarray:
  """(T,) CSIM of every frame's embedding to the portrait's (192,)."""
  return np.asarray(nets_lib.identity_cosine(frames_emb, portrait_emb[None]))


def mouth_landmark_distance(mesh: np.ndarray, reference: np.ndarray) -> float:
  """M-LMD: mean L2 distance (shares of the crop side) of the lip points, frame by frame.

  Both meshes are centred on their own lip centroid per frame, so a head that sits a few pixels
  elsewhere in the crop does not count as a mouth error. The series are cut to the shorter.
  """
  n = min(len(mesh), len(reference))
  a, b = mesh[:n, LIPS, :2], reference[:n, LIPS, :2]
  a = a - a.mean(1, keepdims=True)
  b = b - b.mean(1, keepdims=True)
  return float(np.linalg.norm(a - b, axis=-1).mean())


def emotion_accuracy(probs: np.ndarray, emotion: str) -> dict[str, float]:
  """Share of frames whose argmax is `emotion` (vasa-jax name) and its mean probability."""
  if emotion not in TO_FER:
    raise VasaInputError(f"--emotion-labels: {emotion!r} has no class in the emotion network; "
                         f"use one of {sorted(TO_FER)}")
  k = nets_lib.EMOTIONS.index(TO_FER[emotion])
  return {"emotion_acc": float(np.mean(probs.argmax(-1) == k)),
          "emotion_prob": float(probs[:, k].mean())}


def _emotion_of_name(path: str) -> str | None:
  idx = clip_labels.emotion_from_name(os.path.basename(path))
  name = None if idx is None else clip_labels.EMOTIONS[idx]
  return name if name in TO_FER else None


def _check_lengths(videos, name, values):
  if values and len(values) != len(videos):
    raise VasaInputError(f"--{name} gives {len(values)} entries for {len(videos)} --videos; "
                         f"give one per generated video, in the same order.")


def run(videos: Sequence[str], real: Sequence[str], out_dir: str, *,
        portraits: Sequence[str] = (), ground_truth: Sequence[str] = (),
        emotion_labels: Sequence[str] = (), max_seconds: float | None = None) -> dict:
  """Face metrics of generated videos and of real clips (the reference rows).

  Args:
    videos: generated mp4s.
    real: real held-out clips (reference rows).
    out_dir: report directory (face_metrics.json, face_metrics.md).
    portraits: the portrait of each video (CSIM reference); default: its first frame.
    ground_truth: for self-reenactment, the real clip each video re-enacts (M-LMD).
    emotion_labels: requested emotion of each video (emotion-control accuracy).
    max_seconds: evaluate only the first seconds.
  Returns:
    {"rows": [...], "means": {group: {metric: value}}}.
  """
  for name, values in (("portraits", portraits), ("ground-truth", ground_truth),
                       ("emotion-labels", emotion_labels)):
    _check_lengths(videos, name, values)
  nets = _load_nets()  # before any decoding: a missing network fails at once
  from tqdm import tqdm

  from vasa_jax.data import face_crop
  analyzer = face_crop.FaceAnalyzer()
  rows = []
  items = [("generated", v, i) for i, v in enumerate(videos)] + [("real", r, None) for r in real]
  for group, path, i in tqdm(items, desc="face metrics"):
    res = analyse(nets, read_crops(path, max_seconds, analyzer))
    row = {"name": os.path.basename(path), "group": group, "path": path,
           "frames": len(res["embedding"])}
    if group == "generated" and portraits:
      ref = analyse(nets, read_crops(portraits[i], None, analyzer))["embedding"][0]
      row["portrait"] = portraits[i]
    else:
      ref = res["embedding"][0]
    per_frame = csim(res["embedding"], ref)
    row.update(csim=float(per_frame.mean()), csim_min=float(per_frame.min()),
               csim_per_frame=[round(float(c), 4) for c in per_frame])
    if group == "generated" and ground_truth:
      gt = analyse(nets, read_crops(ground_truth[i], max_seconds, analyzer))
      row["m_lmd"] = mouth_landmark_distance(res["mesh"], gt["mesh"])
    elif group == "real":
      static = np.repeat(res["mesh"].mean(0, keepdims=True), len(res["mesh"]), 0)
      row["m_lmd"] = mouth_landmark_distance(static, res["mesh"])  # frozen-mouth reference
    emotion = (emotion_labels[i] if group == "generated" and emotion_labels
               else _emotion_of_name(path) if group == "real" else None)
    if emotion:
      row["emotion"] = emotion
      row.update(emotion_accuracy(res["emotion"], emotion))
    rows.append(row)
  means = {}
  for group in ("generated", "real"):
    sel = [r for r in rows if r["group"] == group]
    means[group] = {k: float(np.mean([r[k] for r in sel if k in r]))
                    for k in ("csim", "csim_min", "m_lmd", "emotion_acc", "emotion_prob")
                    if any(k in r for r in sel)}
  result = {"rows": rows, "means": means}
  _write(result, out_dir)
  return result


def _write(result: dict, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  cols = (("csim", "CSIM (mean)"), ("csim_min", "CSIM (min frame)"), ("m_lmd", "M-LMD"),
          ("emotion", "emotion"), ("emotion_acc", "emotion acc"), ("emotion_prob", "emotion prob"))

  def fmt(v):
    return v if isinstance(v, str) else "" if v is None else f"{v:.4f}"

  lines = ["# Face metrics", "",
           "CSIM: MobileFaceNet cosine to the portrait (real clips: to their first frame). "
           "M-LMD: lip landmark distance to the re-enacted real clip (real clips: a frozen "
           "mouth's distance). Emotion: share of frames the emotion network labels as asked.", "",
           "| video | group | frames | " + " | ".join(c for _, c in cols) + " |",
           "|---|---|---|" + "---|" * len(cols)]
  for r in result["rows"]:
    lines.append(f"| {r['name']} | {r['group']} | {r['frames']} | "
                 + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |")
  for group, m in result["means"].items():
    lines.append(f"| **mean** | {group} | | " + " | ".join(fmt(m.get(k)) for k, _ in cols)
                 + " |")
  with open(os.path.join(out_dir, JSON_NAME), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out_dir, MD_NAME), "w") as f:
    f.write("\n".join(lines) + "\n")
