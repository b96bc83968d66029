"""Per-frame emotion labels (issue 19 point 4): the control vector, stage 2's use of it next to
file-name labels, and `label-emotions` on tiny shards and motion data (the network when fetched)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vasa_jax import cli
from vasa_jax.data import clip_labels, emotion_labels, input_pipeline, records
from vasa_jax.errors import VasaInputError
from vasa_jax.facenets import store

T, W, K, R = 12, 8, 2, 32


def _probs(t: int, fer_class: str, p: float = 0.7) -> np.ndarray:
  """(t, 7) probabilities with `p` on one FER class, the rest spread evenly."""
  probs = np.full((t, 7), (1 - p) / 6, np.float32)
  probs[:, emotion_labels.FER_CLASSES.index(fer_class)] = p
  return probs


def test_control_vector_maps_fer_classes_onto_vasa_emotions():
  probs = np.concatenate([_probs(2, "happy", 0.9), _probs(2, "surprise", 0.5)])
  vec = emotion_labels.control_vector(probs, clip_labels.EMOTIONS)
  assert vec.shape == (8,) and vec.dtype == np.float32
  e = clip_labels.EMOTIONS
  assert vec[e.index("happy")] == pytest.approx((0.9 + 0.5 / 6) / 2)  # window mean
  assert vec[e.index("surprised")] == pytest.approx((0.1 / 6 + 0.5) / 2)
  assert vec[e.index("neutral")] == pytest.approx((0.1 / 6 + 0.5 / 6) / 2)
  assert vec[e.index("contempt")] == 0  # FER has no contempt
  assert vec.sum() == pytest.approx(1.0, abs=1e-5)  # a distribution stays one
  # A shorter emotion list (emotion_dim < 8) keeps only the names it has.
  assert emotion_labels.control_vector(probs, e[:3]).shape == (3,)


def _element(clips, network_emotions=True):
  dm = 4
  return input_pipeline._MotionElement(  # pylint: disable=protected-access
      clips, np.asarray([(k, 0) for k in range(len(clips))], np.int64), W, K,
      np.zeros(dm, np.float32), np.ones(dm, np.float32), 0.3, 0.05, 8,
      network_emotions=network_emotions)


def _motion_record(name: str, probs: np.ndarray | None) -> dict:
  rng = np.random.default_rng(0)
  rec = {"clip": name, "z_pose": rng.normal(size=(T, 2)).astype(np.float32),
         "z_dyn": rng.normal(size=(T, 2)).astype(np.float32),
         "audio_feats": np.zeros((T, 4, 80), np.float32), "main_gaze": np.zeros(2, np.float32),
         "face_scale": np.full((T,), 0.3, np.float32)}
  if probs is not None:
    rec[emotion_labels.KEY] = probs.astype(np.float16)
  return rec


def test_stage2_takes_network_labels_where_the_name_gives_none():
  clips = [_motion_record("vox_00001", _probs(T, "happy")),  # network label only
           _motion_record("M030_sad_3_001", _probs(T, "happy")),  # the file name wins
           _motion_record("vox_00002", None)]  # no label at all
  make = _element(clips)
  rng = np.random.default_rng(0)
  e = clip_labels.EMOTIONS
  net, named, none = (make(i, rng) for i in range(3))
  assert net["emotion_mask"] and net["emotion"].argmax() == e.index("happy")
  assert net["emotion"][e.index("happy")] == pytest.approx(0.7, abs=1e-3)
  assert named["emotion_mask"] and named["emotion"][e.index("sad")] == 1.0
  assert named["emotion"].sum() == 1.0
  assert not none["emotion_mask"] and not none["emotion"].any()
  # Switched off (the bundled recipe): only the file name counts.
  old = _element(clips, network_emotions=False)(0, rng)
  assert not old["emotion_mask"] and not old["emotion"].any()


def test_stage2_label_follows_the_window():
  probs = np.concatenate([_probs(W, "angry", 0.9), _probs(T - W, "happy", 0.9)])
  clips = [_motion_record("vox_00001", probs)]
  make = input_pipeline._MotionElement(  # pylint: disable=protected-access
      clips, np.asarray([(0, 0), (0, T - W)], np.int64), W, K, np.zeros(4, np.float32),
      np.ones(4, np.float32), 0.3, 0.05, 8, network_emotions=True)
  first = make(0, np.random.default_rng(0))
  assert first["emotion"].argmax() == clip_labels.EMOTIONS.index("angry")


def test_configs_switch_network_labels():
  from vasa_jax.config_utils import load_config
  assert load_config("configs/motion.py:demo").data.network_emotions
  assert not load_config("configs/demo_recipe.py:motion").data.network_emotions
  assert load_config("configs/demo_recipe.py:motion_fer").data.network_emotions


def _write_shards(root, names, frames=True):
  """A tiny preprocess-like output: one record per shard, (T, R, R, 3) frames or motion."""
  rng = np.random.default_rng(1)
  index = records.ClipIndex(root=root.resolve(), resolution=R)
  for i, name in enumerate(names):
    rec = {"clip": name, "person": name, "face_scale": np.full((T,), 0.3, np.float32)}
    if frames:
      rec["frames"] = rng.integers(0, 255, (T, R, R, 3), dtype=np.uint8)
    else:
      rec["z_dyn"] = np.zeros((T, 2), np.float32)
    shard = f"shards/clips-{i:05d}.array_record"
    records.write_shard(root / shard, [rec])
    index.clips.append({"clip": name, "person": name, "frames": T, "shard": shard, "record": 0})
  index.save()
  return index


def test_motion_data_without_source_names_the_option(tmp_path, monkeypatch):
  _write_shards(tmp_path / "motion", ["a"], frames=False)
  with pytest.raises(VasaInputError, match="--source"):
    emotion_labels.label_data(tmp_path / "motion", progress=False)
  # Shards with frames but no fetched network: fails at once, naming the fetch command.
  monkeypatch.setenv(store.ENV_VAR, str(tmp_path / "empty"))
  _write_shards(tmp_path / "shards", ["a"])
  with pytest.raises(store.FaceNetsMissing, match="fetch-face-nets"):
    emotion_labels.label_data(tmp_path / "shards", progress=False)
  assert emotion_labels.KEY not in records.ClipIndex.load(tmp_path / "shards").read(0)


def test_label_emotions_on_shards_then_motion_data(tmp_path, capsys):
  if not store.available(("emotion",)):
    pytest.skip("face networks not fetched: run `vasa-jax fetch-face-nets`")
  shards = tmp_path / "shards"
  _write_shards(shards, ["a", "b"])
  assert cli.main(["label-emotions", "--data", str(shards)]) == 0
  assert "2 records labelled" in capsys.readouterr().out
  index = records.ClipIndex.load(shards)
  assert index.extra["emotion_labels"]["classes"] == list(emotion_labels.FER_CLASSES)
  rec = index.read(0, decode_frames=True)
  probs = rec[emotion_labels.KEY]
  assert probs.shape == (T, 7) and probs.dtype == np.float16
  np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1.0, atol=5e-3)
  # The same as running the network on the frames directly (and frames survive the rewrite).
  direct = emotion_labels.clip_probs(emotion_labels.load_nets(), rec["frames"])
  np.testing.assert_allclose(probs, direct, atol=2e-3)
  # A rerun skips labelled records.
  assert emotion_labels.label_data(shards, progress=False) == {"labelled": 0, "already": 2,
                                                                "shards": 0}
  # Motion data takes the labels from its source shards, by clip name.
  motion = tmp_path / "motion"
  _write_shards(motion, ["b"], frames=False)
  emotion_labels.label_data(motion, source=shards, progress=False)
  got = records.ClipIndex.load(motion).read(0)
  np.testing.assert_array_equal(got[emotion_labels.KEY],
                                records.ClipIndex.load(shards).read(1)[emotion_labels.KEY])
  assert "frames_jpeg" not in got and got["z_dyn"].shape == (T, 2)


def test_emotion_control_summary_and_report(tmp_path):
  from vasa_jax.eval import emotion_control
  probs = {"a": {"neutral": _probs(5, "neutral"), "happy": _probs(5, "happy"),
                 "sad": _probs(5, "neutral")},
           "b": {"neutral": _probs(5, "neutral"), "happy": _probs(5, "happy", 0.4),
                 "sad": _probs(5, "happy", 0.9)}}
  s = emotion_control.summarize(probs, ["happy", "sad"])
  assert s["happy"]["raised"] == 2 and s["happy"]["p_asked"] == pytest.approx((0.7 + 0.4) / 2)
  assert s["happy"]["p_baseline"] == pytest.approx(0.3 / 6)
  assert s["happy"]["acc_asked"] == 1.0 and s["happy"]["acc_baseline"] == 0.0
  assert s["sad"]["raised"] == 0 and s["sad"]["delta"] < 0  # 0.1 / 6 < 0.3 / 6 on b
  md = emotion_control.render_markdown({
      "settings": {"checkpoint": "x", "portraits": ["a", "b"], "audio": "s.wav", "seconds": 3,
                   "seed": 0, "baseline": "neutral"},
      "emotions": s, "raised_emotions": ["happy"]})
  assert "| happy | 0.5500 | 0.0500 | +0.5000 | 2/2 |" in md
  grid = emotion_control.grid_image([("a", [np.zeros((8, 8, 3), np.uint8)] * 2)],
                                    ["neutral", "happy"])
  assert grid.shape[1] == 24 + 16 and grid.shape[0] == 14 + 8
  with pytest.raises(VasaInputError, match="contempt"):
    emotion_control.run(["p.png"], "s.wav", tmp_path, emotions=["contempt"])


def test_emotion_transfer_groups_drivers_by_file_name_and_reports():
  from vasa_jax.eval import emotion_transfer
  groups = emotion_transfer.group_drivers(
      ["d/M030_front_neutral_level1_001.mp4", "d/W009_front_sad_level3_001.mp4",
       "d/1001_DFA_SAD_XX.flv"], "neutral")
  assert groups == {"neutral": ["d/M030_front_neutral_level1_001.mp4"],
                    "sad": ["d/W009_front_sad_level3_001.mp4", "d/1001_DFA_SAD_XX.flv"]}
  with pytest.raises(VasaInputError, match="clip7.mp4: its file name states no emotion"):
    emotion_transfer.group_drivers(["d/M030_front_neutral.mp4", "d/clip7.mp4"], "neutral")
  with pytest.raises(VasaInputError, match="no class for"):
    emotion_transfer.group_drivers(["d/M030_front_contempt_level3_001.mp4"], "neutral")
  with pytest.raises(VasaInputError, match="baseline 'neutral'"):
    emotion_transfer.group_drivers(["d/M030_front_sad_level3_001.mp4"], "neutral")
  m = {"p_asked": 0.5, "p_baseline": 0.25, "delta": 0.25, "raised": 2, "portraits": 3}
  md = emotion_transfer.render_markdown({
      "settings": {"checkpoint": "x", "portraits": ["a", "b", "c"], "baseline": "neutral",
                   "drivers": {"neutral": ["n"], "sad": ["s"]}, "max_frames": 9},
      "rendered": {"sad": m}, "real": {"sad": dict(m, raised=1, portraits=1)},
      "carried": ["sad"]})
  assert "| sad | rendered | 0.5000 | 0.2500 | +0.2500 | 2/3 |" in md
  assert "| sad | real drivers | 0.5000 | 0.2500 | +0.2500 | 1/1 |" in md
  assert "3 portraits driven by 2 real clips (first 9 frames" in md


def test_emotion_transfer_on_real_clips(tmp_path, shared_data, capsys):
  """A happy and a neutral MEAD clip drive one unseen portrait: the report's real row sees the
  smile (the network gives it ~0.85 against ~0.03), and the rendered rows are probabilities."""
  if not store.available(("emotion",)):
    pytest.skip("face networks not fetched: run `vasa-jax fetch-face-nets`")
  clips = [shared_data / "silent" / f"dreamtalk__data_style_clip_video_M030_front_{e}_001.mp4"
           for e in ("neutral_level1", "happy_level3")]
  portrait = shared_data / "portraits" / "EAMM__test_image_14.png"
  assert cli.main(["eval-emotion-transfer", "--portraits", str(portrait), "--drivers",
                   *map(str, clips), "--out", str(tmp_path), "--max-frames", "6"]) == 0
  assert "wrote" in capsys.readouterr().out
  res = json.loads((tmp_path / "emotion_transfer.json").read_text())
  assert list(res["real"]) == ["happy"] and res["real"]["happy"]["delta"] > 0.4
  happy = res["rendered"]["happy"]
  assert happy["portraits"] == 1 and 0 <= happy["p_asked"] <= 1 and 0 <= happy["p_baseline"] <= 1
  assert res["carried"] == (["happy"] if happy["delta"] > 0 else [])
  assert "| happy | real drivers |" in (tmp_path / "emotion_transfer.md").read_text()
  # The grid: a title strip, then the driver's row and the portrait's, one column per emotion.
  grid = np.asarray(Image.open(tmp_path / "emotion_transfer_grid.png"))
  r = (grid.shape[0] - 14) // 2
  assert grid.shape == (14 + 2 * r, max(24, r // 2) + 2 * r, 3)
