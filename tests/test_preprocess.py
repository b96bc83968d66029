"""`preprocess` on real clips: records, index, skipped files, resuming, host split and merging.

Also the real-data end of the pipelines: shards -> make_latent_dataset, and fake motion records
(z_pose / z_dyn written from the same index) -> make_motion_dataset, compared with the synthetic
element spec.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from vasa_jax.config_utils import load_config
from vasa_jax.data import clip_labels, emotion_labels, input_pipeline, preprocess, records
from vasa_jax.errors import VasaInputError

# Two short 224x224 clips of different people (fast to decode); 2 s of each is kept.
CLIP_A = "Talking-Face_PC-AVS__misc_Input_00002.mp4"  # person vox_id5176
CLIP_B = "Talking-Face_PC-AVS__misc_Pose_Source_620900105.mp4"  # person vox_620900105
R = 64


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory):
  """Two hosts' runs over [clip A, clip B, a corrupt file], then their merged index."""
  root = tmp_path_factory.mktemp("prep")
  broken = root / "inputs" / "broken_clip.mp4"
  broken.parent.mkdir()
  broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
  inputs = [str(shared_data / "clips" / CLIP_A), str(shared_data / "clips" / CLIP_B),
            str(broken.parent)]
  kw = dict(persons_csv=shared_data / "manifest.csv", resolution=R, num_shards=2,
            progress=False, max_seconds=2.0)
  summaries = [preprocess.preprocess(inputs, root / f"host{i}", shard_index=i, **kw)
               for i in range(2)]
  merged = preprocess.merge_indices([root / "host0", root / "host1"], root / "all")
  return dict(root=root, inputs=inputs, kw=kw, summaries=summaries, merged=merged)


def test_list_inputs_and_host_split(shared_data):
  paths = preprocess.list_inputs([shared_data / "clips", str(shared_data / "silent" / "*.mp4")])
  assert paths == sorted(paths) and len(paths) == len(set(paths))
  assert all(p.suffix.lower() in preprocess.VIDEO_EXTS for p in paths)
  assert not any(p.suffix == ".wav" for p in paths)
  parts = [preprocess.shard_inputs(paths, i, 3) for i in range(3)]
  assert sorted(sum(parts, [])) == paths and not set(parts[0]) & set(parts[1])


def test_paired_wav_from_manifest(shared_data):
  rows = preprocess.read_persons_csv(shared_data / "manifest.csv")
  video = shared_data / "clips" / "styletalk__samples_source_video_video_KristiNoem.mp4"
  wav = preprocess.paired_audio(video, rows[video.name])
  assert wav is not None and wav.name == "styletalk__samples_source_video_wav_KristiNoem.wav"


def test_voice_activity_separates_speech_from_silence_and_tone():
  rng = np.random.default_rng(0)
  t = np.arange(16000 * 3) / 16000
  assert preprocess.voice_activity(None) == (0.0, 0.0)
  assert preprocess.voice_activity(np.zeros(48000, np.float32)) == (0.0, 0.0)
  tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # sustained, like music
  share, dips = preprocess.voice_activity(tone)
  assert share > 0.9 and not preprocess.is_speech(share, dips)
  # Syllable-like bursts: noise gated on and off at 4 Hz.
  bursts = (rng.standard_normal(t.size) * 0.2 * (np.sin(2 * np.pi * 4 * t) > 0)).astype(np.float32)
  assert preprocess.is_speech(*preprocess.voice_activity(bursts))


def test_preprocess_writes_records_and_reports_skips(prepared):
  s0, s1 = prepared["summaries"]
  assert s0["written"] + s1["written"] == 2
  skipped = s0["skipped"] + s1["skipped"]
  assert len(skipped) == 1 and skipped[0]["path"].endswith("broken_clip.mp4")
  assert skipped[0]["reason"].startswith("unreadable")
  merged = records.ClipIndex.load(prepared["root"] / "all")
  assert merged.persons == ["vox_620900105", "vox_id5176"]
  assert merged.resolution == R and len(merged.skipped) == 1
  data = json.loads((prepared["root"] / "all" / "index.json").read_text())
  assert {"version", "resolution", "fps", "clips", "skipped"} <= set(data)
  for entry in merged.clips:
    assert entry["frames"] == 50 and entry["has_speech"] is True
    assert {"clip", "person", "frames", "fps", "resolution", "has_speech", "shard",
            "record"} <= set(entry)
    rec = merged.read(entry)
    t = entry["frames"]
    assert rec["clip"] == entry["clip"] and rec["person"] == entry["person"]
    assert len(rec["frames_jpeg"]) == t
    assert records.decode_frames(rec, [0, t - 1]).shape == (2, R, R, 3)
    assert rec["audio"].shape == (t * 640,) and rec["audio"].dtype == np.float32
    assert rec["audio_feats"].shape == (t, 4, 80) and rec["audio_feats"].dtype == np.float32
    assert rec["landmarks"].shape == (t, 478, 3)
    assert rec["head_pose"].shape == (t, 3) and rec["gaze"].shape == (t, 2)
    assert rec["face_scale"].shape == (t,) and rec["mouth_open"].shape == (t,)
    assert isinstance(rec["has_speech"], bool)
    assert np.abs(rec["audio"]).max() > 0.01  # real speech kept
    if emotion_labels.available():  # per-frame emotion-network probabilities (issue 19)
      probs = rec[emotion_labels.KEY]
      assert probs.shape == (t, 7) and probs.dtype == np.float16
      np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1.0, atol=5e-3)
    else:
      assert emotion_labels.KEY not in rec


