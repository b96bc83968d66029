"""Face encoder: appearance volume V_app and identity z_id; head pose z_pose and dynamics z_dyn.

Appearance (MegaPortraits E_app): patchify stem -> 2D residual blocks with average pooling down to
`app_size` -> 1x1 conv to C*D channels -> reshape channels into depth -> a 3D residual block.
Identity: pooled 2D trunk features -> z_id. Motion: its own small 2D trunk -> explicit pose
(bounded angles, translation, log scale) and the holistic dynamics code z_dyn.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vasa_jax.models import layers

Dtype = Any

# tanh bounds of z_pose: yaw, pitch, roll (radians), tx, ty (normalised units), log scale.
POSE_BOUNDS = (math.pi / 2, math.pi / 3, math.pi / 3, 1.0, 1.0, 0.5)


def _check_image(img: jax.Array, cfg: layers.FaceConfig) -> None:
  r = cfg.resolution
  if img.ndim != 4 or img.shape[1:] != (r, r, 3):
    raise ValueError(f"FaceEncoder expects images (B, {r}, {r}, 3) in [-1, 1] "
                     f"(config.model.resolution={r}), got {img.shape}")


class AppearanceTrunk(nn.Module):
  """2D trunk: (B, R, R, 3) -> (B, S, S, width) with S = app_size."""
  cfg: layers.FaceConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, img: jax.Array) -> jax.Array:
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.space_to_depth(img.astype(self.dtype), c.stem_factor)  # (B, R/f, R/f, 3f^2)
    x = layers.Conv(c.enc_width, (3, 3), name="stem", **kw)(x)
    n_down = int(math.log2(x.shape[1] // c.app_size))
    for i in range(n_down):
      x = layers.ResBlock2D(c.enc_width * 2 ** (i + 1), c.groups, down=True,
                            weight_std=c.weight_std, name=f"down{i}", **kw)(x)
    width = c.enc_width * 2 ** n_down
    return layers.ResBlock2D(width, c.groups, weight_std=c.weight_std, name="block_out", **kw)(x)


class VolumeHead(nn.Module):
  """2D features (B, S, S, W) -> V_app (B, D, S, S, C): channels folded into depth, 3D block."""
  cfg: layers.FaceConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feats: jax.Array) -> jax.Array:
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, s = feats.shape[0], feats.shape[1]
    x = nn.silu(layers.group_norm(feats.shape[-1], c.groups, name="norm", **kw)(feats))
    x = layers.Conv(c.app_depth * c.app_channels, (1, 1), name="to_volume", **kw)(x)
    x = x.reshape(b, s, s, c.app_depth, c.app_channels).transpose(0, 3, 1, 2, 4)  # (B,D,S,S,C)
    return layers.ResBlock3D(c.app_channels, c.groups, weight_std=c.weight_std,
                             name="block3d", **kw)(x)


class IdentityHead(nn.Module):
  """2D features (B, S, S, W) -> z_id (B, z_id_dim): one pooled residual block, mean, linear."""
  cfg: layers.FaceConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feats: jax.Array) -> jax.Array:
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.ResBlock2D(feats.shape[-1], c.groups, down=True, weight_std=c.weight_std,
                          name="block", **kw)(feats)
    x = nn.silu(layers.group_norm(x.shape[-1], c.groups, name="norm", **kw)(x))
    x = x.mean(axis=(1, 2))  # (B, W)
    return layers.dense(c.z_id_dim, name="to_z_id", **kw)(x).astype(jnp.float32)


class MotionEncoder(nn.Module):
  """Image -> (z_pose (B, 6), z_dyn (B, z_dyn_dim)); a separate trunk down to 8x8 then pooling.

  The pose head starts at zero (frontal, centred, unit scale) and each component is a bounded
  tanh (`POSE_BOUNDS`), so z_pose stays interpretable and the rigid warp stays well-posed.
  """
  cfg: layers.FaceConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, img: jax.Array) -> tuple[jax.Array, jax.Array]:
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # Pose and expression need less resolution than appearance: a 2x coarser patchify stem.
    x = layers.space_to_depth(img.astype(self.dtype), 2 * c.stem_factor)
    x = layers.Conv(c.enc_width, (3, 3), name="stem", **kw)(x)
    n_down = max(int(math.log2(x.shape[1] // 8)), 0)
    for i in range(n_down):
      x = layers.ResBlock2D(c.enc_width * min(2 ** (i + 1), 8), c.groups, down=True,
                            weight_std=c.weight_std, name=f"down{i}", **kw)(x)
    x = nn.silu(layers.group_norm(x.shape[-1], c.groups, name="norm", **kw)(x))
    x = x.mean(axis=(1, 2))  # (B, W)
    hidden = 2 * c.enc_width * min(2 ** n_down, 8)
    x = nn.silu(layers.dense(hidden, name="hidden", **kw)(x))
    raw_pose = layers.dense(6, zero_init=True, name="to_pose", **kw)(x).astype(jnp.float32)
    z_pose = jnp.tanh(raw_pose) * jnp.asarray(POSE_BOUNDS, jnp.float32)  # (B, 6)
    z_dyn = layers.dense(c.z_dyn_dim, name="to_z_dyn", **kw)(x).astype(jnp.float32)
    return z_pose, z_dyn


class FaceEncoder(nn.Module):
  """Encoders of the four latent factors.

  Attributes:
    config: `config.model` (ConfigDict) or a `layers.FaceConfig`.
  """
  config: Any
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.cfg = layers.as_face_config(self.config)
    kw = dict(cfg=self.cfg, dtype=self.dtype, param_dtype=self.param_dtype)
    self.app_trunk = AppearanceTrunk(**kw)
    self.volume_head = VolumeHead(**kw)
    self.identity_head = IdentityHead(**kw)
    self.motion = MotionEncoder(**kw)

  def encode_appearance(self, img: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Args: img (B, R, R, 3) in [-1, 1]. Returns v_app (B, D, S, S, C), z_id (B, z_id_dim)."""
    _check_image(img, self.cfg)
    feats = self.app_trunk(img)  # (B, S, S, W)
    return self.volume_head(feats), self.identity_head(feats)

  def encode_identity(self, img: jax.Array) -> jax.Array:
    """z_id only (skips the 3D volume head); used by the cross-identity loss."""
    _check_image(img, self.cfg)
    return self.identity_head(self.app_trunk(img))

  def encode_motion(self, img: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Args: img (B, R, R, 3) in [-1, 1]. Returns z_pose (B, 6), z_dyn (B, z_dyn_dim)."""
    _check_image(img, self.cfg)
    return self.motion(img)

  def __call__(self, img: jax.Array) -> dict[str, jax.Array]:
    v_app, z_id = self.encode_appearance(img)
    z_pose, z_dyn = self.encode_motion(img)
    return dict(v_app=v_app, z_id=z_id, z_pose=z_pose, z_dyn=z_dyn)
