"""Per-frame face labels from 478 MediaPipe landmarks: head pose, gaze, face scale, mouth opening.

All functions are pure numpy on landmarks (T, 478, 3) in crop pixels (x right, y down, z in x's
scale), as written by `vasa_jax.data.face_crop`.

Angle conventions (radians), shared by head pose and gaze. Rotations act on a head frame whose
x axis points to image right, y up, z from the face towards the camera (the frontal face has
R = I); R = Rz(roll) @ Ry(yaw) @ Rx(pitch) (see `euler_to_matrix`):
  yaw > 0: the nose turns towards image right (the subject turns to their own left);
  pitch > 0: the nose turns down (the subject looks down);
  roll > 0: the face rotates counter-clockwise in the image (the subject's head tilts towards
    their right shoulder, image left).
Mirroring the image left-right flips the sign of yaw and roll and keeps pitch.
Gaze (theta, phi) uses the same frame: theta > 0 looks towards image right, phi > 0 looks down;
a frontal face looking into the camera has gaze (0, 0), and a head with centred eyes has gaze
(yaw, pitch) when roll is 0.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.spatial.transform import Rotation

from vasa_jax.models import motion_labels

# Rigid points of MediaPipe's canonical face model (canonical_face_model.obj of
# mediapipe/modules/face_geometry, centimetres, x right, y up, z towards the camera): eye corners,
# nose bridge, nose tip, subnasale, nose wings and mid forehead. The chin (152) and mouth corners
# (61, 291) are left out on purpose: they move with the jaw and the lips while talking, which
# would leak speech into the pitch estimate.
_POSE_POINTS = {
    33: (-4.445859, 2.663991, 3.173422),    # image-left eye, outer corner
    133: (-1.856432, 2.585245, 3.757904),   # image-left eye, inner corner
    362: (1.856432, 2.585245, 3.757904),    # image-right eye, inner corner
    263: (4.445859, 2.663991, 3.173422),    # image-right eye, outer corner
    168: (0.0, 3.271027, 5.236015),         # between the eyes
    6: (0.0, 2.473255, 5.788627),           # nose bridge
    1: (0.0, -1.126865, 7.475604),          # nose tip
    2: (0.0, -2.089024, 6.058267),          # below the nose
    98: (-1.405627, -1.714196, 5.241087),   # image-left nose wing
    327: (1.405627, -1.714196, 5.241087),   # image-right nose wing
    151: (0.0, 6.545390, 5.027311),         # mid forehead
}
POSE_INDICES = np.array(list(_POSE_POINTS), np.int64)
POSE_MODEL = np.array(list(_POSE_POINTS.values()), np.float64)  # (P, 3) cm
# Outer eye corner distance of the canonical model (cm), the unit of `face_scale`.
_MODEL_IOD = float(np.linalg.norm(POSE_MODEL[3] - POSE_MODEL[0]))

# Eyes: corners (image-left corner first) and iris centre; the iris block order follows
# face_crop (468-472 belong to the eye around 33/133, 473-477 to the eye around 362/263).
_EYES = ((33, 133, 468), (362, 263, 473))
# Generic adult eye (cm, head frame, y up): eyeball radius, and the eyeball centre relative to
# the midpoint of the eye corners. Depth: the canonical model's corners and lids put the iris
# about 0.5 cm in front of the corners. Height: the iris of a straight-looking eye sits above the
# corner line; 0.17 cm makes the 12 camera-facing portraits in ../shared/data/portraits (and
# their mirror images) look at the camera on average (they read phi = -8 deg without it).
EYEBALL_RADIUS = 1.2
EYEBALL_CENTRE = (0.0, 0.17, -0.7)
_LIP_INNER = (13, 14)  # upper / lower inner lip, mid line
_LIP_OUTER = (61, 291, 0, 17)  # mouth corners, top of the upper lip, bottom of the lower lip


def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
  """Rotation matrices from (yaw, pitch, roll).

  Args:
    angles: (..., 3) yaw, pitch, roll in radians (module docstring convention).

  Returns:
    (..., 3, 3) R = Rz(roll) @ Ry(yaw) @ Rx(pitch), acting on head-frame column vectors.
  """
  angles = np.asarray(angles, np.float64)
  # Intrinsic Z-Y-X (capital letters) composes Rz(roll) @ Ry(yaw) @ Rx(pitch).
  zyx = np.stack([angles[..., 2], angles[..., 0], angles[..., 1]], -1)
  return Rotation.from_euler("ZYX", zyx.reshape(-1, 3)).as_matrix().reshape(
      angles.shape[:-1] + (3, 3))


def matrix_to_euler(rot: np.ndarray) -> np.ndarray:
  """Inverse of `euler_to_matrix` (yaw in [-pi/2, pi/2]).

  Args:
    rot: (..., 3, 3) rotation matrices.

  Returns:
    (..., 3) yaw, pitch, roll in radians.
  """
  rot = np.asarray(rot, np.float64)
  with warnings.catch_warnings():  # gimbal lock (yaw = +-pi/2): scipy picks pitch 0, as intended
    warnings.simplefilter("ignore", UserWarning)
    roll, yaw, pitch = Rotation.from_matrix(rot.reshape(-1, 3, 3)).as_euler("ZYX").T
  return np.stack([yaw, pitch, roll], -1).reshape(rot.shape[:-2] + (3,))


def _check(landmarks: np.ndarray) -> np.ndarray:
  lm = np.asarray(landmarks, np.float64)
  if lm.ndim != 3 or lm.shape[1:] != (478, 3):
    raise ValueError(f"landmarks must have shape (T, 478, 3), got {lm.shape}")
  return lm


def fit_pose(landmarks: np.ndarray, image_size: float) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
  """Weak-perspective (scaled orthographic) fit of the canonical face to the landmarks.

  Closed form per frame, no iterations: a least-squares affine camera M (2 x 3) maps the centred
  model points to the centred image points (y flipped up); its rows are a scaled pair of rotation
  rows, so R is the rotation nearest (SVD) to [m1; m2; m1 x m2] / s. At talking-head distances the
  perspective error of this model is small next to the generic-shape error of any PnP.

  Args:
    landmarks: (T, 478, 3) crop pixels; only x, y are used.
    image_size: crop side in pixels (coordinates are divided by it for conditioning).

  Returns:
    rot (T, 3, 3) head-to-camera rotations, scale (T,) crop pixels per model centimetre,
    centre (T, 2) image position (pixels, y down) of the model points' centroid.
  """
  lm = _check(landmarks)
  pts = lm[:, POSE_INDICES, :2] / float(image_size)  # (T, P, 2)
  pts = pts * np.array([1.0, -1.0])  # y up
  mean = pts.mean(1, keepdims=True)
  q = pts - mean  # (T, P, 2)
  model = POSE_MODEL - POSE_MODEL.mean(0)  # (P, 3)
  m = np.einsum("kp,tpj->tjk", np.linalg.pinv(model), q)  # (T, 2, 3): rows m1, m2
  n1 = np.linalg.norm(m[:, 0], axis=-1)
  n2 = np.linalg.norm(m[:, 1], axis=-1)
  scale = np.sqrt(n1 * n2)
  r3 = np.cross(m[:, 0], m[:, 1]) / scale[:, None] ** 2
  approx = np.concatenate([m / scale[:, None, None], r3[:, None]], 1)  # (T, 3, 3)
  u, _, vt = np.linalg.svd(approx)
  fix = np.ones((len(lm), 3))
  fix[:, 2] = np.sign(np.linalg.det(u @ vt))
  rot = (u * fix[:, None]) @ vt
  centre = mean[:, 0] * np.array([1.0, -1.0]) * image_size
  return rot, scale * image_size, centre


def head_pose(landmarks: np.ndarray, image_size: float) -> np.ndarray:
  """Head yaw, pitch, roll per frame.

  Args:
    landmarks: (T, 478, 3) landmarks in crop pixels.
    image_size: crop side in pixels.

  Returns:
    (T, 3) float32 yaw, pitch, roll in radians (module docstring convention).
  """
  return _pose_angles(landmarks, image_size)


def _pose_angles(landmarks: np.ndarray, image_size: float) -> np.ndarray:
  rot, _, _ = fit_pose(landmarks, image_size)
  return matrix_to_euler(rot).astype(np.float32)


def gaze(landmarks: np.ndarray, head_pose: np.ndarray | None = None,
         image_size: float = 1.0) -> np.ndarray:
  """Gaze direction per frame, in the camera frame.

  Approximation: each eye is a sphere of radius 1.2 cm whose centre sits at `EYEBALL_CENTRE`
  from the midpoint of the eye corners in the head frame (0.7 cm behind it), and the iris centre
  (468 / 473) is the point where the gaze ray leaves that sphere. Under the weak-perspective head
  fit (rotation R, scale s pixels per cm) the iris offset from the corner midpoint is
  s * [R c + radius * g]_xy, with c the eyeball centre and g the camera-frame gaze, so
  g_xy = (offset / s - [R c]_xy) / radius and g_z = sqrt(1 - |g_xy|^2) (towards the camera).
  The two eyes are averaged. Accounting for the eyeball depth matters: with the head turned, the
  iris moves in the image even when the eyes look straight ahead. Expect errors of
  several degrees (generic eye size, lid occlusion, corner landmarks); the label feeds VASA-1's
  coarse main-gaze condition.

  Args:
    landmarks: (T, 478, 3) landmarks in crop pixels.
    head_pose: (T, 3) yaw, pitch, roll (e.g. smoothed) for R; the fit's own rotation when None.
    image_size: crop side in pixels (conditioning of the head fit only).

  Returns:
    (T, 2) float32 theta (> 0 towards image right), phi (> 0 downwards), radians.
  """
  lm = _check(landmarks)
  rot, scale, _ = fit_pose(lm, image_size)
  if head_pose is not None:
    rot = euler_to_matrix(head_pose)
  centre = rot @ np.array(EYEBALL_CENTRE)  # (T, 3), y up
  directions = []
  for a, b, iris in _EYES:
    offset = lm[:, iris, :2] - (lm[:, a, :2] + lm[:, b, :2]) / 2  # (T, 2) pixels, y down
    offset = offset * np.array([1.0, -1.0]) / scale[:, None]  # cm, y up
    directions.append((offset - centre[:, :2]) / EYEBALL_RADIUS)
  g_xy = np.mean(directions, 0)
  norm = np.linalg.norm(g_xy, axis=-1, keepdims=True)
  g_xy = g_xy / np.maximum(norm, 1.0)  # an iris outside the eyeball's outline: clamp to 90 deg
  g_z = np.sqrt(np.clip(1.0 - (g_xy ** 2).sum(-1), 0.0, None))
  theta = np.arctan2(g_xy[:, 0], g_z)
  phi = np.arctan2(-g_xy[:, 1], np.hypot(g_xy[:, 0], g_z))
  return np.stack([theta, phi], -1).astype(np.float32)


def _iod_pixels(landmarks: np.ndarray, image_size: float) -> np.ndarray:
  """Frontal-equivalent outer-eye-corner distance in pixels (T,): fit scale x model distance.

  Using the pose fit's scale instead of the raw 2D corner distance keeps the value unchanged when
  the head turns (the 2D distance shrinks with cos(yaw)).
  """
  _, scale, _ = fit_pose(landmarks, image_size)
  return scale * _MODEL_IOD


def face_scale(landmarks: np.ndarray, image_size: float) -> np.ndarray:
  """Head-to-camera distance proxy: inter-ocular distance / crop size.

  Args:
    landmarks: (T, 478, 3) landmarks in crop pixels.
    image_size: crop side in pixels.

  Returns:
    (T,) float32, larger = closer (frontal-equivalent outer eye corner distance, see
    `_iod_pixels`).
  """
  return (_iod_pixels(landmarks, image_size) / float(image_size)).astype(np.float32)


def mouth_open(landmarks: np.ndarray, image_size: float = 1.0) -> np.ndarray:
  """Inner-lip gap (landmarks 13-14, 3D) / inter-ocular distance.

  Args:
    landmarks: (T, 478, 3) landmarks in crop pixels.
    image_size: crop side in pixels (conditioning only; the ratio does not depend on it).

  Returns:
    (T,) float32, about 0 for closed lips and 0.3-0.6 for a wide open mouth.
  """
  lm = _check(landmarks)
  gap = np.linalg.norm(lm[:, _LIP_INNER[0]] - lm[:, _LIP_INNER[1]], axis=-1)
  return (gap / np.maximum(_iod_pixels(lm, image_size), 1e-9)).astype(np.float32)


def main_gaze(gaze: np.ndarray, bins: int = 8) -> np.ndarray:
  """VASA-1's main gaze direction of a clip: the densest cell of a 2D gaze histogram.

  Args:
    gaze: (T, 2) theta, phi per frame (non-finite rows are ignored).
    bins: histogram cells per axis over the data's range.

  Returns:
    (2,) float32 mean gaze of the frames in the densest cell; (0, 0), looking at the camera,
    when no frame is finite.
  """
  g = np.asarray(gaze, np.float64).reshape(-1, 2)
  g = g[np.isfinite(g).all(1)]
  if not len(g):
    return np.zeros(2, np.float32)
  counts, ex, ey = np.histogram2d(g[:, 0], g[:, 1], bins=bins)
  i, j = np.unravel_index(np.argmax(counts), counts.shape)
  # Bin membership, with the last edge inclusive as histogram2d counts it.
  ix = np.clip(np.searchsorted(ex, g[:, 0], side="right") - 1, 0, bins - 1)
  iy = np.clip(np.searchsorted(ey, g[:, 1], side="right") - 1, 0, bins - 1)
  return g[(ix == i) & (iy == j)].mean(0).astype(np.float32)


def mouth_box(landmarks: np.ndarray, image_size: float, margin: float = 0.35) -> np.ndarray:
  """Box around the lips, for a loss that weights the mouth region.

  Args:
    landmarks: (T, 478, 3) landmarks in crop pixels.
    image_size: crop side in pixels.
    margin: added on each side, as a share of the mouth width (covers an opening jaw).

  Returns:
    (T, 4) float32 (centre x, centre y, half width, half height) as shares of the crop side.
  """
  lm = _check(landmarks)[:, list(_LIP_OUTER), :2] / float(image_size)  # (T, 4, 2)
  lo, hi = lm.min(1), lm.max(1)  # (T, 2)
  pad = margin * (hi[:, :1] - lo[:, :1])  # (T, 1) from the mouth width
  centre = (lo + hi) / 2
  half = (hi - lo) / 2 + pad
  return np.concatenate([centre, half], -1).astype(np.float32)


def label_clip(landmarks: np.ndarray, image_size: float) -> dict[str, np.ndarray]:
  """All labels of one clip.

  Args:
    landmarks: (T, 478, 3) landmarks in crop pixels.
    image_size: crop side in pixels.

  Returns:
    Dict of float32 arrays: `head_pose` (T, 3), `gaze` (T, 2), `face_scale` (T,),
    `mouth_open` (T,), `main_gaze` (2,).
  """
  pose = head_pose(landmarks, image_size)
  g = gaze(landmarks, pose)
  return {
      "head_pose": pose,
      "gaze": g,
      "face_scale": face_scale(landmarks, image_size),
      "mouth_open": mouth_open(landmarks, image_size),
      "main_gaze": main_gaze(g),
  }


def landmark_labels(landmarks, resolution: int, cfg) -> tuple[np.ndarray, np.ndarray]:
  """`motion_labels` vectors (T, 5) and valid (T,) of crops' (T, 478, 3) landmarks (crop pixels),
  as preprocessing labels them; all invalid for a model without `label_motion`."""
  landmarks = np.asarray(landmarks, np.float32)
  if not cfg.label_motion:
    return motion_labels.no_labels(landmarks.shape[0])
  lab = label_clip(landmarks, resolution)
  return motion_labels.motion_labels(lab["head_pose"], lab["face_scale"], lab["mouth_open"], cfg)
