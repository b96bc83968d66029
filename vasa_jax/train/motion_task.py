"""The stage 2 Task (see `vasa_jax/train/tasks.py`): motion diffusion training.

Each step: sample t and noise, noise the motion window, drop conditions at random (VASA-1: each
control p = 0.1, the previous-window context p = 0.5, and with `p_truncate_audio` the audio of the
last 1..W-1 frames, as in a short final window), predict x0 with `MotionModel`, and minimise
x0 MSE + velocity MSE. AdamW and the EMA come from `vasa_jax.train.optim`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vasa_jax.data import input_pipeline
from vasa_jax.diffusion import schedule as schedule_lib
from vasa_jax.models import motion_labels
from vasa_jax.models.motion_dit import batch_cond, build_motion_model, full_masks
from vasa_jax.train import motion_losses, optim
from vasa_jax.train.state import TrainState


def drop_conditions(rng: jax.Array, batch: dict, diffusion_cfg, window: int) -> dict:
  """Per-sample condition masks for classifier-free guidance training.

  Args:
    rng: key.
    batch: the stage 2 batch (uses `has_prev` (B,) and `emotion_mask` (B,)).
    diffusion_cfg: `config.diffusion` (p_drop_*, p_truncate_audio).
    window: W.

  Returns:
    {"has_audio" (B, W), "has_prev", "has_gaze", "has_distance", "has_emotion" (B,)} bool.
  """
  b = batch["has_prev"].shape[0]
  keys = jax.random.split(rng, 7)

  def keep(key, p):
    return jax.random.uniform(key, (b,)) >= p

  audio = keep(keys[0], diffusion_cfg.p_drop_audio)
  truncate = jax.random.uniform(keys[1], (b,)) < diffusion_cfg.p_truncate_audio
  cut = jax.random.randint(keys[2], (b,), 1, max(window, 2))  # frames without audio at the end
  frame = jnp.arange(window)[None, :]
  has_audio = audio[:, None] & ~(truncate[:, None] & (frame >= window - cut[:, None]))
  return {
      "has_audio": has_audio,
      "has_prev": (jnp.asarray(batch["has_prev"], bool)
                   & keep(keys[3], diffusion_cfg.p_drop_context)),
      "has_gaze": keep(keys[4], diffusion_cfg.p_drop_gaze),
      "has_distance": keep(keys[5], diffusion_cfg.p_drop_distance),
      "has_emotion": jnp.asarray(batch["emotion_mask"], bool)
                     & keep(keys[6], diffusion_cfg.p_drop_emotion),
  }


class MotionTask:
  """Stage 2 Task: `init`, `train_step`, `eval_step`, `make_dataset`, `sample_images`."""

  def __init__(self, config):
    self.config = config
    self.model = build_motion_model(config)
    self.schedule = schedule_lib.make_schedule(config.diffusion.schedule,
                                               config.diffusion.train_steps)
    self.tx = optim.make_optimizer(config.optim, config.train.num_steps)

  def _noisy(self, rng, x0):
    rng_t, rng_n = jax.random.split(rng)
    t = jax.random.randint(rng_t, (x0.shape[0],), 0, self.schedule.num_steps)
    noise = jax.random.normal(rng_n, x0.shape, x0.dtype)
    return schedule_lib.q_sample(self.schedule, x0, t, noise), t

  def init(self, rng, batch) -> TrainState:
    """Parameters (boxed with logical names), optimizer state and EMA from an example batch."""
    x0 = jnp.asarray(batch["motion"], jnp.float32)
    w = x0.shape[1]
    cond = batch_cond(batch, full_masks(batch, w))
    t = jnp.zeros((x0.shape[0],), jnp.int32)
    params = self.model.init(rng, x0, t, cond)["params"]
    ema = params if self.config.optim.ema_decay > 0 else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), ema_params=ema)

  def _loss(self, params, batch, x_t, t, masks):
    x0 = jnp.asarray(batch["motion"], jnp.float32)
    pred = self.model.apply({"params": params}, x_t, t, batch_cond(batch, masks))
    return motion_losses.motion_loss(pred, x0, x0_weight=self.config.loss.x0,
                                     velocity_weight=self.config.loss.velocity,
                                     dim_weights=self._dim_weights())

  def _dim_weights(self):
    """(Dm,) loss weights: `loss.mouth` on z_dyn[0] (the mouth opening when stage 1 pins it to
    labels, `model.label_motion`), 1 elsewhere; None when uniform."""
    mouth = float(self.config.loss.get("mouth", 1.0))
    if mouth == 1.0:
      return None
    m = self.config.model
    i = m.z_pose_dim + motion_labels.MOUTH_INDEX  # [z_pose, z_dyn]
    return jnp.ones((m.motion_dim,), jnp.float32).at[i].set(mouth)

  def train_step(self, state: TrainState, batch, rng):
    """One AdamW step on the diffusion loss; returns (state, metrics with "loss")."""
    rng_noise, rng_drop = jax.random.split(rng)
    x0 = jnp.asarray(batch["motion"], jnp.float32)
    x_t, t = self._noisy(rng_noise, x0)
    masks = drop_conditions(rng_drop, batch, self.config.diffusion, x0.shape[1])
    (loss, parts), grads = jax.value_and_grad(self._loss, has_aux=True)(
        state.params, batch, x_t, t, masks)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = optim.ema_update(state.ema_params, params, self.config.optim.ema_decay)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **parts}

  def eval_step(self, state: TrainState, batch):
    """Validation losses at random t with a fixed key and no condition dropout (EMA if any)."""
    params = state.ema_params if state.ema_params is not None else state.params
    x0 = jnp.asarray(batch["motion"], jnp.float32)
    x_t, t = self._noisy(jax.random.key(0), x0)
    loss, parts = self._loss(params, batch, x_t, t, full_masks(batch, x0.shape[1]))
    return {"loss": loss, **parts}

  def make_dataset(self, split: str, process_index: int, process_count: int):
    """Host-local grain batches of stage 2 windows (`vasa_jax.data.input_pipeline`)."""
    return input_pipeline.make_dataset(self.config, split, process_index, process_count)

  def sample_images(self, state: TrainState, batch):
    """Stage 2 has no images to show."""
    del state, batch
    return None
