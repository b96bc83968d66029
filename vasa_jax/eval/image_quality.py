"""Image quality for self-reenactment: PSNR, SSIM and the mouth landmark distance (M-LMD).

Self-reenactment = the model re-renders a real clip from its own first frame and its own motion,
so every generated frame has a ground-truth frame of the same crop to compare against.

- PSNR: 10 log10(255^2 / MSE) over all pixels and channels of a uint8 RGB frame; identical frames
  give +inf (the mean over frames then skips the inf frames and `psnr_identical_frac` says how
  many there were).
- SSIM: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma),
  K1 = 0.01, K2 = 0.03, L = 255, population (not sample) covariances, computed per RGB channel
  on float64 and averaged over channels and over the valid interior (a 5-pixel border is cut,
  where the window hangs over the edge): `skimage.metrics.structural_similarity(a, b,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
  channel_axis=-1)`.
- M-LMD: mean Euclidean (x, y) distance between the mouth landmarks of the generated frame and
  those of the real frame, averaged over the points and frames, divided by the frame (crop) side,
  so 0.01 = 1 % of the crop. The mouth is MediaPipe face mesh's lip contour, `FACEMESH_LIPS`: 20
  outer-lip points and 20 inner-lip points (`MOUTH_OUTER`, `MOUTH_INNER` below). Absolute
  positions are compared (no alignment), so a head-pose error also shows up in M-LMD, as in the
  LMD of Chen et al. 2019.
"""
from __future__ import annotations

import numpy as np
from skimage import metrics

from vasa_jax.data.face_crop import FaceAnalyzer
from vasa_jax.errors import NoFaceError, VasaInputError

# MediaPipe face mesh lip contour (FACEMESH_LIPS), clockwise from the image-left mouth corner.
MOUTH_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39,
               40, 185)
MOUTH_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81,
               80, 191)
MOUTH = MOUTH_OUTER + MOUTH_INNER



def _pair(a, b, name: str = "frames") -> tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape:
    raise VasaInputError(f"{name}: generated and real shapes differ: {a.shape} vs {b.shape}. "
                         f"Evaluate at the same resolution and number of frames.")
  if a.shape[-1] != 3 or a.ndim not in (3, 4):
    raise VasaInputError(f"{name}: expected RGB images (H, W, 3) or (T, H, W, 3), got {a.shape}.")
  return a, b


def psnr(a, b, data_range: float = 255.0) -> np.ndarray | float:
  """Peak signal-to-noise ratio of uint8 RGB images (`skimage.metrics.peak_signal_noise_ratio`).

  Args:
    a, b: (H, W, 3) or (T, H, W, 3) images of equal shape.
    data_range: the peak value (255 for uint8).

  Returns:
    float dB for one image, (T,) float64 per frame for a batch; +inf for identical images.
  """
  a, b = _pair(a, b)
  with np.errstate(divide="ignore"):  # identical frames: MSE 0 -> +inf, reported as such
    out = np.array([metrics.peak_signal_noise_ratio(x, y, data_range=data_range)
                    for x, y in zip(a.reshape((-1,) + a.shape[-3:]),
                                    b.reshape((-1,) + b.shape[-3:]))])
  return float(out[0]) if a.ndim == 3 else out


def ssim(a, b, data_range: float = 255.0) -> np.ndarray | float:
  """Structural similarity with a Gaussian window (see the module docstring), from
  `skimage.metrics.structural_similarity`.

  Args:
    a, b: (H, W, 3) or (T, H, W, 3) uint8 RGB images of equal shape.
    data_range: the peak value.

  Returns:
    float for one image, (T,) float64 per frame for a batch; 1.0 for identical images.
  """
  a, b = _pair(a, b)
  out = np.array([metrics.structural_similarity(
      x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
      data_range=data_range, channel_axis=-1)
      for x, y in zip(a.reshape((-1,) + a.shape[-3:]), b.reshape((-1,) + b.shape[-3:]))])
  return float(out[0]) if a.ndim == 3 else out


