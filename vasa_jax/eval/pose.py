"""Head-motion figures from a head-pose series: VASA-1's delta-P and the pose spread.

Definitions (angles in degrees; `head_pose` is (T, 3) yaw, pitch, roll in radians, as
`face_labels.label_clip` returns it, re-extracted from the frames of the video):
- delta-P (VASA-1, sec. 4.1: "the average difference of the head pose angles between adjacent
  frames"):
      delta_p = mean over t = 1..T-1 and k in {yaw, pitch, roll} of |theta_k(t) - theta_k(t-1)|
  i.e. the mean absolute frame-to-frame change, averaged over the three angles (not summed, not
  an L2 norm). Differences are wrapped into [-180, 180) degrees so a roll flipping across +-180
  does not count as a full turn. Pairs where either frame has no face (NaN) are skipped. At
  25 fps VASA-1 reports 0.405 for real video and 0.316 for its own output (OneMin-32). It counts
  landmark jitter as motion, so compare it only between videos measured with the same tracker.
- Pose spread: the standard deviation over time of each angle (how far the head roams), and its
  mean over the three angles.
"""
from __future__ import annotations

import numpy as np

ANGLES = ("yaw", "pitch", "roll")


def _as_pose(head_pose) -> np.ndarray:
  p = np.asarray(head_pose, np.float64)
  if p.ndim != 2 or p.shape[-1] != 3:
    raise ValueError(f"head_pose must be (T, 3) yaw, pitch, roll in radians, got {p.shape}")
  return p


def delta_p_per_angle(head_pose) -> np.ndarray:
  """Mean absolute adjacent-frame change of each angle.

  Args:
    head_pose: (T, 3) yaw, pitch, roll in radians (NaN rows = no face).

  Returns:
    (3,) float64 degrees per frame; NaN where fewer than one valid adjacent pair exists.
  """
  p = np.degrees(_as_pose(head_pose))
  d = np.diff(p, axis=0)  # (T-1, 3)
  d = (d + 180.0) % 360.0 - 180.0
  out = np.full(3, np.nan)
  for k in range(3):
    ok = np.isfinite(d[:, k])
    if ok.any():
      out[k] = np.abs(d[ok, k]).mean()
  return out


def delta_p(head_pose) -> float:
  """VASA-1's delta-P: mean |adjacent-frame angle change| in degrees, averaged over the 3 angles.

  Args:
    head_pose: (T, 3) yaw, pitch, roll in radians.

  Returns:
    float degrees (NaN when the series has no valid adjacent pair).
  """
  per = delta_p_per_angle(head_pose)
  return float(per.mean()) if np.isfinite(per).all() else float("nan")


def pose_spread(head_pose) -> np.ndarray:
  """Standard deviation of each angle over time.

  Args:
    head_pose: (T, 3) yaw, pitch, roll in radians (NaN rows ignored).

  Returns:
    (3,) float64 degrees.
  """
  p = np.degrees(_as_pose(head_pose))
  out = np.full(3, np.nan)
  for k in range(3):
    ok = np.isfinite(p[:, k])
    if ok.any():
      # Centre on the circular mean so the spread of a roll near +-180 is not inflated.
      ref = np.degrees(np.angle(np.exp(1j * np.radians(p[ok, k])).mean()))
      out[k] = np.std((p[ok, k] - ref + 180.0) % 360.0 - 180.0)
  return out


def pose_scores(head_pose) -> dict:
  """All pose figures of one clip.

  Args:
    head_pose: (T, 3) yaw, pitch, roll in radians.

  Returns:
    dict: `delta_p` (deg), `delta_p_yaw/_pitch/_roll`, `pose_std` (deg, mean of the three),
    `pose_std_yaw/_pitch/_roll`.
  """
  per = delta_p_per_angle(head_pose)
  spread = pose_spread(head_pose)
  out = {"delta_p": float(per.mean()) if np.isfinite(per).all() else float("nan"),
         "pose_std": float(spread.mean()) if np.isfinite(spread).all() else float("nan")}
  for k, name in enumerate(ANGLES):
    out[f"delta_p_{name}"] = float(per[k])
    out[f"pose_std_{name}"] = float(spread[k])
  return out


__all__ = ["ANGLES", "delta_p", "delta_p_per_angle", "pose_scores", "pose_spread"]
