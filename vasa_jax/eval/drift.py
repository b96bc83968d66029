"""Drift of generated motion over a long clip, without rendering (issue 18).

Stage 2 samples normalised [z_pose, z_dyn] (training mean 0, std 1 per dimension). A sampler that
drifts moves the level of the motion away from the training range over time (the pose walks,
the head turns or grows) and the dynamics freeze (the mouth stops moving); both show in the
normalised motion long before anyone renders a frame:

  pose_level    mean |per-dimension mean| of the 6 pose dimensions over a segment, in training
                std (0 = the training mean pose)
  pose_max      the largest |value| of a pose dimension in the segment, in training std
  dyn_spread    mean per-dimension std of z_dyn over a segment (how much the face moves)
  rms           root mean square of the whole motion vector
"""
from __future__ import annotations

import numpy as np

from vasa_jax.constants import FPS

POSE_DIM = 6


def segment_motion_stats(motion: np.ndarray, lo: float, hi: float, fps: float = FPS,
                         pose_dim: int = POSE_DIM) -> dict:
  """The figures of the module docstring over frames [lo, hi) s of (T, Dm) normalised motion."""
  seg = np.asarray(motion, np.float64)[int(round(lo * fps)):int(round(hi * fps))]
  if not len(seg):
    raise ValueError(f"No motion frames in [{lo}, {hi}) s of a {len(motion) / fps:.1f} s clip.")
  pose, dyn = seg[:, :pose_dim], seg[:, pose_dim:]
  return {"pose_level": float(np.abs(pose.mean(0)).mean()),
          "pose_max": float(np.abs(pose).max()),
          "dyn_spread": float(dyn.std(0).mean()),
          "rms": float(np.sqrt((seg ** 2).mean()))}


def motion_drift(motion: np.ndarray, fps: float = FPS, seconds: float = 10.0) -> dict:
  """{"first", "last"} segment stats of `seconds` each, and "segments": every `seconds` in
  between (to see a walk, not only its end)."""
  duration = len(motion) / fps
  starts = np.arange(0.0, duration - seconds + 1e-9, seconds)
  return {"first": segment_motion_stats(motion, 0.0, seconds, fps),
          "last": segment_motion_stats(motion, duration - seconds, duration, fps),
          "segments": [segment_motion_stats(motion, s, s + seconds, fps) for s in starts]}


__all__ = ["motion_drift", "segment_motion_stats"]
