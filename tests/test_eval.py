"""Tests of vasa_jax.eval: lip-sync, pose and image-quality figures, and the eval report."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy import ndimage

from vasa_jax.errors import VasaInputError
from vasa_jax.eval import image_quality, lipsync, pose, report

# A short real clip (224x224, 25 fps, 16 kHz audio, 5.2 s) with clear sync.
REAL_CLIP = "clips/Talking-Face_PC-AVS__misc_Audio_Source_00373.mp4"
PORTRAIT = "portraits"


def _smooth_process(seed: int, t: int = 3000, sigma: float = 2.0) -> np.ndarray:
  """A smoothed Gaussian process: syllable-like bumps every few frames."""
  x = np.random.default_rng(seed).normal(size=t)
  return ndimage.gaussian_filter1d(x, sigma)


# ----------------------------------------------------------------------------------------------
# Lip sync on synthetic signals.


def test_lipsync_finds_delay_and_high_corr():
  env = _smooth_process(0)
  rng = np.random.default_rng(1)
  mouth = np.roll(env, 2) + 0.05 * rng.normal(size=env.shape)  # mouth 2 frames after the audio
  s = lipsync.lipsync_scores(mouth, env, max_lag=5)
  assert s["lag_detrended"] == 2 and s["lag_raw"] == 2
  assert s["corr_detrended"] > 0.8 and s["corr_raw"] > 0.8
  assert s["corr_detrended"] > s["corr_detrended_lag0"]
  assert s["offset_s_detrended"] == pytest.approx(2 / 25)
  assert len(s["curve_detrended"]) == 11 and s["num_frames"] == 3000


def test_lipsync_negative_lag_when_mouth_leads():
  env = _smooth_process(2)
  mouth = np.roll(env, -3)  # mouth 3 frames before the audio
  s = lipsync.lipsync_scores(mouth, env, max_lag=5)
  assert s["lag_detrended"] == -3
  assert s["corr_detrended"] > 0.95


def test_lipsync_independent_mouth_near_zero():
  env = _smooth_process(3)
  mouth = _smooth_process(4)
  s = lipsync.lipsync_scores(mouth, env, max_lag=5)
  # Best of 11 lags of two independent series: small positive bias only.
  assert abs(s["corr_detrended"]) < 0.15
  assert abs(s["corr_detrended_lag0"]) < 0.1


def test_detrending_removes_shared_slow_trend():
  # Mouth and audio share a slow drift (loudness, head distance) but their fast parts are
  # independent: the raw correlation is high, the detrended one is not.
  t = np.arange(3000)
  drift = 3.0 * np.sin(2 * np.pi * t / 500.0)
  env = drift + _smooth_process(5)
  mouth = drift + _smooth_process(6)
  s = lipsync.lipsync_scores(mouth, env, max_lag=5)
  assert s["corr_raw"] > 0.8
  assert abs(s["corr_detrended"]) < 0.15


def test_frozen_mouth_has_zero_spread_and_no_sync():
  env = _smooth_process(7)
  s = lipsync.lipsync_scores(np.full(env.shape, 0.3), env)
  assert s["mouth_std_detrended"] == pytest.approx(0.0, abs=1e-9)
  assert s["mouth_std_raw"] == 0.0
  assert s["corr_detrended"] == 0.0 and s["corr_raw"] == 0.0


def test_lipsync_ignores_frames_without_face_and_cuts_to_shorter():
  env = _smooth_process(8, t=1000)
  mouth = np.roll(env, 1).copy()
  mouth[100:160] = np.nan
  s = lipsync.lipsync_scores(mouth, np.concatenate([env, np.zeros(37)]), max_lag=4)
  assert s["num_frames"] == 1000 and s["num_valid"] == 940
  assert s["lag_detrended"] == 1 and s["corr_detrended"] > 0.9
  # Frames past the end of the audio (NaN envelope) are left out too.
  env_short = env.copy()
  env_short[-200:] = np.nan
  s = lipsync.lipsync_scores(mouth, env_short, max_lag=4)
  assert s["lag_detrended"] == 1 and s["corr_detrended"] > 0.9
  with pytest.raises(ValueError, match="1-D"):
    lipsync.lipsync_scores(np.zeros((10, 2)), env)


def test_mismatched_baseline_pairs_each_clip_with_another_audio():
  env_a, env_b, env_c = _smooth_process(10, 400), _smooth_process(11, 420), _smooth_process(12, 380)
  clips = [{"name": n, "path": f"{n}.mp4", "series": {"mouth_open": e.tolist(),
                                                     "envelope": e.tolist()}}
           for n, e in (("a", env_a), ("b", env_b), ("c", env_c))]
  rows = report.mismatched_baseline(clips)
  assert [r["audio_of"] for r in rows] == ["b.mp4", "c.mp4", "a.mp4"]
  assert [r["num_frames"] for r in rows] == [400, 380, 380]
  # Own audio would give corr 1; another clip's audio gives little.
  assert all(abs(r["corr_detrended"]) < 0.3 for r in rows)
  assert report.mismatched_baseline(clips[:1]) == []


# ----------------------------------------------------------------------------------------------
# Pose.


def test_delta_p_of_sinusoidal_yaw():
  fps, amp_deg, freq = 25.0, 10.0, 0.5
  t = np.arange(500)  # 20 s = 10 full periods
  yaw = np.radians(amp_deg) * np.sin(2 * np.pi * freq * t / fps)
  head_pose = np.stack([yaw, np.zeros_like(yaw), np.full_like(yaw, np.radians(5.0))], -1)
  # Mean |d/dt of A sin(w t)| per frame = A * w * 2 / pi, w in radians per frame.
  expected_yaw = amp_deg * (2 * np.pi * freq / fps) * 2 / np.pi
  s = pose.pose_scores(head_pose)
  assert s["delta_p_yaw"] == pytest.approx(expected_yaw, rel=0.01)
  assert s["delta_p_pitch"] == 0.0 and s["delta_p_roll"] == pytest.approx(0.0, abs=1e-9)
  assert s["delta_p"] == pytest.approx(expected_yaw / 3, rel=0.01)
  assert pose.delta_p(head_pose) == pytest.approx(s["delta_p"])
  assert s["pose_std_yaw"] == pytest.approx(amp_deg / np.sqrt(2), rel=0.01)
  assert s["pose_std_roll"] == pytest.approx(0.0, abs=1e-6)


def test_delta_p_wraps_angles_and_skips_missing_frames():
  roll = np.radians(np.array([179.5, -179.5, 179.5, np.nan, 179.5]))
  head_pose = np.stack([np.zeros(5), np.zeros(5), roll], -1)
  per = pose.delta_p_per_angle(head_pose)
  assert per[2] == pytest.approx(1.0)  # 1 degree across +-180, not 359
  # Valid rolls 179.5 x3 and 180.5 (as -179.5): std = sqrt(3) / 4, not ~180.
  assert pose.pose_spread(head_pose)[2] == pytest.approx(np.sqrt(3) / 4, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# Image quality.


def test_psnr_ssim_identical_and_noisy():
  rng = np.random.default_rng(0)
  base = ndimage.gaussian_filter(rng.uniform(0, 255, (2, 48, 40, 3)), (0, 2, 2, 0))
  a = base.astype(np.uint8)
  noisy = lambda s: np.clip(a + rng.normal(0, s, a.shape), 0, 255).astype(np.uint8)
  b, c = noisy(5.0), noisy(25.0)
  assert np.isinf(image_quality.psnr(a[0], a[0]))
  assert image_quality.ssim(a[0], a[0]) == pytest.approx(1.0)
  p_b, p_c = image_quality.psnr(a, b), image_quality.psnr(a, c)
  s_b, s_c = image_quality.ssim(a, b), image_quality.ssim(a, c)
  assert p_b.shape == (2,) and s_b.shape == (2,)
  assert np.all(p_b > p_c) and np.all(p_c > 15) and np.all(p_b < 60)
  assert np.all(s_b < 1.0) and np.all(s_c < s_b)
  # Same definition as scikit-image's Gaussian-window SSIM.
  from skimage.metrics import structural_similarity
  ref = structural_similarity(a[0], c[0], gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=255, channel_axis=-1)
  assert s_c[0] == pytest.approx(ref, abs=1e-9)
  with pytest.raises(VasaInputError, match="shapes differ"):
    image_quality.psnr(a, a[:, :10])


def test_mouth_lmd_is_normalised_by_crop_size():
  rng = np.random.default_rng(0)
  real = rng.uniform(0, 256, (3, 478, 3))
  gen = real.copy()
  gen[:, list(image_quality.MOUTH), 0] += 2.56  # mouth moved 2.56 px right on a 256 crop
  gen[:, 10, :] += 50.0  # a non-mouth point moving does not count
  assert len(set(image_quality.MOUTH)) == 40
  np.testing.assert_allclose(image_quality.mouth_lmd(gen, real, 256), 0.01)


def test_self_reenactment_scores_on_a_real_portrait(shared_data):
  from vasa_jax.data import face_crop, media
  portraits = sorted(p for p in os.listdir(shared_data / PORTRAIT)
                     if p.lower().endswith((".jpg", ".jpeg", ".png")))
  analyzer = face_crop.FaceAnalyzer()
  crop = face_crop.crop_image(media.read_image(shared_data / PORTRAIT / portraits[0]), 192,
                              analyzer=analyzer)
  real = np.stack([crop.image, crop.image])
  same = image_quality.self_reenactment_scores(real, real, analyzer)
  assert same["psnr_identical_frac"] == 1.0 and same["ssim"] == pytest.approx(1.0)
  assert same["m_lmd"] == pytest.approx(0.0, abs=1e-6)
  shifted = np.roll(real, 6, axis=2)  # the face moved 6 px right
  moved = image_quality.self_reenactment_scores(shifted, real, analyzer)
  assert moved["psnr"] < 40 and moved["ssim"] < 0.95
  assert moved["m_lmd"] == pytest.approx(6 / 192, rel=0.35)


# ----------------------------------------------------------------------------------------------
# Report on real data.


def test_report_refuses_video_without_audio(tmp_path):
  from vasa_jax.data import media
  silent = media.write_video(tmp_path / "silent.mp4", np.zeros((5, 32, 32, 3), np.uint8))
  with pytest.raises(VasaInputError, match="silent.mp4"):
    report.run([silent], [], tmp_path / "out")


def test_report_on_real_clip(shared_data, tmp_path):
  clip = str(shared_data / REAL_CLIP)
  out = tmp_path / "report"
  from vasa_jax import cli
  assert cli.main(["eval", "--videos", clip, "--real", clip, "--out", str(out),
                   "--max-seconds", "3"]) == 0
  data = json.loads((out / "metrics.json").read_text())
  assert data["summary"]["generated"]["count"] == 1 and len(data["real"]) == 1
  row = data["generated"][0]
  assert row["num_frames"] == 75 and len(row["series"]["mouth_open"]) == 75
  assert row["face_found_frac"] > 0.9
  # Real footage with its own audio: positive sync, a moving mouth, some head motion.
  assert row["corr_detrended"] > 0.1 and abs(row["lag_detrended"]) <= 5
  assert row["mouth_std_detrended"] > 0.0 and 0.0 < row["delta_p"] < 5.0
  assert data["real"][0]["corr_detrended"] == pytest.approx(row["corr_detrended"])
  md = (out / "report.md").read_text()
  assert "mean generated" in md and "mean real" in md and "sync corr (detrended)" in md
  # Viewer figures, against the clip's own first frame (no --portrait): the same face.
  assert row["face_px"] > 40 and 0.5 < row["sharpness_rel"] < 2.0
  if row["viewer"]["identity_error"] is None:
    # dlib descriptors of one person sit near 1; MobileFaceNet's CSIM (common part removed) of
    # this real clip's frames to its first is 0.79 (real held-out clips average 0.85).
    floor = {"dlib": 0.9, "mobilefacenet": 0.6}[row["viewer"]["identity_backend"]]
    assert row["identity_sim"] > floor
  assert "face (px)" in md and "identity vs photo" in md
  names = {p.name for p in (out / "plots").iterdir()}
  assert len(names) == 2 and all(n.endswith(".png") for n in names)
  png = (out / "plots" / sorted(names)[0]).read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
