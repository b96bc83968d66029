"""Warps: rotations, identity sampling, rigid motion of a blob, zero padding, gradients, flows."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax.models import warping


def _blob(n=9, at=(6, 4, 4)):
  """(1, n, n, n, 1) volume with one bright voxel at (x, y, z) indices `at`."""
  v = np.zeros((1, n, n, n, 1), np.float32)
  x, y, z = at
  v[0, z, y, x, 0] = 1.0
  return jnp.asarray(v)


def _argmax_xyz(v):
  z, y, x = np.unravel_index(int(jnp.argmax(v[0, ..., 0])), v.shape[1:4])
  return int(x), int(y), int(z)


def _pose(yaw=0.0, pitch=0.0, roll=0.0, tx=0.0, ty=0.0, log_s=0.0):
  return jnp.asarray([[yaw, pitch, roll, tx, ty, log_s]], jnp.float32)


def test_rotation_matrix_is_a_rotation():
  r = warping.rotation_matrix(jnp.asarray([0.3, -1.0]), jnp.asarray([0.2, 0.5]),
                              jnp.asarray([-0.4, 1.2]))
  assert r.shape == (2, 3, 3)
  np.testing.assert_allclose(r @ jnp.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), (2, 3, 3)),
                             atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.det(r), [1.0, 1.0], atol=1e-6)
  ry = warping.rotation_matrix(math.pi / 2, 0.0, 0.0)
  np.testing.assert_allclose(ry @ jnp.asarray([1.0, 0, 0]), [0, 0, -1], atol=1e-6)


def test_identity_warp_reproduces_volume():
  vol = jax.random.normal(jax.random.key(0), (2, 4, 16, 16, 8))
  zero = jnp.zeros((2, 6))
  for inverse in (False, True):
    grid = warping.rigid_grid(zero, 4, 16, 16, inverse=inverse)
    np.testing.assert_allclose(warping.trilinear_sample(vol, grid), vol, atol=1e-5)
  out = warping.warp_volume(vol, zero, jnp.zeros((2, 4, 16, 16, 3)), inverse=False)
  np.testing.assert_allclose(out, vol, atol=1e-5)


def test_yaw_moves_blob_from_plus_x_to_minus_z():
  vol = _blob()  # x = +0.5 (index 6), centre in y and z; grid step 0.25
  posed = warping.warp_volume(vol, _pose(yaw=math.pi / 2), None, inverse=False)
  assert _argmax_xyz(posed) == (4, 4, 2)  # z = -0.5
  np.testing.assert_allclose(float(posed.max()), 1.0, atol=1e-5)
  back = warping.warp_volume(posed, _pose(yaw=math.pi / 2), None, inverse=True)
  assert _argmax_xyz(back) == (6, 4, 4)
  np.testing.assert_allclose(back, vol, atol=1e-5)
  half = warping.warp_volume(vol, _pose(yaw=math.pi / 4), None, inverse=False)
  x, _, z = _argmax_xyz(half)  # 0.5 * (cos 45, -sin 45) = (0.354, -0.354) -> voxels 5.4, 2.6
  assert (x, z) in {(5, 3), (6, 3), (5, 2)}


def test_translation_and_scale():
  vol = _blob(at=(5, 4, 4))  # x = +0.25
  moved = warping.warp_volume(vol, _pose(tx=0.5, ty=-0.25), None, inverse=False)
  assert _argmax_xyz(moved) == (7, 3, 4)
  scaled = warping.warp_volume(vol, _pose(log_s=math.log(2.0)), None, inverse=False)
  assert _argmax_xyz(scaled) == (6, 4, 4)  # x doubles to +0.5


def test_trilinear_interpolates_and_pads_with_zeros():
  vol = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(1, 2, 3, 4, 1) + 1
  # Midway between x indices 1 and 2 at (y, z) = (0, 0): the average of both voxels.
  x_mid = -1 + 2 * 1.5 / 3
  # Far outside reads 0; half a voxel past the edge blends the edge voxel with zero padding
  # (grid_sample's padding_mode="zeros"); the last corner reads the last voxel.
  pts = jnp.asarray([[x_mid, -1, -1], [3.0, 0, 0], [0, 0, -3.5], [1 + 1 / 3, -1, -1],
                     [1.0, 1.0, 1.0]], jnp.float32)
  out = warping.trilinear_sample(vol, pts.reshape(1, 1, 1, 5, 3))[0, 0, 0, :, 0]
  np.testing.assert_allclose(out, [2.5, 0.0, 0.0, 2.0, 24.0], atol=1e-5)


def test_trilinear_gradients_are_finite():
  vol = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 3))
  coords = jax.random.uniform(jax.random.key(1), (2, 4, 8, 8, 3), minval=-1.3, maxval=1.3)
  coords = coords.at[0, 0, 0, 0].set(jnp.asarray([1.0, -1.0, 1.0]))  # exactly on the border
  w = jax.random.normal(jax.random.key(2), (2, 4, 8, 8, 3))
  loss = lambda v, c: jnp.sum(warping.trilinear_sample(v, c) * w)  # noqa: E731
  gv, gc = jax.jit(jax.grad(loss, argnums=(0, 1)))(vol, coords)
  assert bool(jnp.all(jnp.isfinite(gv))) and bool(jnp.all(jnp.isfinite(gc)))
  assert float(jnp.abs(gc).sum()) > 0
  gp = jax.grad(lambda p: jnp.sum(warping.warp_volume(vol, p, None, False) * w))(
      jnp.full((2, 6), 0.1))
  assert bool(jnp.all(jnp.isfinite(gp))) and float(jnp.abs(gp).sum()) > 0


def test_flow_generator_starts_at_zero_and_learns():
  gen = warping.FlowGenerator(width=16, groups=4)
  code = jax.random.normal(jax.random.key(0), (2, 10))
  v = gen.init(jax.random.key(1, impl="rbg"), code, (4, 16, 16))
  flow = gen.apply(v, code, (4, 16, 16))
  assert flow.shape == (2, 4, 16, 16, 3) and flow.dtype == jnp.float32
  np.testing.assert_array_equal(flow, 0.0)
  g = jax.jit(jax.grad(lambda p: jnp.sum(gen.apply(p, code, (4, 16, 16)) * jnp.arange(3.0))))(v)
  assert float(jnp.abs(g["params"]["to_flow"]["kernel"].value).sum()) > 0
