"""Training-data augmentations, numpy on the host (inside grain's element functions): stage 1's
colour jitter and small zoom/shift, stage 2's recording-channel change of log-mel features."""
from __future__ import annotations

import numpy as np
from PIL import Image

from vasa_jax.data.audio_features import LOG_EPS


def colour_jitter(frames: np.ndarray, rng: np.random.Generator, strength: float = 1.0
                  ) -> np.ndarray:
  """One random brightness/contrast/saturation/channel-gain change applied to all `frames`.

  Args:
    frames: (n, H, W, 3) uint8.
    rng: numpy generator.
    strength: scales every jitter range.

  Returns:
    (n, H, W, 3) uint8.
  """
  x = frames.astype(np.float32) / 255.0
  brightness = rng.uniform(-0.1, 0.1) * strength
  contrast = 1.0 + rng.uniform(-0.2, 0.2) * strength
  saturation = 1.0 + rng.uniform(-0.3, 0.3) * strength
  gains = 1.0 + rng.uniform(-0.05, 0.05, 3) * strength
  grey = x.mean(-1, keepdims=True)
  x = grey + (x - grey) * saturation
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  x = (x - mean) * contrast + mean + brightness
  x = x * gains
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def scale_shift(frame: np.ndarray, rng: np.random.Generator, max_scale: float = 0.06,
                max_shift: float = 0.04, return_transform: bool = False):
  """A small random zoom and translation of one (H, W, 3) uint8 frame (edges replicated).

  A point at (x, y) (shares of the side) moves to (0.5 + s (x - 0.5) + dx, 0.5 + s (y - 0.5) + dy).

  Returns the frame, or (frame, (s, dx, dy)) with `return_transform` (dx, dy as shares of the
  side).
  """
  h, w = frame.shape[:2]
  s = 1.0 + rng.uniform(-max_scale, max_scale)
  dx, dy = rng.uniform(-max_shift, max_shift, 2) * (w, h)
  # PIL's affine maps output (x, y) to input (a x + b y + c, d x + e y + f).
  cx, cy = w / 2, h / 2
  coeffs = (1 / s, 0, cx - (cx + dx) / s, 0, 1 / s, cy - (cy + dy) / s)
  # Replicate the edges so the zoomed-out / shifted border is not black.
  ph, pw = max(2, int(0.15 * h)), max(2, int(0.15 * w))
  padded = np.pad(frame, ((ph, ph), (pw, pw), (0, 0)), mode="edge")
  coeffs = (coeffs[0], 0, coeffs[2] + pw, 0, coeffs[4], coeffs[5] + ph)
  out = np.asarray(Image.fromarray(padded).transform((w, h), Image.AFFINE, coeffs,
                                                     Image.BILINEAR), np.uint8)
  return (out, (s, dx / w, dy / h)) if return_transform else out


def move_box(box: np.ndarray, transform) -> np.ndarray:
  """(..., 4) (cx, cy, half w, half h) boxes in shares of the side, after a `scale_shift`."""
  s, dx, dy = transform
  box = np.array(box, np.float32)
  box[..., 0] = 0.5 + s * (box[..., 0] - 0.5) + dx
  box[..., 1] = 0.5 + s * (box[..., 1] - 0.5) + dy
  box[..., 2:] *= s
  return box


def augment_log_mel(feats: np.ndarray, rng: np.random.Generator, gain: float, tilt: float,
                    freq_mask: int) -> np.ndarray:
  """One random recording-channel change of log-mel features, in the power domain.

  A stage 2 trained on a few hundred clips otherwise tells clips apart by their loudness and
  microphone colour and learns their motion by heart: on unseen speakers its mouth did not
  follow the speech (`vasa-jax eval-motion`). The change keeps what the lips follow, the timing
  of loudness within the window: an overall gain of up to +-`gain` nats, a linear spectral tilt
  of up to +-`tilt` nats from the lowest to the highest band, and one run of up to `freq_mask`
  bands set to silence (SpecAugment's frequency mask).

  Args:
    feats: (..., 80) log(mel power + LOG_EPS) (`audio_features.log_mel`); one draw for all of it.
    rng: generator.
    gain, tilt: largest changes (natural log of power); freq_mask: widest masked run (bands).
  Returns:
    float32 array of the shape of `feats`.
  """
  n_mels = feats.shape[-1]
  shift = (rng.uniform(-gain, gain) +
           rng.uniform(-tilt, tilt) * np.linspace(-1.0, 1.0, n_mels))  # (80,)
  keep = np.ones((n_mels,), np.float64)
  width = int(rng.integers(0, freq_mask + 1)) if freq_mask > 0 else 0
  if width:
    lo = int(rng.integers(0, n_mels - width + 1))
    keep[lo:lo + width] = 0.0
  power = np.maximum(np.exp(np.asarray(feats, np.float64)) - LOG_EPS, 0.0)
  return np.log(power * np.exp(shift) * keep + LOG_EPS).astype(np.float32)
