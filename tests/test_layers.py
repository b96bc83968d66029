"""Layers: residual blocks, adaptive GroupNorm, the 3D conv, patchify, logical names."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import LOGICAL_AXIS_RULES
from vasa_jax.models import layers

_RULE_NAMES = {r[0] for r in LOGICAL_AXIS_RULES}


def _boxes(variables):
  return jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def assert_all_named(variables):
  leaves = _boxes(variables)
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), f"unnamed parameter of shape {leaf.shape}"
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) <= _RULE_NAMES, leaf.names


@pytest.mark.parametrize("kw,out_shape", [
    (dict(features=8), (2, 8, 8, 8)),
    (dict(features=16, down=True), (2, 4, 4, 16)),
    (dict(features=4, up=True), (2, 16, 16, 4)),
])
def test_resblock2d_shapes_and_names(kw, out_shape):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  block = layers.ResBlock2D(groups=4, **kw)
  variables = block.init(jax.random.key(1, impl="rbg"), x)
  assert_all_named(variables)
  y = block.apply(variables, x)
  assert y.shape == out_shape and bool(jnp.all(jnp.isfinite(y)))


def test_resblock3d_sampling_and_code():
  x = jax.random.normal(jax.random.key(0), (2, 2, 8, 8, 8))
  code = jax.random.normal(jax.random.key(1), (2, 5))
  up = layers.ResBlock3D(4, groups=4, up=True, depth_sampling=True)
  v = up.init(jax.random.key(2, impl="rbg"), x, code)
  assert up.apply(v, x, code).shape == (2, 4, 16, 16, 4)
  assert_all_named(v)
  down = layers.ResBlock3D(8, groups=4, down=True)
  v = down.init(jax.random.key(2, impl="rbg"), x)
  assert down.apply(v, x).shape == (2, 2, 4, 4, 8)  # depth kept


def test_adaptive_group_norm_starts_as_plain_norm_and_follows_code():
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 8)) * 3 + 1
  code = jax.random.normal(jax.random.key(1), (2, 6))
  m = layers.AdaptiveGroupNorm3D(groups=2)
  v = m.init(jax.random.key(2, impl="rbg"), x, code)
  assert_all_named(v)
  y = m.apply(v, x, code)
  g = x.reshape(2, 3, 4, 4, 2, 4)
  ref = ((g - g.mean(axis=(1, 2, 3, 5), keepdims=True))
         / jnp.sqrt(g.var(axis=(1, 2, 3, 5), keepdims=True) + 1e-5)).reshape(x.shape)
  np.testing.assert_allclose(y, ref, atol=1e-4)
  v2 = jax.tree.map(lambda p: p + 0.1, nn.unbox(v))
  y2 = m.apply(v2, x, code)
  assert float(jnp.abs(y2 - y).max()) > 1e-2
  assert float(jnp.abs(y2[0] - y2[1]).max()) > 0  # per-example modulation


def test_conv3d_via_2d_matches_lax_conv3d():
  x = jax.random.normal(jax.random.key(0), (2, 4, 6, 6, 3))
  k = jax.random.normal(jax.random.key(1), (3, 3, 3, 3, 5))
  ref = jax.lax.conv_general_dilated(x, k, (1, 1, 1), "SAME",
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  np.testing.assert_allclose(layers.conv3d_via_2d(x, k), ref, rtol=1e-4, atol=1e-4)
  k1 = jax.random.normal(jax.random.key(2), (1, 1, 1, 3, 5))
  np.testing.assert_allclose(layers.conv3d_via_2d(x, k1),
                             jnp.einsum("bdhwi,io->bdhwo", x, k1[0, 0, 0]), rtol=1e-4, atol=1e-4)


def test_space_to_depth_roundtrip_and_sampling():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  s = layers.space_to_depth(x, 2)
  assert s.shape == (2, 4, 4, 12)
  np.testing.assert_array_equal(layers.depth_to_space(s, 2), x)
  assert layers.upsample(layers.downsample(x)).shape == x.shape


def test_weight_standardisation_is_scale_invariant():
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 4))
  conv = layers.Conv(6, (3, 3), weight_std=True, use_bias=False)
  v = nn.unbox(conv.init(jax.random.key(1, impl="rbg"), x))
  y = conv.apply(v, x)
  y10 = conv.apply(jax.tree.map(lambda p: 10 * p + 0.3, v), x)
  np.testing.assert_allclose(y, y10, rtol=1e-3, atol=1e-4)


def test_num_groups_divides():
  assert layers.num_groups(12, 8) == 4
  assert layers.num_groups(96, 8) == 8
  assert layers.num_groups(3, 8) == 1
