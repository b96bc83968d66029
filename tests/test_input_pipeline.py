"""Grain pipelines on synthetic data: element specs, exact resume, host sharding, labels."""
from __future__ import annotations

import numpy as np
import pytest

from vasa_jax.config_utils import load_config
from vasa_jax.data import augment, clip_labels, input_pipeline, splits, synthetic
from vasa_jax.errors import VasaInputError


@pytest.fixture
def latent_config():
  config = load_config("configs/latent.py:tiny")
  config.data.augment = True
  return config


@pytest.fixture
def motion_config():
  return load_config("configs/motion.py:tiny")


def _assert_same_batches(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_latent_element_spec(latent_config):
  batch = next(iter(input_pipeline.make_dataset(latent_config, "train", 0, 1)))
  r, b = latent_config.model.resolution, latent_config.train.batch_size
  images = ["driver", "driver2", "other", "source"]
  assert sorted(batch) == sorted(images + ["labels_valid", "motion_labels", "mouth_box"])
  for k in images:
    assert batch[k].shape == (b, r, r, 3) and batch[k].dtype == np.uint8
  assert not np.array_equal(batch["source"], batch["other"])
  # Synthetic faces have no labels: zeros, marked invalid so the encoder's own motion is used.
  assert batch["motion_labels"].shape == (b, 3, 5) and batch["labels_valid"].shape == (b, 3)
  assert batch["mouth_box"].shape == (b, 3, 4)
  for k in ("motion_labels", "labels_valid", "mouth_box"):
    assert batch[k].dtype == np.float32 and not batch[k].any()


def test_motion_element_spec(motion_config):
  c = motion_config
  batch = next(iter(input_pipeline.make_dataset(c, "train", 0, 1)))
  b, w, k, dm = c.train.batch_size, c.data.window, c.data.context, c.model.motion_dim
  assert batch["motion"].shape == (b, w, dm) and batch["motion_prev"].shape == (b, k, dm)
  assert batch["audio"].shape == (b, w, 4, 80) and batch["audio_prev"].shape == (b, k, 4, 80)
  assert batch["gaze"].shape == (b, 2) and batch["distance"].shape == (b, 1)
  assert batch["emotion"].shape == (b, c.model.emotion_dim)
  for key in ("has_prev", "emotion_mask"):
    assert batch[key].shape == (b,) and batch[key].dtype == bool
  for key in ("motion", "motion_prev", "audio", "audio_prev", "gaze", "distance", "emotion"):
    assert batch[key].dtype == np.float32, key
  # One-hot emotion exactly where the mask is set.
  np.testing.assert_array_equal(batch["emotion"].sum(-1), batch["emotion_mask"].astype(float))


@pytest.mark.parametrize("stage", ["latent", "motion"])
def test_iterator_resumes_exactly(stage, latent_config, motion_config):
  config = latent_config if stage == "latent" else motion_config
  it = iter(input_pipeline.make_dataset(config, "train", 0, 1))
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(2)]
  it2 = iter(input_pipeline.make_dataset(config, "train", 0, 1))
  it2.set_state(state)
  for w in want:
    _assert_same_batches(next(it2), w)


def test_epochs_are_reshuffled(motion_config):
  # Synthetic motion: 8 clips x 64 frames, W=16 -> a handful of windows per epoch; the second
  # epoch must not repeat the first one's order.
  motion_config.train.batch_size = 1
  # pylint: disable-next=protected-access
  _, n = input_pipeline._motion_parts(motion_config, "train", True)
  it = iter(input_pipeline.make_dataset(motion_config, "train", 0, 1))
  batches = [next(it)["motion"] for _ in range(2 * n)]
  first, second = np.stack(batches[:n]), np.stack(batches[n:])
  assert not np.array_equal(first, second)


def test_hosts_get_disjoint_elements(latent_config):
  latent_config.data.augment = False
  seen = []
  for p in range(2):
    ds, total = input_pipeline.latent_element_dataset(latent_config, "train", p, 2)
    seen.append({ds[i]["source"].tobytes() for i in range(len(ds))})
  assert len(seen[0]) + len(seen[1]) == total  # every frame once, no duplicates
  assert not seen[0] & seen[1]
  b0 = next(iter(input_pipeline.make_dataset(latent_config, "train", 0, 2)))
  b1 = next(iter(input_pipeline.make_dataset(latent_config, "train", 1, 2)))
  assert b0["source"].shape[0] == latent_config.train.batch_size // 2
  assert not np.array_equal(b0["source"], b1["source"])


def test_batch_must_split_over_hosts(latent_config):
  latent_config.train.batch_size = 3
  with pytest.raises(VasaInputError, match="divisible"):
    input_pipeline.make_dataset(latent_config, "train", 0, 2)


def test_single_clip_other_is_mirrored(latent_config):
  latent_config.data.synthetic_clips = 1
  latent_config.data.augment = False
  ds, _ = input_pipeline.latent_element_dataset(latent_config, "train", 0, 1)
  el = ds[0]
  clips = synthetic.SyntheticFaces(1, latent_config.data.synthetic_frames,
                                   latent_config.model.resolution, seed=latent_config.seed)
  frames = clips.frames(0, range(latent_config.data.synthetic_frames))
  assert any(np.array_equal(el["other"], f[:, ::-1]) for f in frames)


