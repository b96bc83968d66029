"""Tests for vasa_jax.data.audio_features: log-mel shapes and frame alignment, band energy."""
from __future__ import annotations

import numpy as np
import pytest

from configs import common
from vasa_jax.data import audio_features as af

SR = common.SAMPLE_RATE
SPF = common.SAMPLES_PER_FRAME  # 640


def _burst(num_frames, frame, freq=1000.0):
  """Silence with a tone exactly inside video frame `frame`."""
  audio = np.zeros(num_frames * SPF, np.float32)
  n = np.arange(SPF)
  audio[frame * SPF:(frame + 1) * SPF] = 0.5 * np.sin(2 * np.pi * freq * n / SR)
  return audio


def test_frames_for_audio():
  assert [af.frames_for_audio(n) for n in (0, 1, 640, 641, 16000)] == [0, 1, 1, 2, 25]
  assert af.frames_for_audio(16000, fps=30) == 30
  assert af.frames_for_audio(44100, sr=44100, fps=29.97) == 30


def test_log_mel_shapes():
  audio = np.random.default_rng(0).normal(size=7 * SPF - 300).astype(np.float32)
  feats = af.log_mel(audio)
  assert feats.shape == (7, common.ROWS_PER_FRAME, common.N_MELS) and feats.dtype == np.float32
  assert np.isfinite(feats).all()
  assert af.log_mel(audio, num_frames=10).shape == (10, 4, 80)
  assert af.log_mel(audio, num_frames=3).shape == (3, 4, 80)
  assert af.log_mel(audio[:10]).shape == (1, 4, 80)
  assert af.log_mel(np.zeros(0, np.float32)).shape == (0, 4, 80)
  # Trimming keeps the leading rows unchanged; padding only appends silence.
  np.testing.assert_allclose(af.log_mel(audio, num_frames=3), feats[:3], atol=1e-5)
  np.testing.assert_allclose(af.log_mel(audio, num_frames=10)[:6], feats[:6], atol=1e-5)
  silent = af.log_mel(audio, num_frames=10)[8:]
  np.testing.assert_allclose(silent, np.log(af.LOG_EPS), atol=1e-4)


@pytest.mark.parametrize("frame", [0, 5, 9])
def test_log_mel_tone_burst_lands_in_its_frame(frame):
  feats = af.log_mel(_burst(10, frame))  # (10, 4, 80)
  freqs = af.mel_filterbank().argmax(axis=1) * SR / common.MEL_NFFT
  band = int(np.argmin(np.abs(freqs - 1000.0)))
  energy = feats[..., band]  # (10, 4)
  # All four rows of the burst's frame carry the tone; its centre rows are fully inside it.
  assert energy.mean(axis=1).argmax() == frame
  assert (energy[frame] > 0).all()  # silence is log(1e-5) = -11.5
  assert energy[frame, 1:3].min() >= energy[frame, [0, 3]].max()
  # Frames two or more away see only silence (a row's 25 ms window spills <= 120 samples).
  far = [t for t in range(10) if abs(t - frame) >= 2]
  np.testing.assert_allclose(energy[far], np.log(af.LOG_EPS), atol=1e-4)


def test_log_mel_matches_direct_formula():
  audio = np.random.default_rng(1).normal(size=5 * SPF).astype(np.float32)
  feats = af.log_mel(audio).reshape(-1, common.N_MELS)  # (20, 80)
  win = np.hanning(common.MEL_WIN + 1)[:-1]  # periodic Hann
  for r in (0, 7, 19):
    centre = r * common.MEL_HOP + common.MEL_HOP // 2
    seg = np.zeros(common.MEL_WIN)
    lo, hi = centre - common.MEL_WIN // 2, centre + common.MEL_WIN // 2
    src = audio[max(lo, 0):min(hi, audio.size)]
    seg[max(lo, 0) - lo:max(lo, 0) - lo + src.size] = src
    spec = np.abs(np.fft.rfft(seg * win, n=common.MEL_NFFT)) ** 2
    expected = np.log(af.mel_filterbank() @ spec + af.LOG_EPS)
    np.testing.assert_allclose(feats[r], expected, rtol=1e-4, atol=1e-3)


def test_mel_filterbank_is_cached():
  assert af.mel_filterbank() is af.mel_filterbank()
  assert af.mel_filterbank().shape == (common.N_MELS, common.MEL_NFFT // 2 + 1)


def test_energy_envelope():
  speech_band = _burst(10, 4, freq=1000.0)
  high = _burst(10, 4, freq=6000.0)
  env = af.energy_envelope(speech_band)
  assert env.shape == (10,) and env.dtype == np.float32 and env.argmax() == 4
  assert env[4] - np.delete(env, 4).max() > 10
  assert env[4] - af.energy_envelope(high)[4] > 5  # out-of-band tone barely counts
  assert af.energy_envelope(speech_band[:-100]).shape == (10,)
  assert af.energy_envelope(np.zeros(16000, np.float32), fps=30).shape == (30,)
