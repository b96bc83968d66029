"""`vasa-jax calibrate-mouth`: the scale read off the spread curve, the clip choice, the report
and the pipeline.json it writes, and its errors."""
import json
import shutil

import numpy as np
import pytest

from vasa_jax.errors import CheckpointError, VasaInputError
from vasa_jax.eval import mouth_calibration as mc
from vasa_jax.inference import pipeline as pipeline_lib


def test_choose_scale_takes_the_most_speech_following_motion():
  scales = [1.0, 1.5, 2.0, 3.0]
  # Sync x spread: 0.006, 0.0075, 0.00728 (spread past the real 0.026 not rewarded), 0.005.
  chosen, scores = mc.choose_scale(scales, [0.02, 0.025, 0.028, 0.025], [0.3, 0.3, 0.28, 0.2],
                                   0.026)
  assert chosen == 1.5
  assert scores == pytest.approx([0.006, 0.0075, 0.28 * 0.026, 0.005])
  # Where the sync holds, the larger motion wins; a still real mouth caps every spread.
  assert mc.choose_scale(scales, [0.01, 0.015, 0.02, 0.024], [0.3] * 4, 0.03)[0] == 3.0
  assert mc.choose_scale(scales, [0.01, 0.015, 0.02, 0.024], [0.3, 0.3, 0.2, 0.1], 0.0)[0] == 1.0
  with pytest.raises(ValueError, match="increasing"):
    mc.choose_scale([2, 1], [0.01, 0.02], [0.3, 0.3], 0.02)
  with pytest.raises(ValueError, match="finite"):
    mc.choose_scale([1, 2], [0.01, float("nan")], [0.3, 0.3], 0.02)
  with pytest.raises(ValueError, match="equal-length"):
    mc.choose_scale([1, 2], [0.01], [0.3, 0.3], 0.02)


