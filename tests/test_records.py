"""Clip records: msgpack round trip, JPEG frames, partial frame decoding, shards, index.json."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vasa_jax.data import records
from vasa_jax.errors import VasaInputError


def _smooth_frames(t, r, seed=0):
  # Smooth images compress well, so JPEG error stays small and the tolerance can be tight.
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:r, 0:r] / r
  out = []
  for i in range(t):
    c = rng.uniform(0.2, 0.8, size=3)
    img = np.stack([c[0] + 0.2 * np.sin(6 * xx + i), c[1] + 0.2 * np.cos(5 * yy - i),
                    c[2] + 0.2 * xx * yy], -1)
    out.append(np.clip(img * 255, 0, 255).astype(np.uint8))
  return np.stack(out)


def _record(t=5, r=32):
  rng = np.random.default_rng(1)
  return {
      "clip": "M030_angry_001", "person": "mead_M030", "fps": 25.0,
      "frames": _smooth_frames(t, r),
      "audio": rng.standard_normal(t * 640).astype(np.float32),
      "audio_feats": rng.standard_normal((t, 4, 80)).astype(np.float32),
      "landmarks": rng.uniform(0, r, (t, 478, 3)).astype(np.float32),
      "head_pose": rng.standard_normal((t, 3)).astype(np.float32),
      "gaze": rng.standard_normal((t, 2)).astype(np.float32),
      "face_scale": rng.uniform(0.2, 0.4, t).astype(np.float32),
      "mouth_open": rng.uniform(0, 1, t).astype(np.float32),
      "detected": np.array([True, False, True, True, True]),
      "has_speech": np.bool_(True),
  }


def test_round_trip_keeps_arrays_strings_bools_and_frames():
  rec = _record()
  data = records.encode_clip(rec)
  assert isinstance(data, bytes)
  out = records.decode_clip(data)
  assert out["clip"] == "M030_angry_001" and out["person"] == "mead_M030"
  assert out["fps"] == 25.0
  assert out["has_speech"] is True
  for key in ("audio", "audio_feats", "landmarks", "head_pose", "gaze", "face_scale",
              "mouth_open", "detected"):
    assert out[key].dtype == rec[key].dtype, key
    np.testing.assert_array_equal(out[key], rec[key])
  assert len(out["frames_jpeg"]) == 5 and all(isinstance(b, bytes) for b in out["frames_jpeg"])
  assert out["frames"].shape == (5, 32, 32, 3) and out["frames"].dtype == np.uint8
  err = np.abs(out["frames"].astype(np.int32) - rec["frames"].astype(np.int32))
  assert err.mean() < 2.0 and err.max() < 40


def test_decode_frames_reads_only_requested_frames():
  rec = _record()
  out = records.decode_clip(records.encode_clip(rec), decode_frames=False)
  assert "frames" not in out
  sub = records.decode_frames(out, [3, 0])
  assert sub.shape == (2, 32, 32, 3) and sub.dtype == np.uint8
  full = records.decode_clip(records.encode_clip(rec))["frames"]
  np.testing.assert_array_equal(sub, full[[3, 0]])


def test_motion_record_without_frames():
  rec = {k: v for k, v in _record().items() if k != "frames"}
  rec["z_pose"] = np.zeros((5, 6), np.float32)
  rec["z_dyn"] = np.ones((5, 16), np.float32)
  out = records.decode_clip(records.encode_clip(rec))
  assert out["z_dyn"].shape == (5, 16) and "frames" not in out and "frames_jpeg" not in out
  with pytest.raises(VasaInputError, match="no frames"):
    records.decode_frames(out, [0])


def test_shard_and_index_round_trip(tmp_path):
  recs = [_record(), dict(_record(), clip="other", person="p2")]
  shard = tmp_path / "shards" / "clips-00000.array_record"
  records.write_shard(shard, recs)
  assert shard.is_file() and not list(tmp_path.glob("shards/*.tmp"))
  back = records.read_record(shard, 1)
  assert back["clip"] == "other" and "frames" not in back
  assert records.decode_frames(back, [4]).shape == (1, 32, 32, 3)
  with pytest.raises(VasaInputError, match="record 2"):
    records.read_record(shard, 2)

  index = records.ClipIndex(root=tmp_path, resolution=32)
  for i, r in enumerate(recs):
    index.clips.append({"clip": r["clip"], "person": r["person"], "frames": 5, "fps": 25.0,
                        "resolution": 32, "has_speech": True,
                        "shard": "shards/clips-00000.array_record", "record": i})
  index.skipped.append({"path": "bad.mp4", "reason": "unreadable"})
  index.extra["note"] = "kept"
  index.save()
  data = json.loads((tmp_path / "index.json").read_text())
  assert data["version"] == 1 and data["resolution"] == 32 and len(data["clips"]) == 2
  loaded = records.ClipIndex.load(tmp_path)
  assert loaded.persons == ["mead_M030", "p2"] and loaded.num_frames == 10
  assert loaded.extra["note"] == "kept" and loaded.skipped[0]["reason"] == "unreadable"
  assert loaded.read(1)["clip"] == "other"
  # Saving elsewhere keeps the shard paths valid (rewritten relative to the new place).
  other = tmp_path / "elsewhere"
  other.mkdir()
  loaded.save(other)
  moved = records.ClipIndex.load(other)
  assert moved.read(0)["clip"] == "M030_angry_001"


def test_missing_index_is_a_clear_error(tmp_path):
  with pytest.raises(VasaInputError, match="preprocess"):
    records.ClipIndex.load(tmp_path)
