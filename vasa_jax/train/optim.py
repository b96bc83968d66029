"""AdamW with linear warmup + cosine decay and global-norm clipping; EMA of parameters."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def make_schedule(optim_cfg, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine decay to `min_lr`.

  Args:
    optim_cfg: `config.optim` (lr, min_lr, warmup_steps).
    num_steps: total training steps (the end of the cosine).

  Returns:
    An optax schedule, step -> learning rate.
  """
  warmup = max(int(optim_cfg.warmup_steps), 0)
  # optax needs decay_steps > warmup_steps; a run shorter than its warmup just stays in warmup.
  decay_steps = max(int(num_steps), warmup + 1)
  if warmup == 0:
    return optax.cosine_decay_schedule(
        optim_cfg.lr, decay_steps, alpha=optim_cfg.min_lr / max(optim_cfg.lr, 1e-30))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim_cfg.lr, warmup_steps=warmup, decay_steps=decay_steps,
      end_value=optim_cfg.min_lr)


def _decay_mask(params):
  # No weight decay on biases and norm scales (rank <= 1), as is usual for AdamW.
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(optim_cfg, num_steps: int) -> optax.GradientTransformation:
  """AdamW (b1, b2, weight_decay) on `make_schedule`, after global-norm clipping.

  Args:
    optim_cfg: `config.optim` (lr, min_lr, b1, b2, weight_decay, warmup_steps, grad_clip).
    num_steps: total training steps.

  Returns:
    An `optax.GradientTransformation`.
  """
  parts = []
  if optim_cfg.grad_clip and optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(optax.adamw(make_schedule(optim_cfg, num_steps), b1=optim_cfg.b1, b2=optim_cfg.b2,
                           weight_decay=optim_cfg.weight_decay, mask=_decay_mask))
  return optax.chain(*parts)


def ema_update(ema: Any, params: Any, decay: float) -> Any:
  """`decay * ema + (1 - decay) * params` leaf by leaf (None when there is no EMA).

  Args:
    ema: the EMA parameters, or None.
    params: the new parameters (same structure).
    decay: EMA decay in [0, 1).

  Returns:
    The updated EMA parameters in the EMA's dtypes, or None.
  """
  if ema is None:
    return None
  return jax.tree.map(
      lambda e, p: (decay * e + (1.0 - decay) * p.astype(e.dtype)).astype(e.dtype), ema, params)
