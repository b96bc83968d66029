"""Synthetic clips with the record layout of real shards (tests, smoke runs, `data.synthetic`):
drawn faces with a moving mouth for stage 1, smooth random motion with audio for stage 2."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vasa_jax.data.clip_labels import EMOTIONS


def _ellipse(yy, xx, cy, cx, ry, rx):
  return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


class SyntheticFaces:
  """Cartoon talking faces: a coloured head ellipse per person that moves, turns, blinks and
  opens its mouth over time, on a per-clip background. Frames are drawn on demand.

  Args:
    num_clips: clips (two clips per person).
    num_frames: frames per clip.
    resolution: R.
    seed: changes colours and motion.
  """

  def __init__(self, num_clips: int, num_frames: int, resolution: int, seed: int = 0):
    self.resolution = int(resolution)
    self.num_frames = int(num_frames)
    self.seed = int(seed)
    rng = np.random.default_rng(seed)
    self._bg = rng.uniform(0, 255, (num_clips, 3))
    persons = max(1, (num_clips + 1) // 2)
    self._skin = rng.uniform(60, 240, (persons, 3))
    self._phase = rng.uniform(0, 2 * np.pi, (num_clips, 4))
    self.entries = [{"clip": f"synthetic_{seed}_{k:03d}", "person": f"synthetic_person_{k // 2}",
                     "frames": self.num_frames, "has_speech": True} for k in range(num_clips)]

  def __len__(self) -> int:
    return len(self.entries)

  def _frame(self, k: int, t: int) -> np.ndarray:
    r = self.resolution
    yy, xx = np.mgrid[0:r, 0:r].astype(np.float32) / r
    ph = self._phase[k]
    cx = 0.5 + 0.06 * np.sin(0.3 * t + ph[0])  # head translation
    cy = 0.5 + 0.04 * np.sin(0.2 * t + ph[1])
    turn = 0.05 * np.sin(0.25 * t + ph[2])  # "yaw": features slide sideways
    mouth = 0.015 + 0.035 * (0.5 + 0.5 * np.sin(0.9 * t + ph[3]))  # mouth opening
    img = np.empty((r, r, 3), np.float32)
    img[:] = self._bg[k]
    img[_ellipse(yy, xx, cy, cx, 0.3, 0.22)] = self._skin[int(self.entries[k]["person"]
                                                             .rsplit("_", 1)[1])]
    eye_h = 0.02 if (t + k) % 12 else 0.004  # a blink every 12 frames
    for side in (-1, 1):
      img[_ellipse(yy, xx, cy - 0.08, cx + side * 0.08 + turn, eye_h, 0.035)] = 20.0
    img[_ellipse(yy, xx, cy + 0.13, cx + turn, mouth, 0.08)] = (150.0, 30.0, 40.0)
    return img.astype(np.uint8)

  def frames(self, k: int, indices: Sequence[int]) -> np.ndarray:
    return np.stack([self._frame(k, int(t)) for t in indices])


class SyntheticMotion:
  """Smooth random motion with audio features that predict it, as motion records in memory.

  Each clip has motion (T, Dm) made of a few sinusoids; its log-mel rows are a fixed spectral
  pattern scaled by the first dynamics dimension (the "mouth"), so a model can learn audio ->
  motion. Gaze, face scale and (for some clips) an emotion label vary per clip.
  """

  def __init__(self, num_clips: int, num_frames: int, z_pose_dim: int, z_dyn_dim: int,
               seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames, dtype=np.float32)[:, None]
    dm = z_pose_dim + z_dyn_dim
    template = rng.normal(0, 1, (4, 80)).astype(np.float32)
    self.entries, self._records = [], []
    for k in range(num_clips):
      freq = rng.uniform(0.05, 0.4, (1, dm))
      phase = rng.uniform(0, 2 * np.pi, (1, dm))
      amp = rng.uniform(0.2, 1.0, (1, dm))
      motion = (amp * np.sin(freq * t + phase)).astype(np.float32)  # (T, Dm)
      mouth = motion[:, z_pose_dim]
      feats = (-6.0 + mouth[:, None, None] * template[None]
               + 0.1 * rng.normal(0, 1, (num_frames, 4, 80))).astype(np.float32)
      # Every third clip carries no emotion label (emotion_mask False), like most real clips.
      name = f"synthetic_{seed}_{k:03d}" + ("" if k % 3 == 2 else f"_{EMOTIONS[k % 8]}")
      self._records.append({
          "clip": name, "person": f"synthetic_person_{k // 2}",
          "z_pose": motion[:, :z_pose_dim], "z_dyn": motion[:, z_pose_dim:],
          "audio_feats": feats,
          "gaze": np.tile(rng.normal(0, 0.1, (1, 2)), (num_frames, 1)).astype(np.float32),
          "face_scale": np.full((num_frames,), rng.uniform(0.2, 0.4), np.float32),
          "has_speech": True,
      })
      self.entries.append({"clip": name, "person": f"synthetic_person_{k // 2}",
                           "frames": num_frames, "has_speech": True})
    allm = np.concatenate([np.concatenate([r["z_pose"], r["z_dyn"]], -1)
                           for r in self._records])
    self.stats = {"mean": allm.mean(0).tolist(), "std": allm.std(0).tolist()}
    scales = np.concatenate([r["face_scale"] for r in self._records])
    self.face_scale_stats = (float(scales.mean()), float(scales.std()))

  def __len__(self) -> int:
    return len(self.entries)

  def __getitem__(self, k: int) -> dict:
    return self._records[k]
