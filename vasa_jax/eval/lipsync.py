"""Weight-free lip-sync measures: mouth opening against the speech-band energy of the audio.

No downloaded network (no SyncNet): the mouth opening comes from the face mesh
(`face_labels.label_clip(...)["mouth_open"]`, inner-lip gap / inter-ocular distance) and the
audio side is the per-frame log energy of the 300-3000 Hz band
(`audio_features.energy_envelope`). Speech opens the mouth when it is loud, so the two series
correlate in real footage; the best-matching time offset tells whether the lips lead or trail.

Definitions (T frames at `fps`):
- Lag: `corr(lag) = pearson(mouth[t + lag], envelope[t])` over the frames where both exist.
  **Positive lag = the mouth moves after the audio** (the mouth at frame t + lag matches the
  sound at frame t); negative = the mouth leads the audio. The reported lag is the argmax of
  `corr(lag)` for `lag` in [-max_lag, max_lag] (a maximum, not of |corr|: anti-correlation is
  not sync).
- Raw: the correlation of the two series as they are. Slow trends (loudness changes, a head that
  moves closer to the camera) dominate it, so it barely separates a clip's own audio from another
  clip's audio.
- Detrended: a centred moving average of 1 s (`fps` frames, rounded to odd) is removed from both
  series first, leaving the syllable-rate (2-8 Hz) part where lips follow speech; this figure
  does separate matched from mismatched audio.
- Spread: the standard deviation of the mouth opening (raw and detrended). A frozen or barely
  moving mouth can still correlate with noise, so a correlation is only meaningful next to a
  spread comparable to real footage.
- A series with no variance (a frozen mouth, digital silence) has correlation 0 at every lag: it
  carries no sync.

Frames without a face (NaN in `mouth_open`) are left out of the correlations; for the moving
average they are filled by linear interpolation.
"""
from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from vasa_jax.constants import FPS, SAMPLE_RATE
from vasa_jax.data import face_crop, face_labels, media
from vasa_jax.data.audio_features import energy_envelope
from vasa_jax.errors import VasaInputError
from vasa_jax.eval import pose as pose_lib

# Fewer overlapping frames than this at a lag give no correlation (0): too little evidence.
MIN_OVERLAP = 8


