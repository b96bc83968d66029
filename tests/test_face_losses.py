"""Stage 1 losses with the pretrained face networks: switches, the missing-network error, values
and gradients on tiny shapes, and one LatentTask train step with them on."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import latent
from vasa_jax.facenets import store
from vasa_jax.train import latent_losses as L

R = 64


def test_switches_on_in_demo_and_base_off_in_tiny():
  for variant, on in (("tiny", False), ("demo", True), ("base", True)):
    cfg = latent.get_config(variant)
    assert bool(L.face_nets_needed(cfg.loss)) == on, variant
    assert cfg.loss.foreground_mask == on
  cfg = latent.get_config("demo")
  assert L.face_nets_needed(cfg.loss) == ("mobilefacenet", "facemesh", "selfie")
  w = L.landmark_weights()
  assert w.shape == (468,) and w.sum() == pytest.approx(1.0)
  assert w[13] == pytest.approx(L.LANDMARK_FOCUS * w[10])  # lip point vs forehead


def test_training_with_face_losses_fails_at_once_without_nets(tmp_path, monkeypatch):
  from vasa_jax.train.latent_task import LatentTask
  monkeypatch.setenv(store.ENV_VAR, str(tmp_path))
  cfg = latent.get_config("tiny")
  cfg.loss.face_id = 1.0
  with pytest.raises(store.FaceNetsMissing, match="vasa-jax fetch-face-nets"):
    LatentTask(cfg)


@pytest.fixture(scope="module")
def face_nets():
  if not store.available():
    pytest.skip("face networks not fetched: run `vasa-jax fetch-face-nets`")
  from vasa_jax.facenets import nets
  return nets.FaceNets.load()


def _faces(seed):
  """Smooth random images (B=2, 64x64) in [-1, 1]."""
  x = jax.random.uniform(jax.random.key(seed), (2, 8, 8, 3), minval=-1, maxval=1)
  return jax.image.resize(x, (2, R, R, 3), "linear")


def test_face_losses_zero_on_targets_and_differentiable(face_nets):
  a, b = _faces(0), _faces(1)
  fn = jax.jit(lambda r, c, d, s: L.face_network_losses(face_nets, r, c, d, s))
  same = fn(a, b, a, b)  # reconstruction = driver, cross = source
  for k in L.FACE_LOSSES:
    assert float(same[k]) == pytest.approx(0.0, abs=1e-4), k
  other = fn(b, a, a, b)
  assert all(float(other[k]) > 1e-3 for k in L.FACE_LOSSES), other
  # Jitted: op-by-op, the backward pass through three networks takes five times as long.
  grads = jax.jit(jax.grad(
      lambda r: sum(L.face_network_losses(face_nets, r, a, a, b).values())))(b)
  assert np.isfinite(np.asarray(grads)).all() and float(jnp.abs(grads).sum()) > 0
  fg = jax.jit(lambda x: L.foreground(face_nets, x))(a)
  assert fg.shape == (2, R, R, 1) and 0 <= float(fg.min()) <= float(fg.max()) <= 1


@pytest.mark.slow  # ~2 min compile on a 2-core CPU; the losses alone are tested above
def test_latent_task_step_with_face_losses(face_nets):
  from vasa_jax.train.latent_task import IMAGE_KEYS, LatentTask
  cfg = latent.get_config("tiny")
  cfg.train.batch_size = 2
  cfg.loss.face_id, cfg.loss.face_perceptual, cfg.loss.face_landmark = 1.0, 1.0, 10.0
  cfg.loss.foreground_mask = True
  task = LatentTask(cfg)
  rng = np.random.default_rng(0)
  batch = {k: rng.integers(0, 255, (2, R, R, 3), dtype=np.uint8) for k in IMAGE_KEYS}
  state = task.init(jax.random.key(0), batch)
  # The frozen networks are not part of the train state.
  n_state = sum(x.size for x in jax.tree.leaves(state.params))
  n_fresh = sum(x.size for x in jax.tree.leaves(LatentTask(latent.get_config("tiny")).init(
      jax.random.key(0), batch).params))
  assert n_state == n_fresh
  _, metrics = jax.jit(task.train_step)(state, batch, jax.random.key(1))
  for k in ("g_face_id", "g_face_perceptual", "g_face_landmark", "g_foreground_frac"):
    assert np.isfinite(float(metrics[k])), k
