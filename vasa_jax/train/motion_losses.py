"""Stage 2 losses: x0 reconstruction and a velocity (frame difference) term (JoyVASA)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _weighted_mean(sq: jax.Array, dim_weights: jax.Array | None) -> jax.Array:
  if dim_weights is None:
    return jnp.mean(sq)
  return jnp.mean(sq * dim_weights) / jnp.mean(dim_weights)


def x0_loss(pred: jax.Array, target: jax.Array, dim_weights: jax.Array | None = None
            ) -> jax.Array:
  """Mean squared error of the clean-motion prediction, (B, W, Dm) -> (), optionally weighted
  per motion entry by `dim_weights` (Dm,) (normalised so uniform weights change nothing)."""
  return _weighted_mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)),
                        dim_weights)


def velocity_loss(pred: jax.Array, target: jax.Array, dim_weights: jax.Array | None = None
                  ) -> jax.Array:
  """MSE of frame-to-frame differences along time, (B, W, Dm) -> (); penalises jitter."""
  dp = jnp.diff(pred.astype(jnp.float32), axis=1)
  dt = jnp.diff(target.astype(jnp.float32), axis=1)
  return _weighted_mean(jnp.square(dp - dt), dim_weights)


def motion_loss(pred: jax.Array, target: jax.Array, *, x0_weight: float = 1.0,
                velocity_weight: float = 1.0, dim_weights: jax.Array | None = None
                ) -> tuple[jax.Array, dict]:
  """Weighted sum of `x0_loss` and `velocity_loss`.

  Args:
    pred: (B, W, Dm) predicted x0.
    target: (B, W, Dm) true x0.
    x0_weight: weight of the x0 term (config.loss.x0).
    velocity_weight: weight of the velocity term (config.loss.velocity).
    dim_weights: (Dm,) weights of the motion entries, or None for uniform.

  Returns:
    (loss (), {"loss_x0", "loss_velocity"} scalars).
  """
  lx = x0_loss(pred, target, dim_weights)
  lv = velocity_loss(pred, target, dim_weights)
  return x0_weight * lx + velocity_weight * lv, {"loss_x0": lx, "loss_velocity": lv}
