"""One check of the generation controls, shared by the CLI, `Pipeline.generate/stream` and the
web app, so every caller gets the same message for the same bad value.

Out-of-range values are refused rather than clipped: a NaN guidance scale or a gaze of 1e9
radians does not fail in the model, it silently renders frames with no face. The ranges are
wide around what the model was trained on (they stop nonsense, not experiments):

  cfg_audio, cfg_gaze   finite, in [0, 10]          (paper: 0.5 and 1.0)
  gaze                  2 finite radians, each in [-pi/2, pi/2] (theta, phi)
  distance              finite, in [-5, 5]          (a z-score of face size; 0 = average)
  emotion               a name, or E finite numbers each in [-2, 2] (one-hot in training)
  mouth_scale           finite, in [0, 10]          (1 = as sampled)
  steps                 an integer in [1, 1000]
  seed                  an integer in [0, 2**32 - 1] (what `jax.random.key` takes without x64)
  render_batch          an integer >= 0             (0 = one window per decoder call)
  chunk_ms              finite, in (0, 60000]       (stream only)
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from vasa_jax.errors import VasaInputError

CFG_RANGE = (0.0, 10.0)
GAZE_LIMIT = math.pi / 2
DISTANCE_RANGE = (-5.0, 5.0)
EMOTION_RANGE = (-2.0, 2.0)
MOUTH_SCALE_RANGE = (0.0, 10.0)
MAX_STEPS = 1000
MAX_SEED = 2**32 - 1
MAX_CHUNK_MS = 60_000.0


def _label(name: str) -> str:
  """`cfg_audio (--cfg-audio)`: the Python keyword and the CLI flag, so both readers find it."""
  return f"{name} (--{name.replace('_', '-')})"


def _number(value, name: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
  try:
    x = float(value)
  except (TypeError, ValueError):
    x = float("nan")
  ok = math.isfinite(x) and (x > lo if lo_open else x >= lo) and x <= hi
  if not ok:
    left = "(" if lo_open else "["
    raise VasaInputError(f"{_label(name)} must be a finite number in {left}{lo:g}, {hi:g}], got "
                         f"{value!r}.")
  return x


def _integer(value, name: str, lo: int, hi: int | None) -> int:
  if isinstance(value, float) and value.is_integer():
    value = int(value)  # 25.0 from a JSON form is 25
  ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if ok:
    value = int(value)
    ok = value >= lo and (hi is None or value <= hi)
  if not ok:
    span = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
    raise VasaInputError(f"{_label(name)} must be an integer {span}, got {value!r}.")
  return value


def _vector(value, name: str, n: int | None, lo: float, hi: float, what: str) -> np.ndarray:
  try:
    vec = np.asarray(value, np.float64).reshape(-1)
  except (TypeError, ValueError):
    vec = np.full((1,), np.nan)
  if n is not None and vec.shape != (n,):
    raise VasaInputError(f"{_label(name)} must be {n} numbers ({what}), got {value!r}.")
  if not (np.all(np.isfinite(vec)) and np.all(vec >= lo) and np.all(vec <= hi)):
    raise VasaInputError(f"{_label(name)} must hold finite numbers in [{lo:g}, {hi:g}] ({what}), "
                         f"got {value!r}.")
  return vec.astype(np.float32)


def check_controls(*, gaze=None, distance=None, emotion=None, cfg_audio=None, cfg_gaze=None,
                   steps=None, mouth_scale=None, seed=0, render_batch=None,
                   chunk_ms=None) -> None:
  """Raises `VasaInputError` naming the first bad control; None means "the default" throughout.

  Emotion names are checked by `pipeline.parse_emotion` (it knows the model's emotion count);
  here only a numeric emotion vector's values are.
  """
  for name, value in (("cfg_audio", cfg_audio), ("cfg_gaze", cfg_gaze)):
    if value is not None:
      _number(value, name, *CFG_RANGE)
  if gaze is not None:
    _vector(gaze, "gaze", 2, -GAZE_LIMIT, GAZE_LIMIT, "theta,phi in radians")
  if distance is not None:
    _number(np.asarray(distance).reshape(-1)[0] if np.size(distance) == 1 else distance,
            "distance", *DISTANCE_RANGE)
  if emotion is not None and not isinstance(emotion, str):
    _vector(emotion, "emotion", None, *EMOTION_RANGE, "an emotion offset vector")
  elif isinstance(emotion, str) and emotion.strip():
    try:
      values = [float(v) for v in emotion.split(",")]
    except ValueError:
      values = None  # not numbers: parse_emotion names the valid emotions
    if values is not None:
      _vector(values, "emotion", None, *EMOTION_RANGE, "an emotion offset vector")
  if mouth_scale is not None:
    _number(mouth_scale, "mouth_scale", *MOUTH_SCALE_RANGE)
  if steps is not None:
    _integer(steps, "steps", 1, MAX_STEPS)
  if seed is not None:
    _integer(seed, "seed", 0, MAX_SEED)
  if render_batch is not None:
    _integer(render_batch, "render_batch", 0, None)
  if chunk_ms is not None:
    _number(chunk_ms, "chunk_ms", 0.0, MAX_CHUNK_MS, lo_open=True)
