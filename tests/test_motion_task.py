"""The stage 2 Task: init, condition dropout, 50 training steps, eval, dataset."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import motion as motion_config
from vasa_jax.train.motion_task import MotionTask, drop_conditions
from vasa_jax.train.state import TrainState

# Checks behaviour, not speed: unoptimised XLA compiles the train step several times faster.
pytestmark = pytest.mark.usefixtures("fast_compile")


def _config():
  c = motion_config.get_config("tiny")
  c.model.update(layers=1, width=32, audio_width=32, audio_layers=1)  # fast compiles
  c.train.batch_size = 4
  return c


def _batch(c, b=4, seed=0):
  """A synthetic stage 2 batch with the pipeline's element spec; motion follows the audio."""
  rng = np.random.default_rng(seed)
  w, k, dm, e = c.model.window, c.model.context, c.model.motion_dim, c.model.emotion_dim
  audio = rng.normal(-5.0, 2.0, (b, w + k, 4, 80)).astype(np.float32)
  motion = np.tanh(audio.mean(axis=(2, 3))[..., None] + 5.0) * np.linspace(-1, 1, dm)
  motion = motion.astype(np.float32)
  return {"motion": motion[:, k:], "motion_prev": motion[:, :k], "audio": audio[:, k:],
          "audio_prev": audio[:, :k], "has_prev": np.array([True, False] * (b // 2)),
          "gaze": rng.normal(0, 0.1, (b, 2)).astype(np.float32),
          "distance": rng.normal(0, 1, (b, 1)).astype(np.float32),
          "emotion": np.eye(e, dtype=np.float32)[rng.integers(0, e, b)],
          "emotion_mask": np.array([True, False] * (b // 2))}


def test_init_and_fifty_steps_lower_the_loss():
  c = _config()
  task = MotionTask(c)
  batch = _batch(c)
  state = jax.jit(task.init)(jax.random.key(0), batch)
  assert isinstance(state, TrainState) and state.ema_params is None  # tiny: no EMA
  leaves = jax.tree.leaves(state.params, is_leaf=lambda v: isinstance(v, nn.Partitioned))
  assert all(isinstance(v, nn.Partitioned) for v in leaves)
  state = state.replace(params=nn.unbox(state.params), opt_state=nn.unbox(state.opt_state))
  step = jax.jit(task.train_step, donate_argnums=0)
  jbatch = jax.tree.map(jnp.asarray, batch)
  losses = []
  for i in range(50):
    state, metrics = step(state, jbatch, jax.random.fold_in(jax.random.key(1), i))
    losses.append(float(metrics["loss"]))
  assert {"loss", "loss_x0", "loss_velocity", "grad_norm"} <= set(metrics)
  assert int(state.step) == 50 and np.isfinite(losses).all()
  assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), losses
  ev = jax.jit(task.eval_step)(state, jbatch)
  ev2 = jax.jit(task.eval_step)(state, jbatch)
  assert float(ev["loss"]) == float(ev2["loss"]) and np.isfinite(float(ev["loss_x0"]))
  assert task.sample_images(state, batch) is None


def test_condition_dropout_rates_and_truncation():
  c = _config()
  b, w = 20000, c.model.window
  batch = {"has_prev": np.ones((b,), bool), "emotion_mask": np.arange(b) % 2 == 0}
  m = jax.jit(lambda r: drop_conditions(r, batch, c.diffusion, w))(jax.random.key(0))
  d = c.diffusion
  whole_audio = np.asarray(m["has_audio"]).all(1)
  no_audio = ~np.asarray(m["has_audio"]).any(1)
  np.testing.assert_allclose(no_audio.mean(), d.p_drop_audio, atol=0.01)
  # Truncation: some samples lose only a suffix of frames, never a prefix.
  partial = ~whole_audio & ~no_audio
  np.testing.assert_allclose(partial.mean(), (1 - d.p_drop_audio) * d.p_truncate_audio, atol=0.01)
  ha = np.asarray(m["has_audio"])[partial]
  assert (np.diff(ha.astype(int), axis=1) <= 0).all() and ha[:, 0].all()
  np.testing.assert_allclose(1 - np.asarray(m["has_prev"]).mean(), d.p_drop_context, atol=0.015)
  np.testing.assert_allclose(1 - np.asarray(m["has_gaze"]).mean(), d.p_drop_gaze, atol=0.01)
  emo = np.asarray(m["has_emotion"])
  assert not emo[1::2].any()  # no label, never on
  np.testing.assert_allclose(emo[::2].mean(), 1 - d.p_drop_emotion, atol=0.015)


def test_make_dataset_gives_the_stage2_spec():
  c = _config()
  it = iter(MotionTask(c).make_dataset("train", 0, 1))
  batch = next(it)
  w, k, dm = c.model.window, c.model.context, c.model.motion_dim
  assert batch["motion"].shape == (4, w, dm) and batch["audio_prev"].shape == (4, k, 4, 80)
  assert batch["has_prev"].dtype == bool


def test_mouth_weight_emphasises_one_motion_entry():
  import jax.numpy as jnp
  from vasa_jax.train import motion_losses
  target = jnp.zeros((2, 5, 4))
  pred = target.at[:, :, 1].set(1.0)  # error only in entry 1
  plain, _ = motion_losses.motion_loss(pred, target)
  same, _ = motion_losses.motion_loss(pred, target, dim_weights=jnp.ones((4,)))
  assert float(same) == pytest.approx(float(plain))
  heavy, _ = motion_losses.motion_loss(pred, target, dim_weights=jnp.array([1.0, 5.0, 1.0, 1.0]))
  assert float(heavy) == pytest.approx(float(plain) * 5.0 / 2.0)  # normalised by mean weight
