"""DDPM noise schedules and the closed-form pieces the trainer and the samplers need.

A schedule is a small frozen pytree of float32 arrays indexed by the integer training timestep
t in [0, N): `alphas_cumprod[t]` is abar_t, the signal share of x_t = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps. Timesteps are integers in training; samplers use a strided subset of them.
"""
from __future__ import annotations

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Schedule:
  """Arrays of one DDPM schedule (length N = number of training timesteps)."""
  betas: jax.Array  # (N,)
  alphas_cumprod: jax.Array  # (N,) abar_t

  @property
  def num_steps(self) -> int:
    return self.betas.shape[0]


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Cosine schedule of Nichol & Dhariwal (2021): abar(t) = cos^2((t/N + s)/(1 + s) pi/2)."""
  def abar(i):
    return math.cos((i / num_steps + s) / (1 + s) * math.pi / 2) ** 2
  betas = [min(1 - abar(i + 1) / abar(i), max_beta) for i in range(num_steps)]
  return np.asarray(betas, np.float64)


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """Linear schedule of Ho et al. (2020), rescaled so other step counts keep the same shape."""
  scale = 1000.0 / num_steps
  return np.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=np.float64)


def make_schedule(name: str = "cosine", num_steps: int = 1000) -> Schedule:
  """Builds a schedule.

  Args:
    name: "cosine" or "linear".
    num_steps: number of training timesteps N.

  Returns:
    A `Schedule` with float32 arrays of length N.
  """
  if name == "cosine":
    betas = cosine_betas(num_steps)
  elif name == "linear":
    betas = linear_betas(num_steps)
  else:
    raise ValueError(f"Unknown diffusion schedule {name!r}; use 'cosine' or 'linear' "
                     "(config.diffusion.schedule)")
  abar = np.cumprod(1.0 - betas)
  return Schedule(betas=jnp.asarray(betas, jnp.float32),
                  alphas_cumprod=jnp.asarray(abar, jnp.float32))


def _bcast(v: jax.Array, like: jax.Array) -> jax.Array:
  """(B,) -> (B, 1, ..., 1) matching `like`'s rank."""
  return jnp.reshape(v, v.shape + (1,) * (like.ndim - v.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Forward process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

  Args:
    schedule: the schedule.
    x0: (B, ...) clean data.
    t: (B,) int timesteps in [0, N).
    noise: like x0, standard normal.

  Returns:
    x_t like x0.
  """
  abar = _bcast(schedule.alphas_cumprod[t], x0)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
  """The noise implied by a clean-data prediction: (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
  abar = _bcast(schedule.alphas_cumprod[t], x_t)
  return (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)


def velocity(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """v-prediction target of Salimans & Ho (2022): sqrt(abar) noise - sqrt(1 - abar) x0."""
  abar = _bcast(schedule.alphas_cumprod[t], x0)
  return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0


def abar_at(schedule: Schedule, t: jax.Array) -> jax.Array:
  """abar_t with the convention abar_{-1} = 1 (the clean end of a sampling trajectory)."""
  return jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], 1.0)


def sampling_timesteps(num_train_steps: int, num_sample_steps: int) -> np.ndarray:
  """Evenly spaced decreasing timesteps from N - 1 down to 0 (both ends included).

  Args:
    num_train_steps: N.
    num_sample_steps: S <= N.

  Returns:
    (S,) int32 strictly decreasing, first N - 1, last 0 (when S > 1).
  """
  if not 1 <= num_sample_steps <= num_train_steps:
    raise ValueError(f"sample steps must be in [1, {num_train_steps}], got {num_sample_steps} "
                     "(config.diffusion.sample_steps)")
  ts = np.round(np.linspace(num_train_steps - 1, 0, num_sample_steps))
  return ts.astype(np.int32)


def ddim_step(schedule: Schedule, x_t: jax.Array, x0: jax.Array, t: jax.Array, t_prev: jax.Array,
              noise: jax.Array, eta: float | jax.Array) -> jax.Array:
  """One generalised DDIM step from t to t_prev < t given a clean-data prediction.

  eta = 0 is deterministic DDIM; eta = 1 is ancestral DDPM on the respaced chain (its posterior
  variance beta~ = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).

  Args:
    schedule: the schedule.
    x_t: (B, ...) current sample.
    x0: like x_t, predicted clean data.
    t: (B,) int current timestep.
    t_prev: (B,) int next timestep, -1 for the final step (abar = 1, returns x0).
    noise: like x_t, standard normal.
    eta: stochasticity.

  Returns:
    x_{t_prev} like x_t.
  """
  abar_t = _bcast(abar_at(schedule, t), x_t)
  abar_prev = _bcast(abar_at(schedule, t_prev), x_t)
  eps = (x_t - jnp.sqrt(abar_t) * x0) / jnp.sqrt(1.0 - abar_t)
  var = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
  sigma = eta * jnp.sqrt(jnp.maximum(var, 0.0))
  dir_coef = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma ** 2, 0.0))
  return jnp.sqrt(abar_prev) * x0 + dir_coef * eps + sigma * noise


def ddpm_posterior(schedule: Schedule, x_t: jax.Array, x0: jax.Array, t: jax.Array,
                   t_prev: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of q(x_{t_prev} | x_t, x0) on the (possibly respaced) chain.

  Returns:
    (mean like x_t, variance broadcastable to x_t).
  """
  abar_t = _bcast(abar_at(schedule, t), x_t)
  abar_prev = _bcast(abar_at(schedule, t_prev), x_t)
  alpha = abar_t / abar_prev
  beta = 1.0 - alpha
  mean = (jnp.sqrt(abar_prev) * beta / (1.0 - abar_t)) * x0 + (
      jnp.sqrt(alpha) * (1.0 - abar_prev) / (1.0 - abar_t)) * x_t
  var = beta * (1.0 - abar_prev) / (1.0 - abar_t)
  return mean, var