def mouth_lmd(landmarks_gen, landmarks_real, image_size: float) -> np.ndarray:
  """Per-frame mouth landmark distance, normalised by the crop side.

  Args:
    landmarks_gen: (T, 478, >=2) or (T, 468, >=2) face-mesh landmarks of the generated frames,
      in pixels.
    landmarks_real: the same for the real frames.
    image_size: crop side in pixels.

  Returns:
    (T,) float64: mean over the 40 `MOUTH` points of the (x, y) distance / image_size.
  """
  g = np.asarray(landmarks_gen, np.float64)
  r = np.asarray(landmarks_real, np.float64)
  if g.shape != r.shape or g.ndim != 3 or g.shape[1] < 468 or g.shape[2] < 2:
    raise ValueError(f"landmarks must be (T, 468 or 478, >=2) of equal shape, got {g.shape} and "
                     f"{r.shape}")
  idx = np.asarray(MOUTH)
  d = np.linalg.norm(g[:, idx, :2] - r[:, idx, :2], axis=-1)  # (T, 40)
  return d.mean(axis=-1) / float(image_size)


def frame_landmarks(frames: np.ndarray, analyzer, reference: np.ndarray | None = None,
                    source: str = "<array>") -> tuple[np.ndarray, list]:
  """Face-mesh landmarks of every frame, each frame on its own (no temporal tracking).

  Args:
    frames: (T, H, W, 3) uint8.
    analyzer: a `face_crop.FaceAnalyzer`.
    reference: optional list of T detections (from `frame_landmarks` of another clip) to use as
      the mesh ROI where this clip has no detection; without it, a missed frame reuses the last
      detection.
    source: name for messages.

  Returns:
    (T, 478, 3) float32 landmarks in frame pixels, and the list of T detections used.

  Raises:
    NoFaceError: no face in any frame and no reference.
  """
  dets = []
  last = None
  for t, frame in enumerate(frames):
    found = analyzer.detect(frame)
    if found:
      last = found[0]
    elif reference is not None:
      last = reference[t]
    dets.append(last)
  if all(d is None for d in dets):
    raise NoFaceError(f"{source}: no face found in any frame; M-LMD needs the face.")
  first = next(d for d in dets if d is not None)
  dets = [d if d is not None else first for d in dets]  # leading misses take the first face
  lms = np.stack([analyzer.landmarks(frame, det) for frame, det in zip(frames, dets)])
  return lms.astype(np.float32), dets


def self_reenactment_scores(generated_frames, real_frames, analyzer=None) -> dict:
  """PSNR, SSIM and M-LMD of a self-reenacted clip against the real clip it re-renders.

  Args:
    generated_frames: (T, R, R, 3) uint8 generated face crops.
    real_frames: (T, R, R, 3) uint8 real crops of the same frames (same crop boxes).
    analyzer: a `face_crop.FaceAnalyzer` for the landmarks (one is created otherwise).

  Returns:
    dict: `psnr` (mean dB over frames with finite PSNR), `ssim` (mean), `m_lmd` (mean, fraction
    of the crop side), `psnr_identical_frac`, and the per-frame lists `psnr_per_frame`,
    `ssim_per_frame`, `m_lmd_per_frame`.
  """
  gen, real = _pair(generated_frames, real_frames, "self-reenactment frames")
  if gen.ndim == 3:
    gen, real = gen[None], real[None]
  if gen.dtype != np.uint8 or real.dtype != np.uint8:
    raise VasaInputError(f"self-reenactment frames must be uint8, got {gen.dtype} / {real.dtype}.")
  if analyzer is None:
    analyzer = FaceAnalyzer()
  p = psnr(gen, real)
  s = ssim(gen, real)
  lm_real, dets = frame_landmarks(real, analyzer, source="real frames")
  # Generated frames fall back to the real frame's detection: a garbled face still gets a mesh.
  lm_gen, _ = frame_landmarks(gen, analyzer, reference=dets, source="generated frames")
  m = mouth_lmd(lm_gen, lm_real, gen.shape[2])
  finite = np.isfinite(p)
  return {
      "psnr": float(p[finite].mean()) if finite.any() else float("inf"),
      "psnr_identical_frac": float((~finite).mean()),
      "ssim": float(s.mean()),
      "m_lmd": float(m.mean()),
      "psnr_per_frame": [float(x) for x in p],
      "ssim_per_frame": [float(x) for x in s],
      "m_lmd_per_frame": [float(x) for x in m],
  }


__all__ = ["MOUTH", "MOUTH_INNER", "MOUTH_OUTER", "frame_landmarks", "mouth_lmd", "psnr",
           "self_reenactment_scores", "ssim"]
