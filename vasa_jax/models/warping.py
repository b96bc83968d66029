"""3D warps of the appearance volume: rigid head pose plus a learned residual flow.

Coordinates follow `grid_sample` with `align_corners=True`: a sampling point is `(x, y, z)` in
[-1, 1], x along W (image right), y along H (image down), z along D (depth); -1 and +1 are the
centres of the first and last voxels. Sampling outside the volume reads zeros.

A warp is a sampling grid: `out[p] = volume[grid[p]]`. With the pose transform
`T(p) = s * R @ p + t` (`t = (tx, ty, 0)`, `s = exp(log_scale)`):
- `rigid_grid(z_pose, ..., inverse=False)` poses a canonical volume: `grid = T^-1(p)`, so the
  content at canonical `q` appears at `T(q)`.
- `rigid_grid(z_pose, ..., inverse=True)` undoes a pose (posed -> canonical): `grid = T(q)`.
The face decoder adds the `FlowGenerator` residual (non-rigid, from z_dyn and z_id) to these grids.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vasa_jax.models import layers

Dtype = Any


def rotation_matrix(yaw: jax.Array, pitch: jax.Array, roll: jax.Array) -> jax.Array:
  """Rotation `R = Rx(pitch) @ Ry(yaw) @ Rz(roll)` (radians; yaw about the vertical y axis).

  Positive yaw turns +x toward -z; positive pitch turns +y toward +z; positive roll turns +x
  toward +y.

  Args:
    yaw, pitch, roll: arrays of the same shape `S`.
  Returns:
    (*S, 3, 3) float32 rotation matrices.
  """
  yaw, pitch, roll = (jnp.asarray(a, jnp.float32) for a in (yaw, pitch, roll))
  one, zero = jnp.ones_like(yaw), jnp.zeros_like(yaw)

  def mat(rows):
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)

  cy, sy = jnp.cos(yaw), jnp.sin(yaw)
  cp, sp = jnp.cos(pitch), jnp.sin(pitch)
  cr, sr = jnp.cos(roll), jnp.sin(roll)
  r_yaw = mat([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
  r_pitch = mat([[one, zero, zero], [zero, cp, -sp], [zero, sp, cp]])
  r_roll = mat([[cr, -sr, zero], [sr, cr, zero], [zero, zero, one]])
  return r_pitch @ r_yaw @ r_roll


def identity_grid(d: int, h: int, w: int) -> jax.Array:
  """(D, H, W, 3) float32 sampling grid that reproduces the volume; last axis (x, y, z)."""
  z, y, x = jnp.meshgrid(jnp.linspace(-1.0, 1.0, d), jnp.linspace(-1.0, 1.0, h),
                         jnp.linspace(-1.0, 1.0, w), indexing="ij")
  return jnp.stack([x, y, z], axis=-1)


def rigid_grid(z_pose: jax.Array, d: int, h: int, w: int, inverse: bool = False) -> jax.Array:
  """Sampling grid of the rigid pose transform (see the module docstring for the direction).

  Args:
    z_pose: (B, 6) yaw, pitch, roll (radians), tx, ty, log scale.
    d, h, w: output volume size.
    inverse: False poses a canonical volume; True brings a posed volume to canonical space.
  Returns:
    (B, D, H, W, 3) float32 grid of (x, y, z) in normalised coordinates.
  """
  z_pose = z_pose.astype(jnp.float32)
  rot = rotation_matrix(z_pose[:, 0], z_pose[:, 1], z_pose[:, 2])  # (B, 3, 3)
  t = jnp.stack([z_pose[:, 3], z_pose[:, 4], jnp.zeros_like(z_pose[:, 3])], axis=-1)  # (B, 3)
  s = jnp.exp(z_pose[:, 5])[:, None, None]  # (B, 1, 1)
  p = identity_grid(d, h, w).reshape(-1, 3)  # (N, 3)
  if inverse:
    grid = s * jnp.einsum("bij,nj->bni", rot, p) + t[:, None]  # T(q)
  else:
    grid = jnp.einsum("bji,bnj->bni", rot, p[None] - t[:, None]) / s  # R^T (p - t) / s
  return grid.reshape(-1, d, h, w, 3)


def trilinear_sample(volume: jax.Array, coords: jax.Array) -> jax.Array:
  """Trilinear interpolation of `volume` at `coords`, zero outside (differentiable in both).

  Args:
    volume: (B, D, H, W, C).
    coords: (B, D', H', W', 3) sampling points (x, y, z) in [-1, 1] (align_corners=True).
  Returns:
    (B, D', H', W', C) in the volume's dtype.
  """
  return jax.vmap(_sample_one)(volume, coords)


def _sample_one(vol: jax.Array, coords: jax.Array) -> jax.Array:
  d, h, w, c = vol.shape
  out_shape = coords.shape[:-1]
  pts = coords.reshape(-1, 3).astype(jnp.float32)  # (N, 3)
  # Continuous voxel indices; coordinates stay float32 even under bf16 compute.
  fx = (pts[:, 0] + 1.0) * 0.5 * (w - 1)
  fy = (pts[:, 1] + 1.0) * 0.5 * (h - 1)
  fz = (pts[:, 2] + 1.0) * 0.5 * (d - 1)
  x0, y0, z0 = jnp.floor(fx), jnp.floor(fy), jnp.floor(fz)
  ax, ay, az = fx - x0, fy - y0, fz - z0  # weights of the upper corner
  idx, wts = [], []
  for dz in ((0,) if d == 1 else (0, 1)):  # one slice (2D images): 4 corners, not 8
    for dy in (0, 1):
      for dx in (0, 1):
        xi, yi, zi = x0 + dx, y0 + dy, z0 + dz
        wgt = ((ax if dx else 1 - ax) * (ay if dy else 1 - ay) * (az if dz else 1 - az))
        inside = ((xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
                  & (zi >= 0) & (zi <= d - 1))
        wts.append(jnp.where(inside, wgt, 0.0))
        xi = jnp.clip(xi, 0, w - 1).astype(jnp.int32)
        yi = jnp.clip(yi, 0, h - 1).astype(jnp.int32)
        zi = jnp.clip(zi, 0, d - 1).astype(jnp.int32)
        idx.append((zi * h + yi) * w + xi)
  idx = jnp.stack(idx, axis=0)  # (8, N)
  wts = jnp.stack(wts, axis=0)  # (8, N)
  corners = jnp.take(vol.reshape(-1, c), idx, axis=0)  # (8, N, C): one gather for all corners
  out = jnp.einsum("kn,knc->nc", wts.astype(vol.dtype), corners)
  return out.reshape(*out_shape, c)


def warp_grid(z_pose: jax.Array, flow: jax.Array | None, shape: tuple[int, int, int],
              inverse: bool) -> jax.Array:
  """Rigid grid plus the residual flow: (B, D, H, W, 3) sampling points (see `warp_volume`)."""
  grid = rigid_grid(z_pose, *shape, inverse=inverse)
  if flow is not None:
    grid = grid + flow.astype(jnp.float32)
  return grid


def bilinear_sample(image: jax.Array, coords: jax.Array) -> jax.Array:
  """Bilinear interpolation of images at `coords` (x, y) in [-1, 1], zero outside.

  Args:
    image: (B, H, W, C).
    coords: (B, H', W', 2).
  Returns:
    (B, H', W', C) in the image's dtype.
  """
  xyz = jnp.concatenate([coords, jnp.zeros_like(coords[..., :1])], axis=-1)  # z = 0: one slice
  return trilinear_sample(image[:, None], xyz[:, None])[:, 0]


def warp_volume(volume: jax.Array, z_pose: jax.Array, flow: jax.Array | None,
                inverse: bool) -> jax.Array:
  """Rigid pose warp plus an optional residual flow.

  Args:
    volume: (B, D, H, W, C).
    z_pose: (B, 6).
    flow: (B, D, H, W, 3) offsets added to the rigid grid (normalised units), or None.
    inverse: see `rigid_grid`.
  Returns:
    (B, D, H, W, C) warped volume.
  """
  return trilinear_sample(volume, warp_grid(z_pose, flow, volume.shape[1:4], inverse))


class FlowGenerator(nn.Module):
  """Residual 3D flow from a code (z_dyn and z_id): MegaPortraits' non-rigid warp generator.

  The code is mapped to a coarse (<=4, <=4, <=4) volume, refined by 3D residual blocks with
  adaptive GroupNorm (conditioned on the code) and 2x upsampling up to (D, H, W). The output
  convolution starts at zero, so training starts from the pure rigid warp.

  Attributes:
    width: channels at the coarsest level (halved at each upsampling, at least 8).
    groups: GroupNorm groups.
  """
  width: int
  groups: int = 8
  weight_std: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, code: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
    """Args: code (B, Dc); shape (D, H, W). Returns the flow (B, D, H, W, 3) float32."""
    d, h, w = shape
    d0, h0, w0 = min(d, 4), min(h, 4), min(w, 4)
    n_up = _log2_exact(h // h0, "H")
    if _log2_exact(d // d0, "D") > n_up or _log2_exact(w // w0, "W") != n_up:
      raise ValueError(f"FlowGenerator needs D <= H == W powers of two, got {shape}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    code = code.astype(self.dtype)
    code = nn.silu(layers.dense(self.width, name="code_in", **kw)(code))
    code = layers.dense(self.width, name="code_out", **kw)(code)  # (B, width)
    ch = self.width
    x = layers.dense(d0 * h0 * w0 * ch, name="to_volume", **kw)(code)
    x = x.reshape(-1, d0, h0, w0, ch)  # (B, d0, h0, w0, width)
    x = layers.ResBlock3D(ch, self.groups, weight_std=self.weight_std, name="block0", **kw)(
        x, code)
    for i in range(n_up):
      ch = max(self.width // 2 ** (i + 1), 8)
      x = layers.ResBlock3D(ch, self.groups, up=True, depth_sampling=x.shape[1] < d,
                            weight_std=self.weight_std, name=f"up{i}", **kw)(x, code)
    x = nn.silu(layers.AdaptiveGroupNorm3D(self.groups, name="norm_out", **kw)(x, code))
    flow = layers.Conv(3, (3, 3, 3), zero_init=True, name="to_flow", **kw)(x)
    return flow.astype(jnp.float32)  # (B, D, H, W, 3)


def _log2_exact(n: int, what: str) -> int:
  k = max(n, 1).bit_length() - 1
  if 2 ** k != n:
    raise ValueError(f"FlowGenerator: {what} ratio {n} is not a power of two")
  return k
