"""Audio features aligned to 25 fps video: log-mel rows (4 per frame) and band energy.

The STFT is plain numpy (no librosa.load / numba); only librosa's mel filterbank is used, and it
is cached. Timing: 16 kHz audio, hop 160 (10 ms), window 400 (25 ms), n_fft 512, so one video frame
(640 samples) holds exactly 4 feature rows (`configs/common.py`).

Alignment: feature row r is centred at sample 160 r + 80, the middle of its own 10 ms hop, so the
row group t = rows 4t..4t+3 is centred on video frame t's samples [640 t, 640 (t + 1)). Audio is
zero-padded at both ends (a "centered" STFT), which keeps short inputs valid.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from vasa_jax.constants import (FPS, MEL_HOP, MEL_NFFT, MEL_WIN, N_MELS, ROWS_PER_FRAME, SAMPLE_RATE,
                            SAMPLES_PER_FRAME)

# Added to the mel power before the log so silence maps to log(1e-5) = -11.5 instead of -inf.
LOG_EPS = 1e-5


def frames_for_audio(num_samples: int, sr: int = SAMPLE_RATE, fps: float = FPS) -> int:
  """Number of video frames that cover `num_samples` audio samples (ceil).

  Args:
    num_samples: audio length.
    sr: audio sample rate.
    fps: video frame rate.

  Returns:
    ceil(num_samples * fps / sr).
  """
  if float(fps).is_integer() and sr % int(fps) == 0:
    spf = sr // int(fps)
    return -(-int(num_samples) // spf)  # exact integer ceil
  return int(math.ceil(num_samples * fps / sr - 1e-9))


@functools.lru_cache(maxsize=8)
def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = MEL_NFFT,
                   n_mels: int = N_MELS) -> np.ndarray:
  """(n_mels, n_fft // 2 + 1) float32 Slaney mel filterbank from librosa (cached, read-only)."""
  import librosa  # local import: librosa pulls in numba lazily; filters.mel does not compile

  fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=sr / 2)
  fb = fb.astype(np.float32)
  fb.setflags(write=False)
  return fb


@functools.lru_cache(maxsize=4)
def _window(win: int, n_fft: int) -> np.ndarray:
  """Periodic Hann of length `win`, zero-padded to n_fft with the window centred (librosa)."""
  w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win) / win)
  left = (n_fft - win) // 2
  out = np.zeros(n_fft, np.float32)
  out[left:left + win] = w
  out.setflags(write=False)
  return out


def _power_spectrogram(audio: np.ndarray, num_rows: int) -> np.ndarray:
  """(num_rows, n_fft // 2 + 1) power spectrum, row r centred at sample 160 r + 80."""
  half = MEL_NFFT // 2
  offset = MEL_HOP // 2  # centre of each row's own hop
  # Frame r spans padded[r * hop + offset : ... + n_fft] with `half` zeros of left padding.
  needed = (num_rows - 1) * MEL_HOP + offset + MEL_NFFT
  padded = np.zeros(max(needed, half + audio.shape[0]), np.float32)
  padded[half:half + audio.shape[0]] = audio
  frames = np.lib.stride_tricks.sliding_window_view(padded, MEL_NFFT)
  frames = frames[offset:offset + (num_rows - 1) * MEL_HOP + 1:MEL_HOP]  # (R, n_fft)
  spec = np.fft.rfft(frames * _window(MEL_WIN, MEL_NFFT), axis=-1)
  return (spec.real ** 2 + spec.imag ** 2).astype(np.float32)


def log_mel(audio: np.ndarray, num_frames: int | None = None) -> np.ndarray:
  """Log-mel features, 4 rows per 25 fps video frame.

  Args:
    audio: (N,) float32 mono at 16 kHz.
    num_frames: number of video frames T to produce; None uses ceil(N / 640). Audio is zero-padded
      (or ignored) beyond T * 640 samples; rows near the end still see real audio past T * 640 when
      it exists.

  Returns:
    (T, 4, 80) float32, log(mel power + 1e-5) (natural log of the mel-weighted |STFT|^2 of the raw
    samples; a full-scale sine gives values around 9, silence -11.5).
  """
  audio = np.asarray(audio, np.float32)
  if audio.ndim != 1:
    raise ValueError(f"audio must be mono (N,), got {audio.shape}")
  t = frames_for_audio(audio.shape[0]) if num_frames is None else int(num_frames)
  if t < 0:
    raise ValueError(f"num_frames must be >= 0, got {num_frames}")
  if t == 0:
    return np.zeros((0, ROWS_PER_FRAME, N_MELS), np.float32)
  power = _power_spectrogram(audio, t * ROWS_PER_FRAME)  # (4T, 257)
  mel = power @ mel_filterbank().T  # (4T, 80)
  return np.log(mel + LOG_EPS).astype(np.float32).reshape(t, ROWS_PER_FRAME, N_MELS)


def energy_envelope(audio: np.ndarray, fps: float = FPS, band: tuple[float, float] = (300., 3000.),
                    sr: int = SAMPLE_RATE) -> np.ndarray:
  """Log energy per video frame in a frequency band (speech band by default).

  Used by lip-sync evaluation: mouth opening correlates with this envelope.

  Args:
    audio: (N,) float32 mono at `sr`.
    fps: video frame rate; frame t covers samples [t * sr / fps, (t + 1) * sr / fps).
    band: (low, high) in Hz.
    sr: sample rate.

  Returns:
    (T,) float32 with T = ceil(N * fps / sr): log(mean band power per sample + 1e-10).
  """
  audio = np.asarray(audio, np.float32)
  if audio.ndim != 1:
    raise ValueError(f"audio must be mono (N,), got {audio.shape}")
  t = frames_for_audio(audio.shape[0], sr, fps)
  spf = sr / fps
  seg = int(round(spf))
  starts = np.round(np.arange(t) * spf).astype(np.int64)
  padded = np.zeros(int(starts[-1]) + seg if t else 0, np.float32)
  padded[:audio.shape[0]] = audio[:padded.shape[0]]
  segs = np.stack([padded[s:s + seg] for s in starts]) if t else np.zeros((0, seg), np.float32)
  spec = np.fft.rfft(segs * np.hanning(seg).astype(np.float32), axis=-1)  # (T, seg // 2 + 1)
  freqs = np.fft.rfftfreq(seg, 1.0 / sr)
  sel = (freqs >= band[0]) & (freqs <= band[1])
  power = (np.abs(spec[:, sel]) ** 2).sum(axis=-1) / seg
  return np.log(power + 1e-10).astype(np.float32)


__all__ = ["LOG_EPS", "SAMPLES_PER_FRAME", "energy_envelope", "frames_for_audio", "log_mel",
           "mel_filterbank"]
