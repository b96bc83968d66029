"""Viewer figures (`vasa_jax.eval.viewer`): sharpness, face size, identity, first vs last 10 s."""
import numpy as np
import pytest
from scipy import ndimage

from vasa_jax.errors import VasaInputError
from vasa_jax.eval import viewer


class _FixedBox:
  """A stand-in FaceAnalyzer: one face at a fixed box, none in all-black frames."""
  def __init__(self, box):
    self.box = np.asarray(box, np.float32)

  def detect(self, image):
    from vasa_jax.data.face_crop import Detection
    if not image.any():
      return []
    return [Detection(self.box, 0.9, np.zeros((6, 2), np.float32))]


def _texture(size=128, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.uniform(0, 255, (size, size, 3))).astype(np.uint8)


def _mean_colour_embedding(frames):  # a fake identity network: the crop's mean colour
  e = np.asarray(frames, np.float32).mean((1, 2))
  return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.fixture
def fake_identity(monkeypatch):
  for name in viewer.EMBEDDERS:  # whichever `default_backend` picks here
    monkeypatch.setitem(viewer.EMBEDDERS, name, _mean_colour_embedding)


def test_laplacian_variance_falls_with_blur_and_ignores_box_size():
  img = _texture()
  blurred = ndimage.gaussian_filter(img, (2, 2, 0))
  box = np.array([16, 16, 112, 112])
  assert viewer.laplacian_variance(blurred, box) < 0.3 * viewer.laplacian_variance(img, box)
  # The same face at twice the pixels is not "sharper": both are resized to one box first.
  big = np.repeat(np.repeat(blurred, 2, 0), 2, 1)
  ratio = viewer.laplacian_variance(big, box * 2) / viewer.laplacian_variance(blurred, box)
  assert 0.5 < ratio < 2.0


def test_viewer_scores_first_vs_last(fake_identity):
  portrait = _texture(seed=1)
  blurred = ndimage.gaussian_filter(portrait, (1.5, 1.5, 0))
  fps, seconds = 25.0, 40.0
  times = np.arange(0, seconds, 1.0)
  frames = np.stack([portrait if t < 20 else blurred for t in times])
  frames[3] = 0  # one frame without a face
  mouth = np.sin(np.arange(int(seconds * fps)) * 0.7)
  series = {"mouth_open": mouth, "envelope": mouth + 0.01}
  v = viewer.viewer_scores(frames, times, seconds, portrait, _FixedBox([20, 20, 100, 100]),
                           fps=fps, series=series)
  assert v["face_px"] == pytest.approx(80.0)
  assert v["identity_error"] is None
  assert v["first_10s"]["sharpness_rel"] == pytest.approx(1.0)
  assert v["last_over_first"]["sharpness_rel"] < 0.5  # the blur of the second half shows
  assert v["first_10s"]["identity_sim"] == pytest.approx(1.0, abs=1e-5)
  assert v["first_10s"]["corr_detrended"] > 0.9
  assert v["last_over_first"]["face_px"] == pytest.approx(1.0)
  md = viewer.render_drift_markdown([{"name": "clip", "group": "generated", "viewer": v}])
  assert "First 10 s vs last 10 s" in md and "| clip | generated |" in md


def test_short_clips_have_no_first_vs_last(fake_identity):
  portrait = _texture()
  v = viewer.viewer_scores(portrait[None].repeat(3, 0), np.arange(3) / 5, 0.6, None,
                           _FixedBox([0, 0, 64, 64]))
  assert "first_10s" not in v and v["sharpness_rel"] == pytest.approx(1.0)
  assert viewer.render_drift_markdown([{"name": "a", "group": "real", "viewer": v}]) == ""