def test_asked_emotion_labels_fail_at_once_without_the_network(shared_data, tmp_path,
                                                               monkeypatch):
  from vasa_jax.facenets import store
  monkeypatch.setenv(store.ENV_VAR, str(tmp_path / "empty"))
  with pytest.raises(store.FaceNetsMissing, match="fetch-face-nets"):
    preprocess.preprocess(str(shared_data / "clips" / CLIP_A), tmp_path / "out", resolution=R,
                          progress=False, label_emotions=True)
  assert not list((tmp_path / "out" / "shards").iterdir())  # nothing written


def test_resume_skips_finished_clips(prepared):
  again = preprocess.preprocess(prepared["inputs"], prepared["root"] / "host0", shard_index=0,
                                **prepared["kw"])
  first = prepared["summaries"][0]
  assert again["written"] == 0 and again["skipped"] == []
  assert again["already_done"] == first["written"]
  index = records.ClipIndex.load(prepared["root"] / "host0")
  assert len(index.clips) == first["written"]
  assert len(index.skipped) == len(first["skipped"])
  assert not list((prepared["root"] / "host0").rglob("*.tmp"))


def _latent_config(shards):
  config = load_config("configs/latent.py:tiny")
  config.data.shards = str(shards)
  config.data.synthetic = False
  config.data.augment = True
  config.train.batch_size = 4
  return config


def _spec(batch):
  return {k: (v.shape, v.dtype) for k, v in batch.items()}


def test_latent_dataset_on_real_shards(prepared):
  config = _latent_config(prepared["root"] / "all")
  it = iter(input_pipeline.make_latent_dataset(config))
  batch = next(it)
  f32 = np.dtype(np.float32)
  assert _spec(batch) == {**{k: ((4, R, R, 3), np.dtype(np.uint8))
                             for k in ("source", "driver", "driver2", "other")},
                          "motion_labels": ((4, 3, 5), f32), "labels_valid": ((4, 3), f32),
                          "mouth_box": ((4, 3, 4), f32)}
  # Real shards carry label vectors of source, driver, driver2, centred on the data set.
  np.testing.assert_array_equal(batch["labels_valid"], 1.0)
  labels = batch["motion_labels"]
  assert np.all(np.abs(labels[..., :3]) < np.pi / 2) and np.all(np.abs(labels[..., 3]) < 0.5)
  assert np.all(np.isfinite(labels)) and labels[..., 4].std() > 0
  # Mouth boxes (face-mesh lips) sit in the lower middle of the face crop.
  box = batch["mouth_box"]
  assert np.all((box[..., 0] > 0.3) & (box[..., 0] < 0.7) & (box[..., 1] > 0.5))
  assert np.all((box[..., 2:] > 0.02) & (box[..., 2:] < 0.3))
  # The statistics that centre them (configs/latent.py holds those of ../shared/data).
  stats = input_pipeline.label_stats(input_pipeline.ClipSource(prepared["root"] / "all"))
  assert np.isfinite(stats.log_scale_mean) and stats.mouth_std > 0
  synthetic = next(iter(input_pipeline.make_synthetic_latent_dataset(config)))
  assert _spec(synthetic) == _spec(batch)
  # Resuming from a saved state yields the same next batch.
  state = it.get_state()
  want = next(it)
  it2 = iter(input_pipeline.make_latent_dataset(config))
  it2.set_state(state)
  got = next(it2)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])


