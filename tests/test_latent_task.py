"""LatentTask: init structure, jitted train step (one trace across the GAN switch-on, loss goes
down), eval and sample grids, on fixed synthetic batches."""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import latent
from vasa_jax.errors import VasaInputError
from vasa_jax.train.latent_task import IMAGE_KEYS, LatentTask
from vasa_jax.train.state import TrainState

pytestmark = pytest.mark.usefixtures("fast_compile")  # behaviour, not speed, is checked here

B, R = 2, 64
GAN_START = 2
# Tests trade run time for compile time (the step compiles ~2x faster, runs ~1.5x slower).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _config(**loss):
  cfg = latent.get_config("tiny")
  cfg.train.batch_size = B
  cfg.loss.adversarial = 0.1
  cfg.loss.feature_matching = 1.0
  cfg.loss.gan_start_step = GAN_START
  cfg.optim.ema_decay = 0.9
  cfg.optim.warmup_steps = 2
  cfg.train.num_steps = 100
  for k, v in loss.items():
    cfg.loss[k] = v
  return cfg


def _smooth_batch(seed=0):
  """Smooth synthetic faces-ish images: blurred blobs on a gradient, as uint8."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:R, 0:R] / R
  out = {}
  for k in IMAGE_KEYS:
    imgs = []
    for _ in range(B):
      cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
      blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
      colour = rng.uniform(0.2, 1.0, 3)
      img = 0.3 * xx[..., None] + blob[..., None] * colour
      imgs.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    out[k] = np.stack(imgs)
  return out


@pytest.fixture(scope="module")
def task_state():
  task = LatentTask(_config())
  batch = _smooth_batch()
  state = jax.jit(task.init)(jax.random.key(0), batch)
  return task, state, batch


def test_init_structure(task_state):
  task, state, _ = task_state
  assert isinstance(state, TrainState) and int(state.step) == 0
  assert set(state.params) == {"gen", "disc"} and set(state.opt_state) == {"gen", "disc"}
  assert set(state.ema_params) == {"gen", "disc"}
  boxes = jax.tree.leaves(state.params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(b, nn.LogicallyPartitioned) for b in boxes)
  assert {b.value.dtype for b in boxes} == {jnp.dtype(jnp.float32)}


def test_eval_and_sample_grid(task_state):
  task, state, batch = task_state
  metrics = jax.jit(task.eval_step)(nn.unbox(state), batch)
  assert set(metrics) == {"psnr", "ssim", "l1"}
  assert all(np.isfinite(float(v)) for v in metrics.values())
  grid = task.sample_images(state, batch)
  assert grid.dtype == np.uint8 and grid.shape == (5 * R, B * R, 3)
  np.testing.assert_array_equal(grid[:R, :R], batch["source"][0])  # row 0 is the source
  np.testing.assert_array_equal(grid[3 * R:4 * R, R:], batch["other"][1])


def test_wrong_resolution_and_arcface_are_reported():
  task = LatentTask(_config())
  with pytest.raises(VasaInputError, match="resolution"):
    task.init(jax.random.key(0), {k: np.zeros((1, 32, 32, 3), np.uint8) for k in IMAGE_KEYS})
  with pytest.raises(VasaInputError, match="arcface"):
    LatentTask(_config(arcface_path="/models/arcface.onnx"))


@pytest.fixture(scope="module")
def compiled_step(task_state):
  task, _, _ = task_state
  return jax.jit(chex.assert_max_traces(task.train_step, n=1), compiler_options=FAST_COMPILE)


def test_step_traces_once_across_gan_switch(task_state, compiled_step):
  task, state, batch = task_state
  state = nn.unbox(state)  # the loop unboxes before stepping
  disc0 = state.params["disc"]
  seen = []
  for i in range(GAN_START + 2):
    prev_disc = state.params["disc"]
    state, m = compiled_step(state, batch, jax.random.key(i))
    m = {k: float(v) for k, v in m.items()}
    assert all(np.isfinite(v) for v in m.values()), m
    seen.append(m)
    changed = any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(prev_disc),
                                                        jax.tree.leaves(state.params["disc"])))
    if i < GAN_START:  # frozen, Adam moments included (its warmup then starts at lr 0)
      assert not changed, f"step {i}: the discriminator trained before gan_start_step"
  assert [m["gan_on"] for m in seen] == [0.0] * GAN_START + [1.0, 1.0]
  assert seen[0]["d_loss"] == 0.0 and seen[0]["g_adversarial"] == 0.0
  assert seen[-1]["d_loss"] > 0.0 and seen[-1]["g_feature_matching"] > 0.0
  assert int(state.step) == GAN_START + 2
  assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(disc0),
                                                   jax.tree.leaves(state.params["disc"])))
  # EMA trails the parameters.
  leaf = lambda t: jax.tree.leaves(t["gen"])[0]  # noqa: E731
  assert not np.allclose(leaf(state.ema_params), leaf(state.params))


def test_thirty_steps_lower_reconstruction_loss(task_state, compiled_step):
  task, state, batch = task_state
  state = nn.unbox(state)
  losses = []
  for i in range(30):
    state, m = compiled_step(state, batch, jax.random.key(i))
    losses.append(float(m["g_l1"]))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses


def test_label_losses_train_the_encoder_and_labels_reach_the_decoder():
  cfg = _config(adversarial=0.0, feature_matching=0.0, consistency=1.0, cross_id=0.0,
                contrastive=0.0, pose_label=1.0, mouth_label=1.0)
  cfg.model.source_warp = True  # the demo's decoder; a train step must run through it
  cfg.optim.lr = 2e-3  # a few steps must move the heads visibly
  task = LatentTask(cfg)
  batch = _smooth_batch(3)
  state = jax.jit(task.init)(jax.random.key(0), batch)
  labels = np.zeros((B, 3, 5), np.float32)
  labels[0] = [0.3, -0.2, 0.1, 0.1, 1.5]  # the first element's three frames are labelled
  labels[1] = 9.0  # the second one is not: its values must be ignored
  valid = np.array([[1, 1, 1], [0, 0, 0]], np.float32)
  lab = {"motion_labels": labels, "labels_valid": valid}
  # One batch structure for every step: a changed structure would compile the step again.
  step = jax.jit(chex.assert_max_traces(task.train_step, n=1), compiler_options=FAST_COMPILE)
  boxes = np.tile(np.float32([0.5, 0.7, 0.15, 0.1]), (B, 3, 1))  # (B, 3, 4)
  labelled = {**batch, **lab, "mouth_box": boxes}
  s, first = step(state, labelled, jax.random.key(1))
  # The mouth-region L1 counts the labelled driver only: the whole-image L1's order of size.
  assert 0.0 < float(first["g_mouth_l1"]) < 4 * float(first["g_l1"]) + 0.5
  # Untrained: z_pose = 0 and z_dyn ~ 0, so the losses are the valid labels' sizes.
  assert float(first["g_pose_label"]) == pytest.approx(0.3 + 0.2 + 0.1 + 0.1, abs=1e-4)
  assert float(first["g_mouth_label"]) == pytest.approx(1.5, abs=0.2)
  for _ in range(15):
    s, m = step(s, labelled, jax.random.key(1))
  assert float(m["g_pose_label"]) < 0.5 * float(first["g_pose_label"])
  assert float(m["g_mouth_label"]) < 0.5 * float(first["g_mouth_label"])
  # Without label keys the step still traces (AOT specs, hand-made batches); tracing checks
  # that without compiling the step a second time.
  _, m = jax.eval_shape(task.train_step, s, batch, jax.random.key(1))
  assert "g_pose_label" not in m and "g_l1" in m
  # The decoder sees the labels: pinning the driver's yaw changes the rendering.
  gen = s.params["gen"]
  imgs = {k: jnp.asarray(batch[k], jnp.float32) / 127.5 - 1.0 for k in IMAGE_KEYS}
  turned = labels.copy()
  turned[0, 1, 0] = 0.6
  # Jitted (one trace per task and rng presence): op by op, the generator takes minutes.
  loss_fn = jax.jit(task.generator_loss, compiler_options=FAST_COMPILE)
  _, (_, (recon_a, _)) = loss_fn(gen, s.params["disc"], {**imgs, **lab}, jnp.float32(0.0))
  _, (_, (recon_b, _)) = loss_fn(
      gen, s.params["disc"], {**imgs, "motion_labels": turned, "labels_valid": valid},
      jnp.float32(0.0))
  assert float(jnp.abs(recon_a[0] - recon_b[0]).mean()) > 1e-3
  np.testing.assert_allclose(recon_a[1], recon_b[1], atol=1e-6)
  # loss.dyn_swap = 1: the labelled driver is rendered with the source's free dynamics, the
  # unlabelled one is left alone; without an rng (validation, samples) nothing is swapped.
  cfg.loss.dyn_swap = 1.0
  swap_loss = jax.jit(LatentTask(cfg).generator_loss, compiler_options=FAST_COMPILE)
  _, (m_swap, (recon_s, _)) = swap_loss(gen, s.params["disc"], {**imgs, **lab},
                                        jnp.float32(0.0), jax.random.key(2))
  _, (m_none, (recon_n, _)) = swap_loss(gen, s.params["disc"], {**imgs, **lab},
                                        jnp.float32(0.0))
  assert float(m_swap["g_dyn_swap_frac"]) == pytest.approx(0.5)
  assert "g_dyn_swap_frac" not in m_none
  np.testing.assert_allclose(recon_n, recon_a, atol=1e-6)
  assert float(jnp.abs(recon_s[0] - recon_a[0]).mean()) > 1e-4
  np.testing.assert_allclose(recon_s[1], recon_a[1], atol=1e-6)
