"""Face decoder: source -> canonical warp, G3D, canonical -> target warp, projection, G2D.

`canonicalize` runs once per portrait (inference encodes the portrait once); `render` runs per
frame and never redoes the source warp.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vasa_jax.models import layers
from vasa_jax.models import warping

Dtype = Any


class G3D(nn.Module):
  """Small 3D U-Net on the canonical volume (blocks at half H/W, 1x1x1 skip at full size)."""
  cfg: layers.FaceConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, v: jax.Array) -> jax.Array:
    """Args: v (B, D, S, S, C). Returns (B, D, S, S, width) with width = max(C, 16)."""
    c = self.cfg
    kw = dict(groups=c.groups, weight_std=c.weight_std, dtype=self.dtype,
              param_dtype=self.param_dtype)
    # 3x3x3 convs at full volume size are the costliest ops of the whole model, so the U-Net
    # works at S/2 and full resolution only gets 1x1x1 convs (skip and output).
    ch = g3d_width(c)
    conv1 = lambda f, name: layers.Conv(f, (1, 1, 1), name=name, dtype=self.dtype,  # noqa: E731
                                        param_dtype=self.param_dtype)
    v = v.astype(self.dtype)
    skip = conv1(ch, "skip")(v)  # (B, D, S, S, ch)
    h = layers.ResBlock3D(2 * ch, name="enc", **kw)(layers.downsample(v))  # (B, D, S/2, S/2, 2ch)
    h = layers.ResBlock3D(2 * ch, name="mid", **kw)(h)
    h = nn.silu(layers.group_norm(2 * ch, c.groups, name="norm_out", dtype=self.dtype,
                                  param_dtype=self.param_dtype)(h))
    return skip + conv1(ch, "out")(layers.upsample(h))


class G2D(nn.Module):
  """Orthographic projection (depth folded into channels, 1x1 conv) and the 2D renderer.

  Residual blocks at S x S, upsampling blocks to R/2, then a pixel shuffle to R so no conv runs at
  full output resolution.
  """
  cfg: layers.FaceConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, v: jax.Array) -> jax.Array:
    """Args: v (B, D, S, S, Cv). Returns img (B, R, R, 3) float32 in [-1, 1]."""
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, d, s, _, cv = v.shape
    x = v.transpose(0, 2, 3, 1, 4).reshape(b, s, s, d * cv)  # (B, S, S, D*Cv)
    x = layers.Conv(c.dec_width, (1, 1), name="project", **kw)(x)
    for i in range(c.g2d_blocks):
      x = layers.ResBlock2D(c.dec_width, c.groups, weight_std=c.weight_std, name=f"block{i}",
                            **kw)(x)
    n_up = int(math.log2(c.resolution // s))
    for i in range(n_up - 1):
      x = layers.ResBlock2D(max(c.dec_width // 2 ** (i + 1), 16), c.groups, up=True,
                            weight_std=c.weight_std, name=f"up{i}", **kw)(x)
    x = nn.silu(layers.group_norm(x.shape[-1], c.groups, name="norm_out", **kw)(x))
    x = layers.Conv(3 * 4, (3, 3), name="to_rgb", **kw)(x)  # (B, R/2, R/2, 12)
    return jnp.tanh(layers.depth_to_space(x, 2).astype(jnp.float32))


def g3d_width(cfg: layers.FaceConfig) -> int:
  """Channels of the canonical volume v_can."""
  return max(cfg.app_channels, 16)


def flow_width(cfg: layers.FaceConfig) -> int:
  """Channels at the coarsest level of the warp generators."""
  return max(cfg.dec_width // 2, 16)


class FaceDecoder(nn.Module):
  """D(v_app, z_id, z_pose_src, z_dyn_src, z_pose_tgt, z_dyn_tgt) -> image.

  Attributes:
    config: `config.model` (ConfigDict) or a `layers.FaceConfig`.
  """
  config: Any
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.cfg = layers.as_face_config(self.config)
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.flow_src = warping.FlowGenerator(flow_width(c), c.groups, c.weight_std, **kw)
    self.flow_tgt = warping.FlowGenerator(flow_width(c), c.groups, c.weight_std, **kw)
    self.g3d = G3D(c, **kw)
    self.g2d = G2D(c, **kw)

  def canonicalize(self, v_app: jax.Array, z_id: jax.Array, z_pose_src: jax.Array,
                   z_dyn_src: jax.Array) -> jax.Array:
    """Source volume -> canonical volume.

    Args:
      v_app: (B, D, S, S, C); z_id: (B, Zi); z_pose_src: (B, 6); z_dyn_src: (B, Zd).
    Returns:
      v_can (B, D, S, S, Cv): the inverse source pose plus the flow from (z_dyn_src, z_id), G3D.
    """
    shape = v_app.shape[1:4]
    flow = self.flow_src(jnp.concatenate([z_dyn_src, z_id], axis=-1), shape)  # (B, D, S, S, 3)
    v = warping.warp_volume(v_app.astype(self.dtype), z_pose_src, flow, inverse=True)
    return self.g3d(v)

  def render(self, v_can: jax.Array, z_id: jax.Array, z_pose_tgt: jax.Array,
             z_dyn_tgt: jax.Array) -> jax.Array:
    """Canonical volume -> image with the target pose and dynamics.

    Args:
      v_can: (B, D, S, S, Cv) from `canonicalize`; z_id: (B, Zi) of the source;
      z_pose_tgt: (B, 6); z_dyn_tgt: (B, Zd).
    Returns:
      img (B, R, R, 3) float32 in [-1, 1].
    """
    shape = v_can.shape[1:4]
    flow = self.flow_tgt(jnp.concatenate([z_dyn_tgt, z_id], axis=-1), shape)
    v = warping.warp_volume(v_can, z_pose_tgt, flow, inverse=False)
    return self.g2d(v)

  def __call__(self, v_app, z_id, z_pose_src, z_dyn_src, z_pose_tgt, z_dyn_tgt) -> jax.Array:
    """Full decode (see `canonicalize` and `render`). Returns (B, R, R, 3) in [-1, 1]."""
    v_can = self.canonicalize(v_app, z_id, z_pose_src, z_dyn_src)
    return self.render(v_can, z_id, z_pose_tgt, z_dyn_tgt)
