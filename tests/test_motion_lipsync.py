"""eval-motion: mouth readout, lip-sync figures and validation loss on fake motion records."""
import json

import numpy as np
import pytest

from vasa_jax.config_utils import load_config
from vasa_jax.data import records
from vasa_jax.inference import extract_motion
from vasa_jax.eval import motion_lipsync

FRAMES = 40
PERSONS = ["p0", "p0", "p1", "p1", "p2", "p2"]  # p2 is held out


def _fake_motion_dir(root, z_dyn_dim, weights):
  """Motion records whose mouth_open is a planted linear function of z_dyn, and whose audio is
  noise modulated by that mouth opening (so the label is in sync with the audio)."""
  rng = np.random.default_rng(1)
  index = records.ClipIndex(root=root, resolution=64, fps=25)
  index.extra["z_dyn_dim"] = z_dyn_dim
  t = np.arange(FRAMES)[:, None]
  for k, person in enumerate(PERSONS):
    z_pose = 0.1 * np.sin(0.2 * t + rng.uniform(0, 6, (1, 6)))
    z_dyn = np.sin(rng.uniform(0.1, 0.9, (1, z_dyn_dim)) * t + rng.uniform(0, 6, (1, z_dyn_dim)))
    mouth = 0.3 + z_dyn @ weights  # (T,)
    audio = (rng.standard_normal((FRAMES, 640)) * np.exp(3 * mouth)[:, None]).reshape(-1)
    rec = {"clip": f"clip{k}", "person": person, "fps": 25.0,
           "audio": audio.astype(np.float32),
           "audio_feats": rng.standard_normal((FRAMES, 4, 80)).astype(np.float32),
           "gaze": np.full((FRAMES, 2), 0.05 * k, np.float32),
           "face_scale": np.full((FRAMES,), 0.3 + 0.01 * k, np.float32),
           "mouth_open": mouth.astype(np.float32), "has_speech": True,
           "z_pose": z_pose.astype(np.float32), "z_dyn": z_dyn.astype(np.float32)}
    records.write_shard(root / "shards" / f"m{k}.array_record", [rec])
    index.clips.append({"clip": rec["clip"], "person": person, "frames": FRAMES, "fps": 25.0,
                        "resolution": 64, "has_speech": True,
                        "shard": f"shards/m{k}.array_record", "record": 0})
  index.save()
  stats = extract_motion.motion_stats(index)
  (root / "motion_stats.json").write_text(json.dumps(stats))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  import jax
  from vasa_jax.inference.pipeline import init_motion_params
  from vasa_jax.train import checkpoint

  config = load_config("configs/motion.py:tiny", ["data.val_persons=['p2']"])
  m = config.model
  params = init_motion_params(config, jax.random.key(0))
  root = tmp_path_factory.mktemp("motion_lipsync")
  ckpt = checkpoint.export_params(params, config, root / "ckpt", dtype="float32")
  weights = np.random.default_rng(2).normal(0, 0.05, int(m.z_dyn_dim))
  _fake_motion_dir(root / "motion", int(m.z_dyn_dim), weights)
  return root, ckpt, config


def test_ridge_readout_and_correlation():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((200, 5))
  y = 2.0 * x[:, 1] - x[:, 3] + 0.5
  y[::17] = np.nan  # frames without a face are left out
  model = motion_lipsync.fit_ridge(x, y, alpha=1e-3)
  assert motion_lipsync.r2_score(y, motion_lipsync.predict_ridge(model, x)) > 0.999
  # Per-clip offsets the features do not explain: the within-clip fit still finds the slope.
  groups = np.repeat(np.arange(4), 50)
  y2 = 2.0 * x[:, 1] + 5.0 * rng.standard_normal(4)[groups]
  within = motion_lipsync.fit_ridge(x, y2, alpha=1e-3, groups=groups)
  assert within["w"][1] / within["std"][1] == pytest.approx(2.0, abs=0.05)
  plain = motion_lipsync.fit_ridge(x, y2, alpha=1e-3)
  assert motion_lipsync.r2_score(y2, motion_lipsync.predict_ridge(plain, x)) < 0.5
  assert motion_lipsync.correlation(x[:, 0], 3 * x[:, 0] + 1) == pytest.approx(1.0)
  assert motion_lipsync.correlation(x[:, 0], np.ones(200)) == 0.0