def test_emotion_from_name():
  e = clip_labels.EMOTIONS
  assert clip_labels.emotion_from_name("EAMM__test_crop_M030_sad_3_001") == e.index("sad")
  assert clip_labels.emotion_from_name(
      "dreamtalk__data_style_clip_video_W009_front_happy_level3_001") == e.index("happy")
  assert clip_labels.emotion_from_name("emotion__tests_test_data_data_1001_DFA_ANG_XX") == \
      e.index("angry")
  assert clip_labels.emotion_from_name("spectre__samples_MEAD_M026_level_3_disgusted_018") == \
      e.index("disgusted")
  assert clip_labels.emotion_from_name(
      "styletalk__samples_style_clips_video_sadgirl_clip1") is None
  assert clip_labels.emotion_from_name("LAALM__test_set_sample1") is None


def test_split_persons_is_deterministic_and_disjoint():
  persons = [f"p{i}" for i in range(10)]
  train, val = splits.split_persons(persons, val_fraction=0.2, seed=3)
  assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == persons
  assert splits.split_persons(persons[::-1], val_fraction=0.2, seed=3) == (train, val)
  assert splits.split_persons(persons, val_persons=["p1"]) == (
      [p for p in persons if p != "p1"], ["p1"])
  with pytest.raises(VasaInputError, match="not in the data set"):
    splits.split_persons(persons, val_persons=["nobody"])
  assert splits.split_persons(["solo"], val_fraction=0.5) == (["solo"], [])


def test_augmentations_keep_shape_and_change_pixels():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
  jit = augment.colour_jitter(frames, np.random.default_rng(1))
  assert jit.shape == frames.shape and jit.dtype == np.uint8 and not np.array_equal(jit, frames)
  moved = augment.scale_shift(frames[0], np.random.default_rng(2))
  assert moved.shape == (32, 32, 3) and moved.dtype == np.uint8
  np.testing.assert_array_equal(
      augment.scale_shift(frames[0], np.random.default_rng(2)), moved)  # seeded: repeatable


def test_move_box_follows_the_scale_shift_of_the_frame():
  frame = np.zeros((64, 64, 3), np.uint8)
  frame[36:42, 16:24] = 255  # a box around (20, 39) px
  box = np.array([20 / 64, 39 / 64, 4 / 64, 3 / 64], np.float32)
  for seed in range(3):
    moved, transform = augment.scale_shift(frame, np.random.default_rng(seed), max_scale=0.2,
                                             max_shift=0.1, return_transform=True)
    got = augment.move_box(box, transform)
    ys, xs = np.nonzero(moved[..., 0] > 127)
    np.testing.assert_allclose([(xs.mean() + 0.5) / 64, (ys.mean() + 0.5) / 64], got[:2],
                               atol=1.0 / 64)
    np.testing.assert_allclose((xs.max() - xs.min() + 1) / 64, 2 * got[2], atol=1.5 / 64)


def test_audio_augment_is_one_channel_change_per_call():
  from vasa_jax.data.audio_features import LOG_EPS
  rng = np.random.default_rng(0)
  power = rng.uniform(1.0, 100.0, (6, 4, 80))
  power[:, :, 70:] = 0.0  # a silent top band
  feats = np.log(power + LOG_EPS).astype(np.float32)
  floor = np.float32(np.log(LOG_EPS))

  gain_only = augment.augment_log_mel(feats, np.random.default_rng(1), 1.5, 0.0, 0)
  diff = (gain_only - feats)[..., :70]
  assert np.ptp(diff) < 1e-4 and 0 < abs(diff.mean()) <= 1.5  # one gain for every frame and band
  np.testing.assert_allclose(gain_only[..., 70:], floor, atol=1e-5)  # silence stays silent

  tilt_only = augment.augment_log_mel(feats, np.random.default_rng(2), 0.0, 1.0, 0)
  per_band = (tilt_only - feats)[0, 0, :70]
  np.testing.assert_allclose(np.diff(per_band), np.diff(per_band)[0], atol=1e-4)  # linear tilt
  assert abs(per_band[-1] - per_band[0]) <= 2.0 * 70 / 79 + 1e-4

  widths = []
  for seed in range(20):
    masked = augment.augment_log_mel(feats, np.random.default_rng(seed), 0.0, 0.0, 10)
    silenced = np.all(np.isclose(masked[..., :70], floor, atol=1e-4), axis=(0, 1))
    bands = np.nonzero(silenced)[0]
    if bands.size:
      assert np.all(np.diff(bands) == 1)  # one contiguous run
    widths.append(bands.size)
    np.testing.assert_allclose(masked[..., :70][..., ~silenced], feats[..., :70][..., ~silenced],
                               atol=1e-4)
  assert max(widths) <= 10 and max(widths) > 0

  a = augment.augment_log_mel(feats, np.random.default_rng(3), 1.5, 1.0, 10)
  np.testing.assert_array_equal(a, augment.augment_log_mel(feats, np.random.default_rng(3),
                                                             1.5, 1.0, 10))
  assert a.shape == feats.shape and a.dtype == np.float32


def test_only_training_windows_get_audio_augmentation(motion_config):
  plain = motion_config
  aug = load_config("configs/motion.py:tiny")
  aug.data.audio_augment = True
  assert not plain.data.audio_augment and load_config("configs/motion.py:demo").data.audio_augment
  for split, changed in (("train", True), ("val", False)):
    a = next(iter(input_pipeline.make_dataset(plain, split, 0, 1)))
    b = next(iter(input_pipeline.make_dataset(aug, split, 0, 1)))
    np.testing.assert_array_equal(a["motion"], b["motion"])  # same windows, only the audio moves
    assert (not np.array_equal(a["audio"], b["audio"])) == changed, split
    # A first window has no context: it stays all zeros.
    no_prev = ~b["has_prev"]
    assert not b["audio_prev"][no_prev].any()
