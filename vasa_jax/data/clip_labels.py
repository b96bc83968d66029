"""Per-clip control labels read from a clip's name and records: the emotion a MEAD or CREMA-D
file name states, and the clip's main gaze direction."""
from __future__ import annotations

import re

import numpy as np

from vasa_jax.data import face_labels

EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")
# Name tokens (lower case) that mark an emotion: MEAD (`M030_angry_...`, `_front_happy_`) and a
# few spellings; CREMA-D's upper-case codes are matched separately (`1001_DFA_ANG_XX`).
_EMOTION_TOKENS = {e: e for e in EMOTIONS}
_EMOTION_TOKENS.update({"surprise": "surprised", "disgust": "disgusted", "anger": "angry",
                        "contemptuous": "contempt", "fearful": "fear", "happiness": "happy",
                        "sadness": "sad"})
_CREMA_CODES = {"ANG": "angry", "DIS": "disgusted", "FEA": "fear", "HAP": "happy",
                "NEU": "neutral", "SAD": "sad"}
_CREMA_RE = re.compile(r"\d{4}_[A-Z]{3}_(ANG|DIS|FEA|HAP|NEU|SAD)_")


def emotion_from_name(name: str) -> int | None:
  """Emotion class (index into EMOTIONS) read from a clip name, or None when it names none.

  Args:
    name: a clip name such as `M030_angry_3_001`, `..._front_happy_level3_001` or
      `1001_DFA_ANG_XX`.

  Returns:
    An index into EMOTIONS, or None.
  """
  m = _CREMA_RE.search(name)
  if m:
    return EMOTIONS.index(_CREMA_CODES[m.group(1)])
  for token in re.split(r"[^a-zA-Z]+", name):
    e = _EMOTION_TOKENS.get(token.lower())
    if e is not None:
      return EMOTIONS.index(e)
  return None


def main_gaze(gaze: np.ndarray) -> np.ndarray:
  """The clip's main gaze direction (2,) from per-frame gaze (T, 2) (`face_labels.main_gaze`)."""
  gaze = np.asarray(gaze, np.float32).reshape(-1, 2)
  return np.asarray(face_labels.main_gaze(gaze), np.float32).reshape(2)
