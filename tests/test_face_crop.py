"""Face detection, landmarks and head crops: skimage's astronaut, synthetic clips, real data."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

from vasa_jax.data import face_crop
from vasa_jax.errors import NoFaceError, VasaInputError

R = 128  # Crop size for the tests: big enough for a good mesh, small enough to be quick.


@pytest.fixture(scope="module")
def analyzer():
  return face_crop.FaceAnalyzer()


@pytest.fixture(scope="module")
def astronaut():
  return skimage.data.astronaut()  # (512, 512, 3), one frontal face around x 225, y 125


def _head(astronaut):
  return astronaut[40:210, 140:310]  # (170, 170, 3): the head with hair


def _resize(image, size):
  return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def _read_clip(path, num):
  import imageio_ffmpeg
  gen = imageio_ffmpeg.read_frames(str(path))
  meta = next(gen)
  w, h = meta["size"]
  frames = []
  for raw in gen:
    frames.append(np.frombuffer(raw, np.uint8).reshape(h, w, 3))
    if len(frames) == num:
      break
  gen.close()
  return np.stack(frames)


def _check_face_layout(landmarks, size):
  """Landmarks inside the crop, eyes above the mouth, mouth near the horizontal centre."""
  assert landmarks.shape == (478, 3) and landmarks.dtype == np.float32
  assert np.all(landmarks[:, :2] > 0) and np.all(landmarks[:, :2] < size)
  eyes_y = landmarks[[33, 133, 362, 263, 468, 473], 1].mean()
  mouth = landmarks[[13, 14, 61, 291]].mean(0)
  assert eyes_y < mouth[1] - 0.1 * size
  assert abs(mouth[0] - size / 2) < 0.15 * size
  # Irises sit between their eye corners.
  assert landmarks[33, 0] < landmarks[468, 0] < landmarks[133, 0]
  assert landmarks[362, 0] < landmarks[473, 0] < landmarks[263, 0]


def test_detect_astronaut(analyzer, astronaut):
  dets = analyzer.detect(astronaut)
  assert len(dets) == 1
  d = dets[0]
  assert d.score > 0.7
  x0, y0, x1, y1 = d.box
  assert 150 < x0 < x1 < 310 and 50 < y0 < y1 < 200
  assert 60 < d.size < 160
  # Eyes and nose keypoints lie inside the box.
  kp = d.keypoints[:3]
  assert np.all((kp >= d.box[:2]) & (kp <= d.box[2:]))


def test_detect_close_up_and_small_face_in_hd_frame(analyzer, astronaut):
  # Close-up: the face fills a 224 px frame, like VoxCeleb crops.
  close = _resize(astronaut[60:190, 160:290], 224)
  dets = analyzer.detect(close)
  assert len(dets) == 1 and dets[0].size > 150
  # Small face in a 1920 x 1080 frame: a 120 px head (a face box of about 65 px).
  hd = np.full((1080, 1920, 3), 120, np.uint8)
  hd[600:720, 1300:1420] = _resize(_head(astronaut), 120)
  dets = analyzer.detect(hd)
  assert len(dets) == 1
  centre = (dets[0].box[:2] + dets[0].box[2:]) / 2
  assert np.all(np.abs(centre - [1360, 660]) < 40)


def test_landmarks_from_box_or_detection(analyzer, astronaut):
  det = analyzer.detect(astronaut)[0]
  from_det = analyzer.landmarks(astronaut, det)
  from_box = analyzer.landmarks(astronaut, det.box)
  assert from_det.shape == (478, 3)
  # Same face either way, up to a pixel or two of model noise.
  assert np.median(np.abs(from_det[:, :2] - from_box[:, :2])) < 2.0
  assert np.all((from_det[:468, 0] > det.box[0] - 30) & (from_det[:468, 0] < det.box[2] + 30))


def test_crop_image_astronaut(analyzer, astronaut):
  fc = face_crop.crop_image(astronaut, R, analyzer=analyzer)
  assert fc.image.shape == (R, R, 3) and fc.image.dtype == np.uint8
  x0, y0, x1, y1 = fc.box
  assert abs((x1 - x0) - (y1 - y0)) < 1e-3  # square
  _check_face_layout(fc.landmarks, R)
  # The head is in the crop with some margin: the face mesh spans 35-75 % of the crop width.
  span = np.ptp(fc.landmarks[:468, 0]) / R
  assert 0.35 < span < 0.75


def test_crop_image_pads_outside_the_image(analyzer, astronaut):
  # The face at the top-left corner: the crop square leaves the image and is padded.
  shifted = np.ascontiguousarray(astronaut[60:, 110:])
  fc = face_crop.crop_image(shifted, R, analyzer=analyzer)
  assert fc.box[1] < 0
  _check_face_layout(fc.landmarks, R)


@pytest.mark.parametrize("name", ["noise", "coffee"])
def test_crop_image_without_face_raises(analyzer, name):
  if name == "noise":
    image = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
  else:
    image = skimage.data.coffee()
  with pytest.raises(NoFaceError, match=f"{name}.png.*frontal, well-lit portrait"):
    face_crop.crop_image(image, R, analyzer=analyzer, source=f"/photos/{name}.png")


def test_crop_image_rejects_bad_arrays(analyzer, astronaut):
  with pytest.raises(VasaInputError, match="uint8 RGB"):
    face_crop.crop_image(astronaut.astype(np.float32), R, analyzer=analyzer, source="x.png")


def test_crop_image_two_faces_takes_largest(analyzer, astronaut):
  canvas = np.full((400, 600, 3), 90, np.uint8)
  canvas[50:220, 30:200] = _head(astronaut)  # large face, left
  canvas[100:200, 400:500] = _resize(_head(astronaut), 100)  # small face, right
  with pytest.warns(UserWarning, match="2 faces.*largest"):
    fc = face_crop.crop_image(canvas, R, analyzer=analyzer, source="two.png")
  centre_x = (fc.box[0] + fc.box[2]) / 2
  assert centre_x < 200
  _check_face_layout(fc.landmarks, R)


def _shaking_clip(astronaut, num=16, amp=4, seed=0):
  """The astronaut translated by a random walk-free jitter of +-amp px per frame."""
  rng = np.random.default_rng(seed)
  shifts = rng.integers(-amp, amp + 1, (num, 2))
  frames = np.stack([np.roll(astronaut, tuple(s[::-1]), axis=(0, 1)) for s in shifts])
  return frames, shifts.astype(np.float64)


def test_crop_clip_removes_jitter_and_tracks_landmarks(analyzer, astronaut):
  frames, shifts = _shaking_clip(astronaut)
  cc = face_crop.crop_clip(frames, R, analyzer=analyzer, source="shaky.mp4")
  num = len(frames)
  assert cc.frames.shape == (num, R, R, 3) and cc.frames.dtype == np.uint8
  assert cc.boxes.shape == (num, 4) and cc.landmarks.shape == (num, 478, 3)
  assert cc.detected.shape == (num,) and cc.detected.all()
  sides = cc.boxes[:, 2] - cc.boxes[:, 0]
  assert np.ptp(sides) < 1e-3  # one crop size for the whole clip
  centres = (cc.boxes[:, :2] + cc.boxes[:, 2:]) / 2
  box_jitter = np.abs(np.diff(centres, axis=0)).mean()
  input_jitter = np.abs(np.diff(shifts, axis=0)).mean()
  assert box_jitter < 0.1 * input_jitter, (box_jitter, input_jitter)
  # Landmarks mapped back to source pixels follow the face's real motion.
  k = sides[:, None] / R
  nose_src = cc.landmarks[:, 1, :2] * k + cc.boxes[:, :2]
  residual = nose_src - shifts
  assert np.abs(residual - residual.mean(0)).max() < 2.5
  for lm in cc.landmarks[[0, -1]]:
    _check_face_layout(lm, R)


def test_crop_clip_detect_every_nth_frame(analyzer, astronaut):
  frames, _ = _shaking_clip(astronaut, num=9, seed=1)
  cc = face_crop.crop_clip(frames, R, analyzer=analyzer, detect_every=4, smoothing=0)
  assert cc.detected.all()
  _check_face_layout(cc.landmarks[5], R)


def test_crop_clip_fills_frames_without_a_face(analyzer, astronaut):
  frames, _ = _shaking_clip(astronaut, num=8, seed=2)
  frames[[3, 4]] = np.random.default_rng(0).integers(0, 256, frames[[3, 4]].shape, np.uint8)
  cc = face_crop.crop_clip(frames, R, analyzer=analyzer, smoothing=2.0)
  np.testing.assert_array_equal(cc.detected, [1, 1, 1, 0, 0, 1, 1, 1])
  # The crop box goes on smoothly through the gap (interpolated, not jumping to a corner).
  centres = (cc.boxes[:, :2] + cc.boxes[:, 2:]) / 2
  assert np.abs(np.diff(centres, axis=0)).max() < 4
  for lm in cc.landmarks[[2, 5]]:
    _check_face_layout(lm, R)


def test_crop_clip_without_faces_raises(analyzer, astronaut):
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, (4, 120, 160, 3), dtype=np.uint8)
  with pytest.raises(NoFaceError, match="clip.mp4: no face"):
    face_crop.crop_clip(noise, R, analyzer=analyzer, source="clip.mp4")
  # A face in only 1 of 4 frames: the track would be mostly guessed.
  frames = np.stack([_resize(astronaut, 160)[:120]] + [n for n in noise[:3]])
  with pytest.raises(NoFaceError, match="only 1 of 4.*less than half"):
    face_crop.crop_clip(frames, R, analyzer=analyzer, source="clip.mp4")


def test_crop_real_portrait(analyzer, shared_data):
  path = shared_data / "portraits" / "LivePortrait__assets_examples_source_s1.jpg"
  image = np.asarray(Image.open(path).convert("RGB"))
  fc = face_crop.crop_image(image, R, analyzer=analyzer, source=str(path))
  _check_face_layout(fc.landmarks, R)


@pytest.mark.parametrize("clip", ["EAMM__test_crop_M030_sad_3_001.mp4",  # 1920 x 1080
                                  "Talking-Face_PC-AVS__misc_Audio_Source_00015.mp4"])  # 224 px
def test_crop_clip_real(analyzer, shared_data, clip):
  frames = _read_clip(shared_data / "clips" / clip, 24)
  cc = face_crop.crop_clip(frames, R, analyzer=analyzer, source=clip)
  assert cc.detected.mean() > 0.9
  assert np.ptp(cc.boxes[:, 2] - cc.boxes[:, 0]) < 1e-3
  centres = (cc.boxes[:, :2] + cc.boxes[:, 2:]) / 2
  side = cc.boxes[0, 2] - cc.boxes[0, 0]
  assert np.abs(np.diff(centres, axis=0)).max() < 0.01 * side  # no crop jitter
  for lm in cc.landmarks[[0, len(frames) // 2, -1]]:
    _check_face_layout(lm, R)
  # Landmarks are temporally coherent: the mean eye-corner motion is below 1.5 % of the crop.
  corners = cc.landmarks[:, [33, 133, 362, 263], :2]
  assert np.abs(np.diff(corners, axis=0)).mean() < 0.015 * R
