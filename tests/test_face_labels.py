"""Head pose, gaze, face scale, mouth opening and main gaze from landmarks."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

from vasa_jax.data import face_crop
from vasa_jax.data import face_labels as fl

SIZE = 256
DEG = np.pi / 180
# Left/right mirror pairs among the points the labels use.
_PAIRS = [(33, 263), (133, 362), (98, 327), (468, 473)]


def _synthetic(angles, scale=20.0, shape_noise=0.0, pixel_noise=0.0, eye=(0.0, 0.0),
               lip_gap=0.0, seed=0):
  """Landmarks (T, 478, 3) of the canonical face rotated by `angles` and projected orthographically.

  Args:
    angles: (T, 3) yaw, pitch, roll.
    scale: pixels per model centimetre.
    shape_noise: std (cm) of a per-point perturbation of the 3D face (another person's shape).
    pixel_noise: std of landmark noise (pixels).
    eye: eye-in-head rotation (yaw, pitch) in radians, same signs as the head's.
    lip_gap: inner lip gap in cm.
  """
  rng = np.random.default_rng(seed)
  angles = np.asarray(angles, np.float64)
  model = dict(zip(fl.POSE_INDICES.tolist(), fl.POSE_MODEL))
  ex, ey = eye
  look = np.array([np.sin(ex) * np.cos(ey), -np.sin(ey), np.cos(ex) * np.cos(ey)])
  for (a, b, iris) in ((33, 133, 468), (362, 263, 473)):
    # The generic eyeball behind the corner midpoint, iris on its surface.
    model[iris] = (model[a] + model[b]) / 2 + fl.EYEBALL_CENTRE + fl.EYEBALL_RADIUS * look
  model[13] = np.array([0.0, -4.0, 5.2])
  model[14] = model[13] - [0.0, lip_gap, 0.0]
  idx = np.array(list(model))
  pts = np.stack(list(model.values()))
  pts = pts + rng.normal(0, shape_noise, pts.shape)
  rot = fl.euler_to_matrix(angles)  # (T, 3, 3)
  cam = np.einsum("tij,pj->tpi", rot, pts) * scale  # (T, P, 3), y up
  lm = np.zeros((len(angles), 478, 3))
  lm[:, idx, 0] = SIZE / 2 + cam[..., 0]
  lm[:, idx, 1] = SIZE / 2 - cam[..., 1]
  lm[:, idx, 2] = -cam[..., 2]
  lm[:, idx, :2] += rng.normal(0, pixel_noise, (len(angles), len(idx), 2))
  return lm.astype(np.float32)


def _mirror(lm):
  out = lm.copy()
  out[..., 0] = SIZE - out[..., 0]
  for a, b in _PAIRS:
    out[:, [a, b]] = out[:, [b, a]]
  return out


def test_euler_matrix_round_trip_and_convention():
  angles = np.array([[0.3, 0.1, -0.2], [-0.5, -0.2, 0.4], [0.0, 0.0, 0.0]])
  rot = fl.euler_to_matrix(angles)
  np.testing.assert_allclose(rot @ np.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape),
                             atol=1e-12)
  np.testing.assert_allclose(fl.matrix_to_euler(rot), angles, atol=1e-12)
  nose = rot @ np.array([0.0, 0.0, 1.0])  # head frame: x right, y up, z to the camera
  assert nose[0, 0] > 0  # yaw > 0 -> nose towards image right
  assert nose[0, 1] < 0  # pitch > 0 -> nose down


def test_head_pose_recovers_rotations():
  rng = np.random.default_rng(0)
  angles = np.concatenate([rng.uniform(-40, 40, (12, 1)), rng.uniform(-20, 20, (12, 1)),
                           rng.uniform(-25, 25, (12, 1))], 1) * DEG
  exact = fl.head_pose(_synthetic(angles), SIZE)
  np.testing.assert_allclose(exact, angles, atol=1e-4)
  # Another person's face shape (2 mm per point) and 0.5 px landmark noise: within a few degrees.
  noisy = fl.head_pose(_synthetic(angles, shape_noise=0.2, pixel_noise=0.5), SIZE)
  assert noisy.dtype == np.float32 and noisy.shape == (12, 3)
  err = np.abs(noisy - angles) / DEG
  assert err[:, 0].max() < 4.0 and err.max() < 6.0, err


def test_mirrored_landmarks_flip_yaw_and_roll():
  angles = np.array([[25.0, 10.0, 8.0], [-15.0, -5.0, -12.0]]) * DEG
  lm = _synthetic(angles, shape_noise=0.2, pixel_noise=0.3)
  pose = fl.head_pose(lm, SIZE)
  mirrored = fl.head_pose(_mirror(lm), SIZE)
  np.testing.assert_allclose(mirrored[:, [0, 2]], -pose[:, [0, 2]], atol=0.1 * DEG)
  np.testing.assert_allclose(mirrored[:, 1], pose[:, 1], atol=0.1 * DEG)


def test_gaze_from_iris_offsets():
  frontal = np.zeros((1, 3))
  centred = fl.gaze(_synthetic(frontal), image_size=SIZE)
  np.testing.assert_allclose(centred, 0.0, atol=1e-4)
  right = fl.gaze(_synthetic(frontal, eye=(25 * DEG, 0.0)), image_size=SIZE)[0]
  down = fl.gaze(_synthetic(frontal, eye=(0.0, 15 * DEG)), image_size=SIZE)[0]
  np.testing.assert_allclose(right, [25 * DEG, 0.0], atol=0.2 * DEG)
  np.testing.assert_allclose(down, [0.0, 15 * DEG], atol=0.2 * DEG)
  # Eyes straight ahead in a turned head look where the head points, although the irises move
  # off the corner midpoints in the image.
  turned = np.array([[20.0, 10.0, 0.0]]) * DEG
  lm = _synthetic(turned)
  np.testing.assert_allclose(fl.gaze(lm, fl.head_pose(lm, SIZE))[0], turned[0, :2], atol=0.5 * DEG)
  # Head turned right, eyes turned back left: looking into the camera.
  lm = _synthetic(np.array([[20.0, 0.0, 0.0]]) * DEG, eye=(-20 * DEG, 0.0), shape_noise=0.1)
  assert np.all(np.abs(fl.gaze(lm, image_size=SIZE)[0]) < 3 * DEG)


def test_face_scale_and_mouth_open():
  angles = np.array([[0.0, 0.0, 0.0], [35.0, 0.0, 0.0]]) * DEG
  scale = fl.face_scale(_synthetic(angles, scale=20.0), SIZE)
  iod_cm = np.linalg.norm(fl.POSE_MODEL[3] - fl.POSE_MODEL[0])
  np.testing.assert_allclose(scale, 20.0 * iod_cm / SIZE, rtol=1e-4)  # unchanged by the turn
  closer = fl.face_scale(_synthetic(angles[:1], scale=30.0), SIZE)
  assert closer[0] > scale[0] * 1.4
  closed = fl.mouth_open(_synthetic(angles, lip_gap=0.0), SIZE)
  opened = fl.mouth_open(_synthetic(angles, lip_gap=2.0), SIZE)
  np.testing.assert_allclose(closed, 0.0, atol=1e-5)
  np.testing.assert_allclose(opened, 2.0 / iod_cm, rtol=1e-3)


def test_mouth_box_covers_the_lips_and_grows_with_the_opening():
  lm = np.zeros((2, 478, 3))
  for t, gap in enumerate((2.0, 12.0)):  # closed-ish, open; crop pixels of a 100 px crop
    lm[t, 61, :2], lm[t, 291, :2] = (40, 70), (60, 70)  # corners
    lm[t, 0, :2], lm[t, 17, :2] = (50, 66), (50, 74 + gap)  # upper / lower lip
    lm[t, 13, :2], lm[t, 14, :2] = (50, 69), (50, 69 + gap)  # inner lips
  box = fl.mouth_box(lm, 100.0, margin=0.25)
  np.testing.assert_allclose(box[0], [0.5, 0.71, 0.1 + 0.05, 0.05 + 0.05], atol=1e-6)
  lips = lm[:, [61, 291, 0, 17, 13, 14], :2] / 100.0
  assert np.all(np.abs(lips - box[:, None, :2]) <= box[:, None, 2:])  # every lip point inside
  assert box[1, 3] > box[0, 3] + 0.04  # an opening jaw stays inside


def test_main_gaze_picks_dominant_cluster():
  rng = np.random.default_rng(0)
  main = rng.normal([0.1, 0.0], 0.02, (70, 2))
  other = rng.normal([-0.4, 0.25], 0.02, (30, 2))
  g = rng.permutation(np.concatenate([main, other]))
  out = fl.main_gaze(g)
  assert out.shape == (2,) and out.dtype == np.float32
  np.testing.assert_allclose(out, [0.1, 0.0], atol=0.03)
  g[::7] = np.nan  # lost frames are ignored
  np.testing.assert_allclose(fl.main_gaze(g), [0.1, 0.0], atol=0.03)


@pytest.fixture(scope="module")
def analyzer():
  return face_crop.FaceAnalyzer()


def test_labels_on_astronaut(analyzer):
  image = skimage.data.astronaut()
  lm = face_crop.crop_image(image, SIZE, analyzer=analyzer).landmarks[None]
  labels = fl.label_clip(lm, SIZE)
  assert {k: v.shape for k, v in labels.items()} == {
      "head_pose": (1, 3), "gaze": (1, 2), "face_scale": (1,), "mouth_open": (1,),
      "main_gaze": (2,)}
  assert all(v.dtype == np.float32 for v in labels.values())
  yaw, pitch, roll = labels["head_pose"][0] / DEG
  assert abs(yaw) < 15 and abs(roll) < 15 and abs(pitch) < 20
  assert np.all(np.abs(labels["gaze"][0]) < 15 * DEG)  # she looks at the camera
  assert 0.15 < labels["face_scale"][0] < 0.5
  assert 0.0 <= labels["mouth_open"][0] < 0.4  # smiling, teeth showing, lips nearly closed
  # The mirrored photo: yaw and roll change sign up to the mesh's few-degree noise.
  flipped = face_crop.crop_image(np.ascontiguousarray(image[:, ::-1]), SIZE, analyzer=analyzer)
  yaw_f, pitch_f, roll_f = fl.head_pose(flipped.landmarks[None], SIZE)[0] / DEG
  assert abs(yaw + yaw_f) < 10 and abs(roll + roll_f) < 3 and abs(pitch - pitch_f) < 3


def test_mirrored_real_portrait_flips_yaw(analyzer, shared_data):
  # A portrait with the head clearly turned (about 15 degrees).
  image = np.asarray(Image.open(shared_data / "portraits" / "EAMM__test_image_14.png")
                     .convert("RGB"))
  yaws = []
  for im in (image, np.ascontiguousarray(image[:, ::-1])):
    lm = face_crop.crop_image(im, SIZE, analyzer=analyzer).landmarks[None]
    yaws.append(fl.head_pose(lm, SIZE)[0, 0] / DEG)
  assert abs(yaws[0]) > 8 and abs(yaws[1]) > 8
  assert np.sign(yaws[0]) == -np.sign(yaws[1])
