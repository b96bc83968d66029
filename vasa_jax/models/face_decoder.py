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
  extra: int = 0  # channels of a second, zero-initialised head (the source-warp controls)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, v: jax.Array):
    """Args: v (B, D, S, S, Cv).

    Returns:
      img (B, R, R, 3) float32 in [-1, 1]; with `extra`, (img, extra (B, R, R, extra) float32).
    """
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
    rgb = layers.Conv(3 * 4, (3, 3), name="to_rgb", **kw)(x)  # (B, R/2, R/2, 12)
    img = jnp.tanh(layers.depth_to_space(rgb, 2).astype(jnp.float32))
    if not self.extra:
      return img
    e = layers.Conv(self.extra * 4, (3, 3), zero_init=True, name="to_extra", **kw)(x)
    return img, layers.depth_to_space(e, 2).astype(jnp.float32)


def g3d_width(cfg: layers.FaceConfig) -> int:
  """Channels of the canonical volume v_can."""
  return max(cfg.app_channels, 16)


def flow_width(cfg: layers.FaceConfig) -> int:
  """Channels at the coarsest level of the warp generators."""
  return max(cfg.dec_width // 2, 16)


# Source warp: the occlusion mask starts at sigmoid(3) = 0.95, i.e. (almost) the warped source.
_MASK_BIAS = 3.0


class FaceDecoder(nn.Module):
  """D(v_app, z_id, z_pose_src, z_dyn_src, z_pose_tgt, z_dyn_tgt) -> image.

  With `config.source_warp` the canonical volume also carries, per voxel, the source-volume
  coordinates it was sampled from. The target warp moves them with the features, so each target
  voxel knows where in the source it came from; a learned depth attention projects them to a 2D
  flow (target pixel -> source pixel), which warps the source image. G2D renders the rest and an
  occlusion mask blends the two: with zero flows and the same pose the output is the source
  image, so training starts at a sharp copy and only has to learn the motion.

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
    # Source warp: mask logit and a residual 2D flow (x, y) at full resolution.
    self.g2d = G2D(c, extra=3 if c.source_warp else 0, **kw)
    if c.source_warp:
      self.depth_logits = layers.Conv(1, (1, 1, 1), zero_init=True, name="depth_logits", **kw)

  def canonicalize(self, v_app: jax.Array, z_id: jax.Array, z_pose_src: jax.Array,
                   z_dyn_src: jax.Array, src_img: jax.Array | None = None):
    """Source volume -> canonical volume.

    Args:
      v_app: (B, D, S, S, C); z_id: (B, Zi); z_pose_src: (B, 6); z_dyn_src: (B, Zd);
      src_img: (B, R, R, 3) in [-1, 1], the source image (needed with `source_warp`).
    Returns:
      v_can (B, D, S, S, Cv): the inverse source pose plus the flow from (z_dyn_src, z_id), G3D.
      With `source_warp`, a dict {"v": v_can, "coords": (B, D, S, S, 4) float32, "image":
      src_img}; `render` takes either form (map over the leaves to broadcast it).
    """
    shape = v_app.shape[1:4]
    flow = self.flow_src(jnp.concatenate([z_dyn_src, z_id], axis=-1), shape)  # (B, D, S, S, 3)
    grid = warping.warp_grid(z_pose_src, flow, shape, inverse=True)
    v = self.g3d(warping.trilinear_sample(v_app.astype(self.dtype), grid))
    if not self.cfg.source_warp:
      return v
    if src_img is None:
      raise ValueError("config.model.source_warp=True: canonicalize needs src_img")
    # Coordinates stay float32 under bf16 compute: they address source pixels.
    ones = jnp.ones(grid.shape[:-1] + (1,), jnp.float32)
    coords = jnp.concatenate([grid, ones], axis=-1)  # (B, D, S, S, 4)
    return {"v": v, "coords": coords, "image": src_img.astype(jnp.float32)}

  def render(self, v_can, z_id: jax.Array, z_pose_tgt: jax.Array,
             z_dyn_tgt: jax.Array) -> jax.Array:
    """Canonical volume -> image with the target pose and dynamics.

    Args:
      v_can: from `canonicalize`; z_id: (B, Zi) of the source; z_pose_tgt: (B, 6);
      z_dyn_tgt: (B, Zd).
    Returns:
      img (B, R, R, 3) float32 in [-1, 1].
    """
    warp_source = self.cfg.source_warp  # v_can is then canonicalize's dict
    v = v_can["v"] if warp_source else v_can
    shape = v.shape[1:4]
    flow = self.flow_tgt(jnp.concatenate([z_dyn_tgt, z_id], axis=-1), shape)
    grid = warping.warp_grid(z_pose_tgt, flow, shape, inverse=False)
    feats = warping.trilinear_sample(v, grid)  # (B, D, S, S, Cv)
    if not warp_source:
      return self.g2d(feats)
    rgb, extra = self.g2d(feats)
    src_xy = self._project_coords(feats, warping.trilinear_sample(v_can["coords"], grid))
    r = rgb.shape[1]
    b, s = src_xy.shape[0], src_xy.shape[1]
    ident_s = warping.identity_grid(1, s, s)[0, ..., :2]  # (S, S, 2)
    ident_r = warping.identity_grid(1, r, r)[0, ..., :2]  # (R, R, 2)
    # Upsample the displacement, not the coordinates: zero motion stays an exact copy.
    disp = jax.image.resize(src_xy - ident_s, (b, r, r, 2), "linear")
    coords = ident_r + disp + extra[..., 1:3]  # (B, R, R, 2)
    warped = warping.bilinear_sample(v_can["image"], coords)  # (B, R, R, 3)
    alpha = jax.nn.sigmoid(extra[..., :1] + _MASK_BIAS)
    return alpha * warped + (1.0 - alpha) * rgb

  def _project_coords(self, feats: jax.Array, coords: jax.Array) -> jax.Array:
    """Target-space voxels -> one source (x, y) per pixel, (B, S, S, 2) float32.

    Args:
      feats: (B, D, S, S, Cv) warped features (they choose which depth is seen).
      coords: (B, D, S, S, 4) warped source coordinates; the last channel is the share of the
        sample that fell inside the volume (zero padding dilutes the coordinates).
    """
    inside = coords[..., 3:]  # (B, D, S, S, 1)
    xy = coords[..., :2] / jnp.maximum(inside, 1e-3)
    logits = self.depth_logits(feats).astype(jnp.float32) + jnp.log(inside + 1e-4)
    w = jax.nn.softmax(logits, axis=1)  # over depth
    return jnp.sum(w * xy, axis=1)

  def __call__(self, v_app, z_id, z_pose_src, z_dyn_src, z_pose_tgt, z_dyn_tgt,
               src_img=None) -> jax.Array:
    """Full decode (see `canonicalize` and `render`). Returns (B, R, R, 3) in [-1, 1]."""
    v_can = self.canonicalize(v_app, z_id, z_pose_src, z_dyn_src, src_img)
    return self.render(v_can, z_id, z_pose_tgt, z_dyn_tgt)
