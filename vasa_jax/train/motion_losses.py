"""Stage 2 losses: x0 reconstruction and a velocity (frame difference) term (JoyVASA)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def x0_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error of the clean-motion prediction, (B, W, Dm) -> ()."""
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def velocity_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """MSE of frame-to-frame differences along time, (B, W, Dm) -> (); penalises jitter."""
  dp = jnp.diff(pred.astype(jnp.float32), axis=1)
  dt = jnp.diff(target.astype(jnp.float32), axis=1)
  return jnp.mean(jnp.square(dp - dt))


def motion_loss(pred: jax.Array, target: jax.Array, *, x0_weight: float = 1.0,
                velocity_weight: float = 1.0) -> tuple[jax.Array, dict]:
  """Weighted sum of `x0_loss` and `velocity_loss`.

  Args:
    pred: (B, W, Dm) predicted x0.
    target: (B, W, Dm) true x0.
    x0_weight: weight of the x0 term (config.loss.x0).
    velocity_weight: weight of the velocity term (config.loss.velocity).

  Returns:
    (loss (), {"loss_x0", "loss_velocity"} scalars).
  """
  lx = x0_loss(pred, target)
  lv = velocity_loss(pred, target)
  return x0_weight * lx + velocity_weight * lv, {"loss_x0": lx, "loss_velocity": lv}
