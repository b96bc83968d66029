"""eval-latent: stage 1 reconstruction / identity figures per split, on a random tiny model."""
import json

import numpy as np
import pytest

from vasa_jax.config_utils import load_config
from vasa_jax.data import records
from vasa_jax.eval import latent_quality

FRAMES = 6


def _fake_shards(root, resolution):
  """Six clips of four persons; p2 is the unseen person, p3's clip is a still image."""
  rng = np.random.default_rng(0)
  index = records.ClipIndex(root=root, resolution=resolution, fps=25)
  persons = ["p0", "p0", "p1", "p2", "p2", "p3"]
  for k, person in enumerate(persons):
    frames = rng.integers(0, 255, (FRAMES, resolution, resolution, 3), np.uint8)
    if person == "p3":
      frames[:] = frames[0]
    rec = {"clip": f"clip{k}", "person": person, "fps": 25.0, "frames": frames,
           "audio": np.zeros((FRAMES * 640,), np.float32), "has_speech": False}
    records.write_shard(root / "shards" / f"c{k}.array_record", [rec])
    index.clips.append({"clip": rec["clip"], "person": person, "frames": FRAMES, "fps": 25.0,
                        "resolution": resolution, "has_speech": False,
                        "shard": f"shards/c{k}.array_record", "record": 0})
  index.save()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from vasa_jax.models.face_model import FaceModel
  from vasa_jax.train import checkpoint

  config = load_config("configs/latent.py:tiny", ["data.val_persons=['p2']"])
  r = int(config.model.resolution)
  img = jnp.zeros((1, r, r, 3), jnp.float32)
  from vasa_jax.models import layers
  # An "rbg" key: threefry init of the ~200 tensors takes XLA:CPU far longer to compile.
  key = layers.fast_init_key(jax.random.key(0))
  params = jax.jit(FaceModel(config.model).init)(key, img, img)["params"]
  root = tmp_path_factory.mktemp("latent_quality")
  # A training run stores {"gen", "disc"}; the evaluator must pick the generator.
  ckpt = checkpoint.export_params({"gen": nn.unbox(params)}, config, root / "ckpt",
                                  dtype="float32")
  _fake_shards(root / "data", r)
  return root, ckpt


def test_pair_frames_and_clip_selection_are_deterministic():
  assert latent_quality.pair_frames(10, 4) == [(1, 6), (3, 8), (6, 1), (8, 3)]
  assert latent_quality.pair_frames(3, 8) == [(0, 1), (1, 2), (2, 0)]  # capped at T
  assert latent_quality.pair_frames(1, 2) == [(0, 0)]
  entries = [{"clip": f"a{i}", "person": "a"} for i in range(3)] + [{"clip": "b0", "person": "b"}]
  chosen = latent_quality.select_clips(entries, 2, seed=0)
  assert {e["person"] for e in chosen} == {"a", "b"}  # spread over persons first
  assert chosen == latent_quality.select_clips(entries, 2, seed=0)
  assert len(latent_quality.select_clips(entries, None)) == 4


def test_eval_latent_cli_reports_both_splits(setup):
  from vasa_jax import cli
  root, ckpt = setup
  out = root / "report"
  rc = cli.main(["eval-latent", "--checkpoint", str(ckpt), "--shards", str(root / "data"),
                 "--out", str(out), "--frames-per-clip", "2", "--batch", "4"])
  assert rc == 0
  result = json.loads((out / latent_quality.JSON_NAME).read_text())
  assert result["val_persons"] == ["p2"]
  train, val = result["splits"]["train"], result["splits"]["val"]
  assert (train["clips"], val["clips"]) == (4, 2)
  assert (train["pairs"], val["pairs"]) == (8, 4)
  by_split = {c["clip"]: c["split"] for c in result["clips"]}
  assert by_split == {"clip0": "train", "clip1": "train", "clip2": "train", "clip3": "val",
                      "clip4": "val", "clip5": "train"}
  for key in latent_quality.PAIR_KEYS:
    assert np.isfinite(train[key]) and np.isfinite(val[key]), key
    assert np.isclose(result["gap"][key], train[key] - val[key])
  for c in result["clips"]:
    assert -1.0 <= c["id_cross"] <= 1.0 and 0.0 < c["psnr"] < 100.0
    # Cross-identity partners are always another person.
    partner = next(x for x in result["clips"] if x["clip"] == c["partner"])
    assert partner["person"] != c["person"]
  # The still clip: driver == source pixel for pixel, so copying the source is perfect and the
  # identity encoder sees the same person (cosine 1); a random model cannot reconstruct it.
  still = next(c for c in result["clips"] if c["person"] == "p3")
  assert still["ssim_copy"] == pytest.approx(1.0, abs=1e-5)
  assert still["psnr_copy"] == pytest.approx(100.0)
  assert still["id_same_person"] == pytest.approx(1.0, abs=1e-5)
  assert still["psnr"] < still["psnr_copy"]
  md = (out / latent_quality.MD_NAME).read_text()
  assert "| train |" in md and "| val |" in md and "train − val" in md
  from PIL import Image
  grid = np.asarray(Image.open(out / latent_quality.GRID_NAME))
  r = 64
  assert grid.shape[0] == 14 + 5 * r  # title strip, 3 training rows, 2 unseen rows
  assert grid.shape[1] > 5 * r


def test_single_split_and_missing_val_persons(setup):
  root, ckpt = setup
  # Only the unseen person: evaluate_latent works, compare_splits names the empty split.
  res = latent_quality.evaluate_latent(ckpt, root / "data", persons=["p2"], frames_per_clip=1,
                                       batch=4, val_persons=["p2", "nobody"])
  assert set(res["splits"]) == {"val"} and res["val_persons_missing"] == ["nobody"]
  assert res["clips"][0]["partner"] == "clip4"  # the only other clip (same person: mirrored)
  from vasa_jax.errors import VasaInputError
  with pytest.raises(VasaInputError, match="split has no clips"):
    latent_quality.compare_splits(ckpt, root / "data", val_persons=["nobody"], frames_per_clip=1,
                                  batch=4)
