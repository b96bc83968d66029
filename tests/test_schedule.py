"""Diffusion schedules and the closed-form DDIM / DDPM steps."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vasa_jax.diffusion import schedule as S


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_schedule_is_monotone_and_bounded(name):
  s = S.make_schedule(name, 1000)
  abar = np.asarray(s.alphas_cumprod)
  assert abar.shape == (1000,) and s.num_steps == 1000
  assert np.all(np.diff(abar) < 0)
  assert 0.99 < abar[0] < 1.0 and 0.0 < abar[-1] < 1e-3
  assert np.all((np.asarray(s.betas) > 0) & (np.asarray(s.betas) < 1))


def test_unknown_schedule_raises():
  with pytest.raises(ValueError, match="config.diffusion.schedule"):
    S.make_schedule("sigmoid")


def test_q_sample_statistics():
  s = S.make_schedule("cosine", 1000)
  t = jnp.full((4096,), 500)
  x0 = jnp.ones((4096, 8))
  noise = jax.random.normal(jax.random.key(0), x0.shape)
  x_t = S.q_sample(s, x0, t, noise)
  abar = float(s.alphas_cumprod[500])
  np.testing.assert_allclose(float(x_t.mean()), np.sqrt(abar), atol=0.02)
  np.testing.assert_allclose(float(x_t.var()), 1 - abar, rtol=0.05)
  # The implied noise and the v target invert the forward process.
  np.testing.assert_allclose(S.eps_from_x0(s, x_t, t, x0), noise, atol=1e-4)
  v = S.velocity(s, x0, t, noise)
  np.testing.assert_allclose(np.sqrt(abar) * x_t - np.sqrt(1 - abar) * v, x0, atol=1e-4)


def test_sampling_timesteps():
  ts = S.sampling_timesteps(1000, 50)
  assert ts.shape == (50,) and ts[0] == 999 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
  assert list(S.sampling_timesteps(10, 10)) == list(range(9, -1, -1))
  with pytest.raises(ValueError):
    S.sampling_timesteps(10, 11)


def test_ddim_step_with_true_x0_stays_on_the_forward_trajectory():
  s = S.make_schedule("cosine", 1000)
  x0 = jax.random.normal(jax.random.key(1), (3, 5, 2))
  eps = jax.random.normal(jax.random.key(2), x0.shape)
  t, t_prev = jnp.full((3,), 700), jnp.full((3,), 400)
  x_t = S.q_sample(s, x0, t, eps)
  out = S.ddim_step(s, x_t, x0, t, t_prev, jnp.zeros_like(x0), 0.0)
  np.testing.assert_allclose(out, S.q_sample(s, x0, t_prev, eps), atol=1e-5)
  # The final step (t_prev = -1) returns x0 exactly, for DDIM and DDPM.
  for eta in (0.0, 1.0):
    last = S.ddim_step(s, x_t, x0, t, jnp.full((3,), -1), eps, eta)
    np.testing.assert_allclose(last, x0, atol=1e-6)


def test_ddpm_step_matches_the_posterior():
  s = S.make_schedule("linear", 1000)
  x0 = jax.random.normal(jax.random.key(3), (2, 4))
  x_t = jax.random.normal(jax.random.key(4), (2, 4))
  t, t_prev = jnp.array([600, 30]), jnp.array([580, 10])
  mean, var = S.ddpm_posterior(s, x_t, x0, t, t_prev)
  np.testing.assert_allclose(S.ddim_step(s, x_t, x0, t, t_prev, jnp.zeros_like(x0), 1.0), mean,
                             atol=1e-5)
  noise = jnp.ones_like(x0)
  step = S.ddim_step(s, x_t, x0, t, t_prev, noise, 1.0)
  np.testing.assert_allclose(step - mean, jnp.sqrt(var) * noise, atol=1e-5)