def test_select_clips_takes_one_clip_per_person_outside_the_excluded(tmp_path):
  rows = ["path,kind,person,dur_s,audio",
          "clips/a1.mp4,A,ann,8,16000Hz", "clips/a2.mp4,A,ann,9,16000Hz",  # ann's second: skipped
          "clips/b1.mp4,A,bob,3,16000Hz",  # too short
          "clips/b2.mp4,A,bob,7,44100Hz", "clips/c1.mp4,V,cid,9,no",  # no audio (kind V)
          "clips/e0.mp4,A,eve,10,paired wav 16k: e0.wav",  # its speech is another file
          "clips/d1.mp4,A,dora,12,16000Hz", "clips/e1.mp4,A,eve,10,48000Hz"]
  (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
  got = mc.select_clips(tmp_path, exclude_persons=["dora"], max_clips=3)
  assert [p.split("/")[-1] for p in got] == ["a1.mp4", "b2.mp4", "e1.mp4"]
  assert mc.select_clips(tmp_path, max_clips=1) == [str(tmp_path / "clips/a1.mp4")]
  # Only the people a stage 2 run held out, say.
  got = mc.select_clips(tmp_path, persons=["eve", "bob", "cid"])
  assert [p.split("/")[-1] for p in got] == ["b2.mp4", "e1.mp4"]
  with pytest.raises(VasaInputError, match="No talking clip"):
    mc.select_clips(tmp_path, exclude_persons=["ann", "bob", "dora", "eve"])
  with pytest.raises(VasaInputError, match=r"among the persons \['cid'\]"):
    mc.select_clips(tmp_path, persons=["cid"])
  with pytest.raises(VasaInputError, match="manifest.csv not found"):
    mc.select_clips(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def still_clip(tmp_path_factory):
  """1 s of the astronaut, not moving, with the bundled speech: a real mouth that never moves."""
  from skimage import data
  from vasa_jax.data import media
  from vasa_jax.inference.generate_cli import BUNDLED_SPEECH
  wav = media.read_audio(str(BUNDLED_SPEECH))[:16000]
  frames = np.repeat(data.astronaut()[None, ::2, ::2], 25, 0)
  return media.write_video(tmp_path_factory.mktemp("clip") / "still.mp4", frames, audio=wav)


@pytest.fixture(scope="module")
def demo():
  """The bundled demo pipeline, loaded once (it renders faces)."""
  if not (pipeline_lib.DEFAULT_CHECKPOINT / pipeline_lib.PIPELINE_FILE).is_file():
    pytest.skip("no bundled demo checkpoint in this checkout")
  return pipeline_lib.load_pipeline()


def test_calibrate_writes_the_report_and_the_pipeline_default(demo, still_clip, tmp_path):
  ckpt = shutil.copytree(pipeline_lib.DEFAULT_CHECKPOINT, tmp_path / "demo")
  before = json.loads((ckpt / "pipeline.json").read_text())
  result = mc.calibrate(ckpt, [still_clip], tmp_path / "report", scales=(0.5, 1.0, 2.0),
                        max_seconds=1.0, write=True, pipe=demo)
  row = result["clips"][0]
  assert row["frames"] == 25 and row["real"]["face_found"] == 1.0
  # The still mouth's spread is only the face mesh's jitter on a still frame.
  assert row["real"]["spread"] == result["real_spread"] < 0.015
  for scale in ("0.5", "1", "2"):  # the demo renders a face whose mouth moves with the speech
    assert row["rendered"][scale]["face_found"] > 0.9 and row["rendered"][scale]["spread"] > 0
  assert result["rendered_spread"] == [row["rendered"][s]["spread"] for s in ("0.5", "1", "2")]
  want, scores = mc.choose_scale(result["scales"], result["rendered_spread"],
                                 result["rendered_sync"], result["real_spread"])
  assert (result["mouth_scale"], result["score"]) == (want, scores)
  assert result["written"]
  after = json.loads((ckpt / "pipeline.json").read_text())
  assert after == dict(before, mouth_scale=result["mouth_scale"])
  assert pipeline_lib.load_pipeline(ckpt).mouth_scale == result["mouth_scale"]
  saved = json.loads((tmp_path / "report" / mc.JSON_NAME).read_text())
  assert saved["mouth_scale"] == result["mouth_scale"] and len(saved["rendered_spread"]) == 3
  report = (tmp_path / "report" / mc.MD_NAME).read_text()
  assert f"Mouth scale {result['mouth_scale']:g}**" in report
  # Calibrated on one pipeline (a stage 2 that held the clips' people out), written to another.
  other = shutil.copytree(pipeline_lib.DEFAULT_CHECKPOINT, tmp_path / "other")
  again = mc.calibrate(ckpt, [still_clip], tmp_path / "report2", scales=(3.0,),
                       max_seconds=1.0, write_to=other, pipe=demo)
  assert again["written"] == str(other / "pipeline.json") and again["checkpoint"] == str(ckpt)
  assert json.loads((other / "pipeline.json").read_text())["mouth_scale"] == 3.0
  assert json.loads((ckpt / "pipeline.json").read_text()) == after
  with pytest.raises(CheckpointError, match="--write-to"):
    mc.calibrate(ckpt, [still_clip], tmp_path / "r3", write_to=tmp_path / "none", pipe=demo)


def test_calibrate_on_a_pipeline_that_renders_no_face_fails_clearly(tiny_pipeline_dir,
                                                                     still_clip, tmp_path):
  ckpt = tiny_pipeline_dir
  pipe = pipeline_lib.load_pipeline(ckpt)
  before = (ckpt / "pipeline.json").read_text()
  with pytest.raises(VasaInputError, match="renders faces"):
    mc.calibrate(ckpt, [still_clip], tmp_path / "report", scales=(1.0,), max_seconds=1.0,
                 write=True, pipe=pipe)
  assert (ckpt / "pipeline.json").read_text() == before
  assert not (tmp_path / "report").exists()
  with pytest.raises(VasaInputError, match="increasing"):
    mc.calibrate(ckpt, [still_clip], tmp_path / "report", scales=(2.0, 1.0), pipe=pipe)
  with pytest.raises(VasaInputError, match="not found"):
    mc.calibrate(ckpt, [str(tmp_path / "missing.mp4")], tmp_path / "report", pipe=pipe)


def test_calibrate_passes_over_a_silent_clip(demo, still_clip, tmp_path):
  """One bad clip in a long batch is reported, not fatal; with no usable clip it fails."""
  from vasa_jax.data import media
  silent = media.write_video(tmp_path / "silent.mp4", np.zeros((25, 64, 64, 3), np.uint8))
  result = mc.calibrate(None, [silent, still_clip], tmp_path / "r", scales=(1.0,),
                        max_seconds=1.0, pipe=demo)
  assert [r["clip"] for r in result["clips"]] == [still_clip]
  assert result["skipped"][0]["clip"] == silent and "no audio" in result["skipped"][0]["why"]
  with pytest.raises(VasaInputError, match="all 1 skipped.*no audio track"):
    mc.calibrate(None, [silent], tmp_path / "r2", scales=(1.0,), max_seconds=1.0, pipe=demo)


def test_calibrate_on_a_real_clip_larger_scale_larger_mouth(demo, shared_data, tmp_path):
  from configs import common
  clip = mc.select_clips(shared_data, exclude_persons=common.DEMO_VAL_PERSONS, max_clips=1)
  result = mc.calibrate(None, clip, tmp_path, scales=(0.0, 2.0), max_seconds=4.0, pipe=demo)
  assert result["real_spread"] > 0.005 and not result["written"]
  frozen, doubled = result["rendered_spread"]
  assert doubled > 1.5 * frozen


def test_cli_names_a_missing_manifest_and_bad_scales(tmp_path, capsys):
  from vasa_jax import cli
  assert cli.main(["calibrate-mouth", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
  assert "manifest.csv not found" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["calibrate-mouth", "--clips", "a.mp4", "--scales", "1,x", "--out", "r"])
  assert "comma-separated numbers" in capsys.readouterr().err
  assert not (tmp_path / "r").exists()
