"""Face metrics (CSIM, M-LMD, emotion accuracy): the formulas on synthetic inputs, the missing-
network error, and one real clip end to end when the networks are fetched."""
import json

import numpy as np
import pytest

from vasa_jax import cli
from vasa_jax.errors import VasaInputError
from vasa_jax.eval import face_metrics
from vasa_jax.facenets import store


def test_mouth_landmark_distance_ignores_head_shift():
  rng = np.random.default_rng(0)
  mesh = rng.uniform(0.3, 0.7, (5, 468, 3)).astype(np.float32)
  assert face_metrics.mouth_landmark_distance(mesh + 0.05, mesh) == pytest.approx(0, abs=1e-6)
  wider = mesh.copy()
  lips = np.asarray(face_metrics.LIPS)
  centre = mesh[:, lips, :2].mean(1, keepdims=True)
  wider[:, lips, :2] = centre + 1.1 * (mesh[:, lips, :2] - centre)
  d = face_metrics.mouth_landmark_distance(wider, mesh[:3])  # cut to the shorter
  expected = 0.1 * np.linalg.norm(mesh[:3, lips, :2] - centre[:3], axis=-1).mean()
  assert d == pytest.approx(expected, rel=1e-4)


def test_emotion_accuracy():
  probs = np.zeros((4, 7), np.float32)
  probs[:3, 3] = 0.8  # happy (FER index 3) on 3 of 4 frames
  probs[3, 6] = 0.9
  res = face_metrics.emotion_accuracy(probs, "happy")
  assert res["emotion_acc"] == pytest.approx(0.75) and res["emotion_prob"] == pytest.approx(0.6)
  with pytest.raises(VasaInputError, match="contempt"):
    face_metrics.emotion_accuracy(probs, "contempt")


def test_csim_removes_the_common_component():
  from vasa_jax.facenets import nets
  mean = np.asarray(nets.IDENTITY_MEAN, np.float32)
  assert mean.shape == (192,)
  rng = np.random.default_rng(1)
  a, b = mean + 0.05 * rng.normal(size=(2, 192)).astype(np.float32)
  sims = face_metrics.csim(np.stack([a, b]), a)
  assert sims[0] == pytest.approx(1.0, abs=1e-5) and abs(sims[1]) < 0.5


def test_eval_face_metrics_fail_at_once_without_nets(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv(store.ENV_VAR, str(tmp_path / "empty"))
  code = cli.main(["eval", "--videos", "missing.mp4", "--out", str(tmp_path / "r"),
                   "--face-metrics"])
  assert code == 2
  assert "vasa-jax fetch-face-nets" in capsys.readouterr().err
  with pytest.raises(VasaInputError, match="one per generated video"):
    face_metrics.run(["a.mp4", "b.mp4"], [], str(tmp_path), portraits=["p.png"])


def test_face_metrics_on_a_real_clip(shared_data, tmp_path):
  if not store.available():
    pytest.skip("face networks not fetched: run `vasa-jax fetch-face-nets`")
  clip = str(shared_data / "clips/EAMM__test_crop_M030_sad_3_001.mp4")
  res = face_metrics.run([clip], [clip], str(tmp_path), ground_truth=[clip],
                         emotion_labels=["sad"], max_seconds=1.0)
  gen, real = res["rows"]
  assert gen["frames"] == 25 and len(gen["csim_per_frame"]) == 25
  assert gen["csim_per_frame"][0] == pytest.approx(1.0, abs=1e-4)  # its own first frame
  assert gen["csim"] > 0.5  # one person throughout
  assert gen["m_lmd"] == pytest.approx(0.0, abs=1e-6)  # the clip re-enacts itself exactly
  assert real["m_lmd"] > 0 and real["emotion"] == "sad"
  assert gen["emotion_acc"] == real["emotion_acc"]
  saved = json.load(open(tmp_path / face_metrics.JSON_NAME))
  assert saved["means"]["real"]["csim"] == pytest.approx(real["csim"])
  assert "| **mean** | generated |" in (tmp_path / face_metrics.MD_NAME).read_text()
