"""No drift over long clips (issue 18): the bundled checkpoint's motion keeps its level.

Fast form: motion only (no rendering) over 40 s of the bundled espeak-ng speech, looped, at 5
sampling steps. Slow form: a rendered 60 s clip measured by `vasa-jax eval`'s viewer figures.
"""
import numpy as np
import pytest

from vasa_jax.constants import SAMPLE_RATE
from vasa_jax.eval.drift import motion_drift, segment_motion_stats


@pytest.fixture(scope="module")
def demo():
  from vasa_jax.inference import pipeline as pipeline_lib
  return pipeline_lib.load_pipeline()


def _speech(seconds):
  from vasa_jax.data import media
  from vasa_jax.inference.pipeline import DEFAULT_CHECKPOINT
  wav = media.read_audio(DEFAULT_CHECKPOINT.parent / "speech_en.wav")
  return np.tile(wav, int(np.ceil(seconds * SAMPLE_RATE / len(wav))))[:int(seconds * SAMPLE_RATE)]


def _sample_motion(pipe, wav, steps):
  import jax
  import jax.numpy as jnp
  from vasa_jax.data import audio_features
  from vasa_jax.diffusion import sampler as S
  n = audio_features.frames_for_audio(len(wav))
  feats = jnp.asarray(audio_features.log_mel(wav, num_frames=n))[None]
  encoded = pipe.encode_audio(pipe.motion_params, feats)[0]
  return np.asarray(S.sample_sequence(
      pipe.sample_window_fn(steps), pipe.motion_params, encoded, pipe.controls(None, None, None),
      jax.random.key(0), window=pipe.window, context=pipe.context, motion_dim=pipe.motion_dim,
      cfg_audio=pipe.cfg_audio, cfg_gaze=pipe.cfg_gaze))


def test_segment_stats_see_a_walk_and_a_freeze():
  rng = np.random.default_rng(0)
  t = 25 * 20
  still = rng.normal(size=(t, 10))
  walk = still.copy()
  walk[:, :6] += np.linspace(0, 3, t)[:, None]  # the pose walks 3 std
  walk[t // 2:, 6:] *= 0.1  # the face freezes
  d_still, d_walk = motion_drift(still), motion_drift(walk)
  assert abs(d_still["last"]["pose_level"] - d_still["first"]["pose_level"]) < 0.2
  assert d_walk["last"]["pose_level"] > d_walk["first"]["pose_level"] + 1.2  # 2.25 vs 0.75
  assert d_walk["last"]["dyn_spread"] < 0.2 * d_walk["first"]["dyn_spread"]
  assert len(d_still["segments"]) == 2
  with pytest.raises(ValueError, match="No motion frames"):
    segment_motion_stats(still, 30, 40)


def test_bundled_motion_does_not_drift_over_many_windows(demo):
  motion = _sample_motion(demo, _speech(40.0), steps=5)  # 20 windows
  drift = motion_drift(motion)
  first, last = drift["first"], drift["last"]
  # Unanchored, this clip's pose level walked from 0.5 to 1.2 training std by 10 s and a pose
  # dimension reached 3.2 std; anchored every segment stays near where the first one started.
  for seg in drift["segments"]:
    assert seg["pose_level"] < 0.8, drift
    assert seg["pose_max"] < 3.0, drift  # inside the training range (+-3 std)
  assert last["pose_level"] < first["pose_level"] + 0.3, drift
  assert last["rms"] < 1.5 * first["rms"], drift
  assert last["dyn_spread"] > 0.4 * first["dyn_spread"], drift  # the face still moves


@pytest.mark.slow
def test_bundled_video_does_not_drift_over_a_minute(demo, tmp_path):
  """60 s rendered and measured as a viewer sees it (about 4 minutes on two shared CPU cores)."""
  from skimage import data as skdata
  from vasa_jax.data.face_crop import FaceAnalyzer
  from vasa_jax.eval import viewer

  portrait = skdata.astronaut()
  res = demo.generate(portrait, _speech(60.0), seed=0)
  step = 5
  frames = res.frames[::step]
  times = np.arange(0, len(res.frames), step) / res.fps
  v = viewer.viewer_scores(frames, times, len(res.frames) / res.fps, portrait, FaceAnalyzer())
  ratio = v["last_over_first"]
  assert 0.9 <= ratio["sharpness_rel"] <= 1.1, v
  assert 0.9 <= ratio["face_px"] <= 1.1, v
  if v["identity_error"] is None:
    assert 0.9 <= ratio["identity_sim"] <= 1.1, v