def _as_series(x, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 1:
    raise ValueError(f"{name} must be a 1-D per-frame series (T,), got shape {x.shape}")
  return x


def _fill_nan(x: np.ndarray) -> np.ndarray:
  """Linear interpolation over NaN/inf entries (ends held); all-NaN stays all-NaN."""
  ok = np.isfinite(x)
  if ok.all() or not ok.any():
    return x.copy()
  t = np.arange(x.shape[0])
  out = x.copy()
  out[~ok] = np.interp(t[~ok], t[ok], x[ok])
  return out


def detrend(x: np.ndarray, fps: float = FPS, seconds: float = 1.0) -> np.ndarray:
  """Removes a centred moving average of `seconds` from a per-frame series.

  Args:
    x: (T,) series; NaN entries are interpolated for the average and stay NaN in the output.
    fps: frame rate.
    seconds: window length (rounded to an odd number of frames, at least 3).

  Returns:
    (T,) float64 `x - moving_average(x)`, edges averaged with the nearest value repeated.
  """
  x = _as_series(x, "series")
  win = max(3, int(round(seconds * fps)) | 1)
  filled = _fill_nan(x)
  if not np.isfinite(filled).any():
    return filled
  trend = ndimage.uniform_filter1d(filled, size=win, mode="nearest")
  return x - trend


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
  """Pearson correlation over pairs where both are finite; 0 when either has no variance."""
  ok = np.isfinite(a) & np.isfinite(b)
  if ok.sum() < MIN_OVERLAP:
    return 0.0
  a, b = a[ok], b[ok]
  # Relative threshold: rounding noise on a constant series must not become a correlation.
  if a.std() <= 1e-9 * max(1.0, abs(a.mean())) or b.std() <= 1e-9 * max(1.0, abs(b.mean())):
    return 0.0
  a = a - a.mean()
  b = b - b.mean()
  return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def lag_curve(mouth: np.ndarray, envelope: np.ndarray, max_lag: int = 5) -> np.ndarray:
  """Correlation at each lag: entry k is `pearson(mouth[t + lag], envelope[t])`, lag = k - max_lag.

  Args:
    mouth: (T,) mouth opening.
    envelope: (T,) audio envelope (same frames).
    max_lag: largest shift in frames, both ways.

  Returns:
    (2 * max_lag + 1,) float64 correlations for lags -max_lag..max_lag.
  """
  mouth = _as_series(mouth, "mouth_open")
  envelope = _as_series(envelope, "envelope")
  t = min(mouth.shape[0], envelope.shape[0])
  out = np.zeros(2 * max_lag + 1)
  for k, lag in enumerate(range(-max_lag, max_lag + 1)):
    if lag >= 0:
      m, e = mouth[lag:t], envelope[:t - lag]
    else:
      m, e = mouth[:t + lag], envelope[-lag:t]
    out[k] = _pearson(m, e)
  return out


def _best(curve: np.ndarray, max_lag: int) -> tuple[float, int]:
  k = int(np.argmax(curve))
  return float(curve[k]), k - max_lag


def lipsync_scores(mouth_open, envelope, max_lag: int = 5, fps: float = FPS,
                   detrend_seconds: float = 1.0) -> dict:
  """Correlation of mouth opening with the audio energy envelope, raw and detrended.

  Args:
    mouth_open: (T,) mouth opening per frame (NaN where no face was found).
    envelope: (T',) log speech-band energy per frame; both series are cut to min(T, T').
    max_lag: search the best lag in [-max_lag, max_lag] frames.
    fps: frame rate (sets the detrending window in frames and `offset_s`).
    detrend_seconds: length of the centred moving average removed for the detrended figures.

  Returns:
    dict of floats/ints:
      `corr_detrended`, `lag_detrended`: best correlation of the detrended series and its lag in
        frames (positive = mouth after audio);
      `corr_raw`, `lag_raw`: the same on the raw series;
      `corr_detrended_lag0`, `corr_raw_lag0`: correlations at lag 0;
      `offset_s_detrended`: `lag_detrended / fps`;
      `mouth_std_detrended`, `mouth_std_raw`: the mouth-opening spread;
      `curve_detrended`, `curve_raw`: lists of correlations for lags -max_lag..max_lag;
      `num_frames`, `num_valid`: frames compared and frames with a face.
  """
  mouth = _as_series(mouth_open, "mouth_open")
  env = _as_series(envelope, "envelope")
  if max_lag < 0:
    raise ValueError(f"max_lag must be >= 0, got {max_lag}")
  t = min(mouth.shape[0], env.shape[0])
  mouth, env = mouth[:t], env[:t]
  mouth_d, env_d = detrend(mouth, fps, detrend_seconds), detrend(env, fps, detrend_seconds)
  curve_raw = lag_curve(mouth, env, max_lag)
  curve_det = lag_curve(mouth_d, env_d, max_lag)
  corr_raw, lag_raw = _best(curve_raw, max_lag)
  corr_det, lag_det = _best(curve_det, max_lag)
  ok = np.isfinite(mouth)
  return {
      "corr_detrended": corr_det,
      "lag_detrended": lag_det,
      "corr_raw": corr_raw,
      "lag_raw": lag_raw,
      "corr_detrended_lag0": float(curve_det[max_lag]),
      "corr_raw_lag0": float(curve_raw[max_lag]),
      "offset_s_detrended": lag_det / float(fps),
      "mouth_std_detrended": float(np.std(mouth_d[ok])) if ok.any() else float("nan"),
      "mouth_std_raw": float(np.std(mouth[ok])) if ok.any() else float("nan"),
      "curve_detrended": [float(c) for c in curve_det],
      "curve_raw": [float(c) for c in curve_raw],
      "num_frames": int(t),
      "num_valid": int(ok.sum()),
  }


def fit_length(x: np.ndarray, t: int) -> np.ndarray:
  """Cuts a per-frame series to T frames or pads it with NaN (frames past the end of the audio
  are then left out of the correlations instead of faking a constant envelope)."""
  if x.shape[0] >= t:
    return x[:t]
  return np.concatenate([x, np.full(t - x.shape[0], np.nan, x.dtype)])


def analyze_clip(frames: np.ndarray, audio: np.ndarray, *, fps: float = FPS,
                 analyzer=None, resolution: int = 256, source: str = "<array>") -> dict:
  """Per-frame series of one clip: mouth opening, head pose, audio envelope, face found.

  Args:
    frames: (T, H, W, 3) uint8 at `fps`.
    audio: (N,) float32 mono 16 kHz.
    fps: frame rate.
    analyzer: a `face_crop.FaceAnalyzer` to reuse (one is created otherwise).
    resolution: face crop side used for the landmarks.
    source: name for messages.

  Returns:
    dict with (T,) float64 `mouth_open` (NaN where no face), (T, 3) `head_pose` radians (NaN rows
    where no face), (T,) `envelope` (NaN past the end of the audio), (T,) bool `detected`.
  """
  analyzer = analyzer or face_crop.FaceAnalyzer()
  crop = face_crop.crop_clip(frames, resolution, analyzer=analyzer, source=source)
  labels = face_labels.label_clip(crop.landmarks, resolution)
  detected = np.asarray(crop.detected, bool)
  mouth = np.asarray(labels["mouth_open"], np.float64).copy()
  pose = np.asarray(labels["head_pose"], np.float64).copy()
  mouth[~detected] = np.nan
  pose[~detected] = np.nan
  env = fit_length(np.asarray(energy_envelope(audio, fps=fps), np.float64), len(frames))
  return {"mouth_open": mouth, "head_pose": pose, "envelope": env, "detected": detected}


def evaluate_video(path, analyzer=None, *, max_seconds: float | None = None,
                   audio_path=None, max_lag: int = 5, resolution: int = 256,
                   max_side: int | None = 960) -> dict:
  """Lip-sync and pose figures of one talking-face video with its own audio track.

  Args:
    path: a video with an audio stream (generated or real).
    analyzer: a `face_crop.FaceAnalyzer` to reuse.
    max_seconds: evaluate only the first seconds (None: all).
    audio_path: take the audio from this file instead (e.g. a clip shipped as mp4 + wav).
    max_lag: lag search range in frames.
    resolution: face crop side for the landmarks.
    max_side: decode frames downscaled so the longer side is at most this (saves memory and time
      on HD sources; talking-head faces keep far more pixels than the 192 px mesh input).

  Returns:
    dict: the `lipsync_scores` entries, the `pose.pose_scores` entries, `face_found_frac`,
    `num_frames`, `fps`, `path`, and `series` (`mouth_open`, `envelope`, `head_pose` as lists,
    NaN where no face) for plots.

  Raises:
    VasaInputError: the video has no audio track (naming it), or cannot be read.
    NoFaceError: no face in most of the clip.
  """
  path = os.fspath(path)
  video = media.read_video(path, fps=float(FPS), with_audio=audio_path is None,
                           max_side=max_side)
  audio = video.audio if audio_path is None else media.read_audio(audio_path)
  if audio is None:
    raise VasaInputError(f"{path!r} has no audio track, so its lip sync cannot be measured. "
                         f"Evaluate videos written with their driving audio (vasa-jax generate "
                         f"muxes it), or pass the audio file separately.")
  frames = video.frames
  if max_seconds is not None:
    n = max(1, int(round(max_seconds * video.fps)))
    frames = frames[:n]
    audio = audio[:int(round(n * SAMPLE_RATE / video.fps))]
  series = analyze_clip(frames, audio, fps=video.fps, analyzer=analyzer, resolution=resolution,
                        source=path)
  out = dict(lipsync_scores(series["mouth_open"], series["envelope"], max_lag, video.fps))
  out.update(pose_lib.pose_scores(series["head_pose"]))
  out["face_found_frac"] = float(series["detected"].mean())
  out["num_frames"] = int(len(frames))
  out["fps"] = float(video.fps)
  out["path"] = path
  out["series"] = {k: series[k].tolist() for k in ("mouth_open", "envelope", "head_pose")}
  return out


__all__ = ["MIN_OVERLAP", "analyze_clip", "detrend", "evaluate_video", "fit_length",
           "lag_curve", "lipsync_scores"]