def test_missing_identity_backend_gives_nan_and_says_how_to_install(monkeypatch):
  def unavailable(frames):
    raise viewer.IdentityUnavailable("pip install 'vasa-jax[identity]'")
  for name in viewer.EMBEDDERS:
    monkeypatch.setitem(viewer.EMBEDDERS, name, unavailable)
  portrait = _texture()
  v = viewer.viewer_scores(portrait[None], np.zeros(1), 0.04, portrait, _FixedBox([0, 0, 64, 64]))
  assert np.isnan(v["identity_sim"]) and "vasa-jax[identity]" in v["identity_error"]
  assert v["sharpness_rel"] == pytest.approx(1.0)


def test_bad_inputs_are_named():
  with pytest.raises(VasaInputError, match="Unknown identity backend"):
    viewer.identity_embedding(np.zeros((1, 8, 8, 3), np.uint8), backend="nope")
  with pytest.raises(VasaInputError, match="--portrait"):
    viewer.viewer_scores(_texture()[None], np.zeros(1), 0.04, np.zeros((64, 64, 3), np.uint8),
                         _FixedBox([0, 0, 64, 64]))


def test_dlib_descriptor_tells_people_apart(shared_data):
  pytest.importorskip("dlib")
  from vasa_jax.data import media
  from vasa_jax.data.face_crop import FaceAnalyzer
  analyzer = FaceAnalyzer()
  ims = [media.read_image(shared_data / "portraits" / f) for f in
         ("face_recognition__examples_biden.jpg", "face_recognition__examples_obama.jpg")]
  frames = np.stack([ims[0], np.fliplr(ims[0])])  # the photo and its mirror: one person
  same = viewer.frame_figures(frames, ims[0], analyzer, backend="dlib")["identity_sim"]
  other = viewer.frame_figures(ims[1][None], ims[0], analyzer, backend="dlib")["identity_sim"]
  assert same.min() > 0.95 and other[0] < same.min() - 0.03, (same, other)


def test_default_backend_follows_the_fetched_networks(tmp_path, monkeypatch):
  from vasa_jax.facenets import store
  monkeypatch.setenv(store.ENV_VAR, str(tmp_path / "empty"))
  assert viewer.default_backend() == "dlib"
  v = viewer.viewer_scores(_texture()[None], np.zeros(1), 0.04, _texture(),
                           _FixedBox([0, 0, 64, 64]), backend="mobilefacenet")
  assert np.isnan(v["identity_sim"]) and "fetch-face-nets" in v["identity_error"]
  assert v["identity_backend"] == "mobilefacenet"


def test_head_crop_matches_the_training_crop(shared_data):
  from vasa_jax.data import face_crop, media
  img = media.read_image(shared_data / "portraits" / "face_recognition__examples_biden.jpg")
  analyzer = face_crop.FaceAnalyzer()
  want = face_crop.crop_image(img, viewer.HEAD_SIDE, analyzer=analyzer).image
  got = viewer._head_crop(img, viewer.face_box(img, analyzer))  # pylint: disable=protected-access
  assert got.shape == want.shape
  assert np.abs(got.astype(float) - want).mean() < 12  # the same square, resampled differently


def test_mobilefacenet_tells_people_apart(shared_data):
  from vasa_jax.facenets import store
  if not store.available(("mobilefacenet", "facemesh")):
    pytest.skip("face networks not fetched: run `vasa-jax fetch-face-nets`")
  from vasa_jax.data import media
  from vasa_jax.data.face_crop import FaceAnalyzer
  assert viewer.default_backend() == "mobilefacenet"
  analyzer = FaceAnalyzer()
  ims = [media.read_image(shared_data / "portraits" / f) for f in
         ("face_recognition__examples_biden.jpg", "face_recognition__examples_obama.jpg")]
  frames = np.stack([ims[0], np.fliplr(ims[0])])
  res = viewer.frame_figures(frames, ims[0], analyzer)
  same = res["identity_sim"]
  other = viewer.frame_figures(ims[1][None], ims[0], analyzer)["identity_sim"]
  assert res["identity_backend"] == "mobilefacenet" and res["identity_error"] is None
  assert same[0] == pytest.approx(1.0, abs=1e-4)
  assert same[1] > 0.5 and other[0] < same[1] - 0.2, (same, other)
