"""extract-motion: stage 1 encoder over shards -> motion shards the stage 2 pipeline reads."""
import json

import numpy as np
import pytest

from vasa_jax.config_utils import load_config
from vasa_jax.data import input_pipeline, records
from vasa_jax.inference import extract_motion


def _fake_shards(root, resolution, clips=3, frames=20):
  rng = np.random.default_rng(0)
  index = records.ClipIndex(root=root, resolution=resolution, fps=25)
  for k in range(clips):
    rec = {"clip": f"clip{k}", "person": f"p{k}", "fps": 25.0,
           "frames": rng.integers(0, 255, (frames, resolution, resolution, 3), np.uint8),
           "audio": np.zeros((frames * 640,), np.float32),
           "audio_feats": rng.standard_normal((frames, 4, 80)).astype(np.float32),
           "landmarks": np.zeros((frames, 478, 3), np.float32),
           "head_pose": np.zeros((frames, 3), np.float32),
           "gaze": np.zeros((frames, 2), np.float32),
           "face_scale": np.full((frames,), 0.3 + 0.01 * k, np.float32),
           "mouth_open": np.zeros((frames,), np.float32), "has_speech": True}
    records.write_shard(root / "shards" / f"c{k}.array_record", [rec])
    index.clips.append({"clip": rec["clip"], "person": rec["person"], "frames": frames,
                        "fps": 25.0, "resolution": resolution, "has_speech": True,
                        "shard": f"shards/c{k}.array_record", "record": 0})
  index.save()


@pytest.fixture(scope="module")
def latent_export(tmp_path_factory):
  from vasa_jax.inference.pipeline import init_random_params
  from vasa_jax.train import checkpoint
  latent = load_config("configs/latent.py:tiny")
  motion = load_config("configs/motion.py:tiny")
  params, _ = init_random_params(latent, motion)
  out = tmp_path_factory.mktemp("latent")
  checkpoint.export_params(params, latent, out, dtype="float32")
  return out, latent


def test_extract_motion_writes_motion_the_stage2_pipeline_reads(tmp_path, latent_export):
  ckpt, latent = latent_export
  r = int(latent.model.resolution)
  _fake_shards(tmp_path / "shards", r)
  out = tmp_path / "motion"
  summary = extract_motion.extract_motion(ckpt, tmp_path / "shards", out, batch=8,
                                          progress=False)
  assert summary["written"] == 3 and summary["frames"] == 60
  index = records.ClipIndex.load(out)
  rec = index.read(index.clips[0])
  assert "frames_jpeg" not in rec
  assert rec["z_pose"].shape == (20, 6) and rec["z_dyn"].shape == (20, latent.model.z_dyn_dim)
  assert np.isfinite(rec["z_dyn"]).all()
  stats = json.loads((out / "motion_stats.json").read_text())
  assert len(stats["mean"]) == 6 + latent.model.z_dyn_dim

  # Resumable: a second run finds every clip done.
  again = extract_motion.extract_motion(ckpt, tmp_path / "shards", out, batch=8, progress=False)
  assert again["written"] == 0 and again["total_clips"] == 3

  # The stage 2 pipeline reads it with normalised motion.
  config = load_config("configs/motion.py:tiny", ["data.synthetic=False",
                                                  f"data.motion={out}"])
  batch = next(iter(input_pipeline.make_motion_dataset(config)))
  w, k = config.data.window, config.data.context
  b = config.train.batch_size
  assert batch["motion"].shape == (b, w, config.model.motion_dim)
  assert batch["motion_prev"].shape == (b, k, config.model.motion_dim)
  assert batch["audio"].shape == (b, w, 4, 80)


def test_rejects_a_motion_checkpoint(tmp_path):
  from vasa_jax.errors import VasaInputError
  from vasa_jax.train import checkpoint
  motion = load_config("configs/motion.py:tiny")
  checkpoint.export_params({"w": np.zeros((2,), np.float32)}, motion, tmp_path / "m")
  with pytest.raises(VasaInputError, match="not a stage 1"):
    extract_motion.load_face_model(tmp_path / "m")


def test_two_hosts_then_merge_equal_one_run(tmp_path, latent_export):
  from vasa_jax import cli
  export, _ = latent_export
  shards = tmp_path / "shards"
  _fake_shards(shards, 64, clips=3, frames=8)
  one = tmp_path / "one"
  extract_motion.extract_motion(export, shards, one, batch=8, progress=False)
  for i in range(2):
    assert cli.main(["extract-motion", "--latent-checkpoint", str(export), "--shards",
                     str(shards), "--out", str(tmp_path / f"host{i}"), "--shard-index", str(i),
                     "--num-shards", "2"]) == 0
  assert len(records.ClipIndex.load(tmp_path / "host0").clips) == 2  # clips 0 and 2
  assert cli.main(["extract-motion", "--out", str(tmp_path / "all"), "--merge",
                   str(tmp_path / "host0"), str(tmp_path / "host1")]) == 0
  merged, single = records.ClipIndex.load(tmp_path / "all"), records.ClipIndex.load(one)
  assert sorted(c["clip"] for c in merged.clips) == sorted(c["clip"] for c in single.clips)
  assert merged.extra["z_dyn_dim"] == single.extra["z_dyn_dim"]
  by_name = {c["clip"]: c for c in single.clips}
  for c in merged.clips:
    np.testing.assert_allclose(merged.read(c)["z_dyn"], single.read(by_name[c["clip"]])["z_dyn"],
                               atol=1e-6)
  stats = [json.loads((d / extract_motion.STATS_NAME).read_text()) for d in
           (tmp_path / "all", one)]
  np.testing.assert_allclose(stats[0]["mean"], stats[1]["mean"], atol=1e-6)
  assert stats[0]["frames"] == stats[1]["frames"] == 24