def test_evaluate_motion_on_fake_records(setup):
  root, ckpt, config = setup
  out = root / "report"
  res = motion_lipsync.evaluate_motion(None, ckpt, root / "motion", split="val", steps=2,
                                       out=out)
  # The planted relation mouth_open = 0.3 + z_dyn @ w is recovered, also on unseen persons.
  assert res["ridge"]["r2_train"] > 0.99 and res["ridge"]["r2_val"] > 0.99
  assert res["ridge"]["r2_val_within_clip"] > 0.99
  assert res["val_persons"] == ["p2"]
  assert [c["clip"] for c in res["clips"]] == ["clip4", "clip5"]
  mn = res["means"]
  for key, value in mn.items():
    assert np.isfinite(value), key
  # Readout of real motion == label, so the two rows agree; the label follows its own audio
  # (planted) better than another clip's.
  assert mn["real_vs_label"] > 0.99
  assert mn["sync_label_corr_raw"] > 0.5
  assert mn["sync_label_corr_raw"] > mn["sync_mismatched_corr_raw"]
  assert mn["sync_real_motion_corr_raw"] == pytest.approx(mn["sync_label_corr_raw"], abs=0.02)
  clip = res["clips"][0]
  assert len(clip["series"]["generated"]) == FRAMES
  assert clip["controls"]["gaze"] == pytest.approx([0.2, 0.2])  # the clip's main gaze
  # Face scale 0.34 against 0.325 +- 0.0171 over all clips: a larger face is a closer head.
  assert clip["controls"]["distance"] == pytest.approx([-0.878], abs=1e-3)
  assert mn["std_generated"] > 0  # random model: generated motion moves
  loss = res["loss"]
  assert loss["batches"] >= 1 and np.isfinite(loss["loss_x0"]) and loss["loss_x0"] > 0
  saved = json.loads((out / motion_lipsync.JSON_NAME).read_text())
  assert saved["ridge"]["r2_val"] == pytest.approx(res["ridge"]["r2_val"])
  md = (out / motion_lipsync.MD_NAME).read_text()
  assert "generated motion -> readout" in md and "Validation diffusion loss" in md


def test_rejects_a_mismatched_stage1_run(setup, tmp_path):
  from vasa_jax.errors import VasaInputError
  from vasa_jax.train import checkpoint
  root, ckpt, _ = setup
  latent = load_config("configs/latent.py:demo")  # z_dyn 32, the tiny motion has 16
  checkpoint.export_params({"w": np.zeros((2,), np.float32)}, latent, tmp_path / "latent")
  with pytest.raises(VasaInputError, match="z_dyn_dim 32"):
    motion_lipsync.evaluate_motion(tmp_path / "latent", ckpt, root / "motion", steps=2)
  with pytest.raises(VasaInputError, match="not a stage 2"):
    motion_lipsync.evaluate_motion(None, tmp_path / "latent", root / "motion", steps=2)


def test_slim_motion_keeps_what_stage2_and_eval_motion_read(setup, tmp_path):
  from vasa_jax.data import input_pipeline, slim  # pylint: disable=g-import-not-at-top
  from vasa_jax.errors import VasaInputError
  root, ckpt, config = setup
  summary = slim.slim_motion(root / "motion", tmp_path / "slim", audio_persons=["p2"],
                             clips_per_shard=4, progress=False)
  full, out = records.ClipIndex.load(root / "motion"), records.ClipIndex.load(tmp_path / "slim")
  assert summary["clips"] == len(out.clips) == len(PERSONS)
  assert summary["frames"] == full.num_frames and out.extra["z_dyn_dim"] == full.extra["z_dyn_dim"]
  assert len({c["shard"] for c in out.clips}) == 2  # 4 + 2 clips
  assert (tmp_path / "slim" / "motion_stats.json").read_bytes() == (
      root / "motion" / "motion_stats.json").read_bytes()
  for entry, slim_entry in zip(full.clips, out.clips):
    rec, small = full.read(entry), out.read(slim_entry)
    assert ("audio" in small) == (entry["person"] == "p2")
    assert small["audio_feats"].dtype == np.float16
    np.testing.assert_allclose(small["audio_feats"], rec["audio_feats"], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(small["z_dyn"], rec["z_dyn"])
  # Stage 2 windows of both copies agree to float16 precision, and eval-motion on the
  # held-out person's clips gives the same figures.
  make = lambda d: input_pipeline.make_motion_dataset(  # noqa: E731
      load_config("configs/motion.py:tiny", [f"data.motion={d}", "data.synthetic=False"]),
      "train", 0, 1)
  a, b = next(iter(make(root / "motion"))), next(iter(make(tmp_path / "slim")))
  assert a.keys() == b.keys()
  np.testing.assert_allclose(b["audio"], a["audio"], rtol=1e-3, atol=1e-3)
  np.testing.assert_array_equal(b["motion"], a["motion"])
  ref = motion_lipsync.evaluate_motion(None, ckpt, root / "motion", split="val", steps=2)
  res = motion_lipsync.evaluate_motion(None, ckpt, tmp_path / "slim", split="val", steps=2)
  for key in ("sync_label_corr_raw", "sync_generated_corr_raw", "std_generated"):
    assert res["means"][key] == pytest.approx(ref["means"][key], abs=1e-3), key
  with pytest.raises(VasaInputError, match="already holds"):
    slim.slim_motion(root / "motion", tmp_path / "slim", progress=False)
  with pytest.raises(VasaInputError, match="not in"):
    slim.slim_motion(root / "motion", tmp_path / "other", audio_persons=["nobody"])
  with pytest.raises(VasaInputError, match="motion_stats.json"):
    slim.slim_motion(tmp_path / "other", tmp_path / "third")