def _write_fake_motion(index: records.ClipIndex, out_dir, z_dyn_dim):
  """A stand-in for `extract-motion`: same layout, z_pose/z_dyn added, frames dropped."""
  rng = np.random.default_rng(0)
  motion_index = records.ClipIndex(root=out_dir.resolve(), resolution=index.resolution)
  allm = []
  for i, entry in enumerate(index.clips):
    rec = index.read(entry)
    rec.pop("frames_jpeg")
    t = entry["frames"]
    rec["z_pose"] = rng.normal(0, 0.1, (t, 6)).astype(np.float32)
    rec["z_dyn"] = rng.normal(0, 1.0, (t, z_dyn_dim)).astype(np.float32)
    allm.append(np.concatenate([rec["z_pose"], rec["z_dyn"]], -1))
    shard = f"shards/motion-{i:05d}.array_record"
    records.write_shard(out_dir / shard, [rec])
    motion_index.clips.append(dict(entry, shard=shard, record=0))
  motion_index.save()
  allm = np.concatenate(allm)
  (out_dir / "motion_stats.json").write_text(json.dumps(
      {"mean": allm.mean(0).tolist(), "std": allm.std(0).tolist()}))


def test_motion_dataset_on_fake_motion_records(prepared):
  config = load_config("configs/motion.py:tiny")
  out = prepared["root"] / "motion"
  _write_fake_motion(prepared["merged"], out, config.model.z_dyn_dim)
  config.data.motion = str(out)
  config.data.synthetic = False
  batch = next(iter(input_pipeline.make_motion_dataset(config)))
  b, w, k, dm = config.train.batch_size, config.data.window, config.data.context, 22
  f32 = np.dtype(np.float32)
  assert _spec(batch) == {
      "motion": ((b, w, dm), f32), "motion_prev": ((b, k, dm), f32),
      "audio": ((b, w, 4, 80), f32), "audio_prev": ((b, k, 4, 80), f32),
      "has_prev": ((b,), np.dtype(bool)), "gaze": ((b, 2), f32), "distance": ((b, 1), f32),
      "emotion": ((b, 8), f32), "emotion_mask": ((b,), np.dtype(bool))}
  assert np.all(np.isfinite(batch["motion"])) and np.all(np.isfinite(batch["distance"]))
  # No emotion in these clip names: the emotion network's labels where preprocess stored them
  # (a distribution over 7 of the 8 emotions), else none.
  if emotion_labels.available():
    assert batch["emotion_mask"].all()
    np.testing.assert_allclose(batch["emotion"].sum(-1), 1.0, atol=5e-3)
    assert not batch["emotion"][:, clip_labels.EMOTIONS.index("contempt")].any()
  else:
    assert not batch["emotion_mask"].any() and not batch["emotion"].any()
  # Zero context exactly where there is no previous window.
  assert not batch["motion_prev"][~batch["has_prev"]].any()
  synthetic = next(iter(input_pipeline.make_synthetic_motion_dataset(config)))
  assert _spec(synthetic) == _spec(batch)


def test_slim_shards_keep_what_stage1_reads(prepared, tmp_path):
  from vasa_jax.data import face_labels, slim  # pylint: disable=g-import-not-at-top
  src = records.ClipIndex.load(prepared["root"] / "all")
  drop = src.clips[0]["person"]
  summary = slim.slim_shards(prepared["root"] / "all", tmp_path / "slim", every=2, quality=80,
                             exclude_persons=[drop], progress=False)
  out = records.ClipIndex.load(tmp_path / "slim")
  kept = [c for c in src.clips if c["person"] != drop]
  assert summary["clips"] == len(out.clips) == len(kept) >= 1
  for full_entry, entry in zip(kept, out.clips):
    full, rec = src.read(full_entry), out.read(entry)
    n = full_entry["frames"]
    assert entry["frames"] == len(rec["frames_jpeg"]) == (n + 1) // 2
    assert not {"landmarks", "audio", "audio_feats"} & set(rec)
    np.testing.assert_array_equal(rec["mouth_open"], full["mouth_open"][::2])
    np.testing.assert_allclose(rec["mouth_box"],
                               face_labels.mouth_box(full["landmarks"][::2], R), atol=1e-6)
    frames = records.decode_frames(rec, [1])
    ref = records.decode_frames(full, [2])
    assert frames.shape == ref.shape and np.abs(frames.astype(int) - ref).mean() < 6
  # The stage-1 pipeline serves the slim shards with the full shards' element spec.
  batch = next(iter(input_pipeline.make_latent_dataset(_latent_config(tmp_path / "slim"))))
  full_batch = next(iter(input_pipeline.make_latent_dataset(
      _latent_config(prepared["root"] / "all"))))
  assert _spec(batch) == _spec(full_batch)
  np.testing.assert_array_equal(batch["labels_valid"], 1.0)
  assert np.all((batch["mouth_box"][..., 2:] > 0.02) & (batch["mouth_box"][..., 2:] < 0.3))
  with pytest.raises(VasaInputError, match="already holds"):
    slim.slim_shards(prepared["root"] / "all", tmp_path / "slim", progress=False)
