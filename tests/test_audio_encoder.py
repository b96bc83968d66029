"""The mel audio encoder: shapes, exact receptive field, padding semantics, axis names."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import LOGICAL_AXIS_RULES
from vasa_jax.models.audio_encoder import AudioEncoder

T = 24


def _encoder(lookahead):
  return AudioEncoder(width=32, layers=2, heads=4, attn_past=3, lookahead=lookahead)


@pytest.fixture(scope="module", params=[0, 2])
def enc(request):
  e = _encoder(request.param)
  x = jax.random.normal(jax.random.key(0), (2, T, 4, 80)) * 3 - 5
  variables = jax.jit(e.init)(jax.random.key(1), x)
  return e, nn.unbox(variables), jax.jit(e.apply), x, variables


def test_shape_and_finite(enc):
  e, params, apply, x, _ = enc
  y = apply(params, x)
  assert y.shape == (2, T, 32) and np.isfinite(np.asarray(y)).all()
  assert e.receptive_past == 2 * 2 + 2 * 3 - e.lookahead


def test_receptive_field_is_exact(enc):
  e, params, apply, x, _ = enc
  base = apply(params, x)
  s = 8
  changed = np.abs(np.asarray(apply(params, x.at[:, s].add(2.0)) - base)).max(axis=(0, 2))
  hit = np.nonzero(changed > 1e-6)[0]
  assert hit.min() == s - e.lookahead and hit.max() == s + e.receptive_past


def test_buffer_with_enough_past_matches_whole_sequence(enc):
  e, params, apply, x, _ = enc
  full = apply(params, x)
  start = 3
  lo = start + e.receptive_past + e.lookahead  # the first exact frame of a buffer at `start`
  hi = T - 4 - e.lookahead  # buffer ends at T - 4
  part = apply(params, x[:, start:T - 4])
  np.testing.assert_allclose(part[:, lo - start:hi - start], full[:, lo:hi], atol=1e-5)


def test_invalid_prefix_acts_like_sequence_start(enc):
  _, params, apply, x, _ = enc
  junk = jax.random.normal(jax.random.key(9), (2, 5, 4, 80))
  valid = jnp.concatenate([jnp.zeros((2, 5), bool), jnp.ones((2, T), bool)], axis=1)
  with_prefix = apply(params, jnp.concatenate([junk, x], axis=1), valid)
  np.testing.assert_allclose(with_prefix[:, 5:], apply(params, x), atol=1e-5)


def test_every_parameter_has_known_logical_names(enc):
  *_, variables = enc
  known = {name for name, _ in LOGICAL_AXIS_RULES}
  leaves = jax.tree.leaves(variables, is_leaf=lambda v: isinstance(v, nn.Partitioned))
  assert leaves and all(isinstance(v, nn.Partitioned) for v in leaves)
  for v in leaves:
    assert set(v.names) <= known and len(v.names) == v.value.ndim


def test_lookahead_beyond_receptive_field_raises():
  e = AudioEncoder(width=8, layers=0, heads=2, convs=1, kernel=2, lookahead=3)
  with pytest.raises(ValueError, match="audio_lookahead"):
    e.init(jax.random.key(0), jnp.zeros((1, 4, 4, 80)))
