"""The bundled demo checkpoint: loads with no network, generates, and its controls."""
import pathlib

import numpy as np
import pytest

from configs import common
from vasa_jax.config_utils import load_config
from vasa_jax.inference import pipeline as pipeline_lib

DEMO = pipeline_lib.DEFAULT_CHECKPOINT


@pytest.fixture(scope="module")
def demo():
  if not (DEMO / pipeline_lib.PIPELINE_FILE).is_file():
    pytest.skip("no bundled demo checkpoint in this checkout")
  return pipeline_lib.load_pipeline()


@pytest.fixture(scope="module")
def speech():
  from vasa_jax.data import media
  from vasa_jax.inference.generate_cli import BUNDLED_SPEECH
  return media.read_audio(str(BUNDLED_SPEECH))[:16000 * 2]


def test_bundled_checkpoint_is_small_and_self_describing():
  files = [p for p in DEMO.rglob("*") if p.is_file()]
  assert files, "vasa_jax/assets/demo is missing"
  assert sum(p.stat().st_size for p in files) < 50 * 2**20
  for part in ("latent", "motion"):
    assert (DEMO / part / "config.json").is_file() and (DEMO / part / "params.msgpack").is_file()


def test_demo_generates_moving_frames(demo, speech):
  from skimage import data
  result = demo.generate(data.astronaut(), speech, seed=0)
  assert result.frames.shape == (50, 512, 512, 3)  # pasted back into the 512 x 512 photo
  assert np.isfinite(result.motion).all()
  # Frames differ over time (the motion is used), and are not a flat colour.
  assert np.abs(np.diff(result.frames.astype(np.float32), axis=0)).mean() > 0.01
  assert result.frames.std() > 10


def test_distance_control_moves_the_head(demo, speech):
  from skimage import data
  near = demo.generate(data.astronaut(), speech, seed=0, distance=-2.0).motion
  far = demo.generate(data.astronaut(), speech, seed=0, distance=2.0).motion
  log_scale = 5  # z_pose: yaw, pitch, roll, tx, ty, log scale
  # A nearer head is larger by a clear margin (a tenth of the data's spread of scales).
  assert near[:, log_scale].mean() - far[:, log_scale].mean() > 0.1 * demo.std[log_scale]


def test_gaze_control_turns_the_head_towards_it(demo, speech):
  from skimage import data
  right = demo.generate(data.astronaut(), speech, seed=0, gaze=(0.3, 0.0)).motion
  left = demo.generate(data.astronaut(), speech, seed=0, gaze=(-0.3, 0.0)).motion
  yaw = 0  # > 0: the nose turns towards image right, like gaze theta > 0
  assert right[:, yaw].mean() - left[:, yaw].mean() > 0.1 * demo.std[yaw]


@pytest.mark.slow
def test_eval_demo_script_reports_every_video(shared_data, tmp_path):
  """launch/eval_demo.sh end to end on the bundled checkpoint (~6 min on 2 cores)."""
  import json
  import os
  import subprocess
  import sys
  root = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, PYTHON=sys.executable,
             VASA_JAX=str(pathlib.Path(sys.executable).with_name("vasa-jax")))
  subprocess.run(["bash", str(root / "launch" / "eval_demo.sh"), str(shared_data),
                  str(tmp_path)], check=True, cwd=root, env=env, capture_output=True)
  data = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  n_portraits = len(list((shared_data / "portraits").iterdir()))
  assert data["summary"]["generated"]["count"] == 4 + n_portraits
  assert data["summary"]["real"]["count"] == 12
  assert all(r["num_frames"] <= 300 and r["face_found_frac"] > 0.9 for r in data["generated"])


def test_gpu_recipe_runs_in_order_and_matches_the_bundled_defaults(tmp_path):
  """launch/train_demo_gpu.sh with a stand-in vasa-jax that logs each command: the steps come
  in order, resume from what exists, and the export stores the bundled sampling defaults."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  log = tmp_path / "calls.txt"
  stub = tmp_path / "vasa-jax"
  stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
  stub.chmod(0o755)
  work = tmp_path / "work"
  script = pathlib.Path(__file__).parents[1] / "launch" / "train_demo_gpu.sh"
  env = dict(os.environ, VASA_JAX=str(stub))
  subprocess.run(["bash", str(script), "data", str(work), str(tmp_path / "out")], check=True,
                 env=env, cwd=script.parents[1])
  calls = [c.split() for c in log.read_text().splitlines()]
  assert [c[0] for c in calls] == ["preprocess", "slim-shards", "train", "train", "train",
                                   "extract-motion", "train", "train", "export", "export",
                                   "calibrate-mouth"]
  arg = lambda c, flag: c[c.index(flag) + 1]  # noqa: E731
  legs = [arg(c, "--max-steps") for c in calls[2:5]]
  assert legs == ["2900", "7075", "11250"]
  # The recipe is named config variants (configs/demo_recipe.py), not shell overrides.
  recipes = [arg(c, "--config") for c in calls[2:5]]
  assert recipes == [f"configs/demo_recipe.py:latent_gpu_{k}" for k in (1, 2, 3)]
  assert all(int(load_config(r).model.app_size) == 32 for r in recipes)
  export, export_dev, calibrate = calls[-3:]
  stored = json.loads((DEMO / pipeline_lib.PIPELINE_FILE).read_text())
  for flag, key in (("--steps", "steps"), ("--cfg-audio", "cfg_audio")):
    assert float(export[export.index(flag) + 1]) == pytest.approx(stored[key]), flag
    assert export_dev[export_dev.index(flag) + 1] == export[export.index(flag) + 1]
  # The mouth scale is measured with a stage 2 that also held the dev people out, on their
  # clips, and written into the bundle.
  held = load_config(arg(calls[7], "--config")).data.val_persons
  assert sorted(held) == sorted(common.DEMO_VAL_PERSONS + common.DEMO_DEV_PERSONS)
  assert arg(calibrate, "--checkpoint") == arg(export_dev, "--out")
  assert arg(export_dev, "--motion") == arg(calls[7], "--workdir")
  assert arg(calibrate, "--write-to") == arg(export, "--out") == str(tmp_path / "out")
  persons = calibrate[calibrate.index("--persons") + 1:calibrate.index("--out")]
  assert persons == list(common.DEMO_DEV_PERSONS)
  # Stage 1 and stage 2 halves run apart (GPU machine / CPU machine); finished steps are skipped.
  for d in ("data128", "slim", "motion_data"):
    (work / d).mkdir(parents=True, exist_ok=True)
    (work / d / "index.json").write_text("{}")
  log.unlink()
  subprocess.run(["bash", str(script), "data", str(work)], check=True, cwd=script.parents[1],
                 env=dict(env, STAGE="1"))
  assert [c.split()[0] for c in log.read_text().splitlines()] == ["train"] * 3
  log.unlink()
  subprocess.run(["bash", str(script), "data", str(work)], check=True, cwd=script.parents[1],
                 env=dict(env, STAGE="2"))
  assert [c.split()[0] for c in log.read_text().splitlines()] == [
      "train", "train", "export", "export", "calibrate-mouth"]
