"""FaceModel: the stage-1 face latent space (encoder + decoder), the only entry point that the
stage-1 task, motion extraction and inference use.

    model = FaceModel(config.model)
    params = model.init(rng, src, drv)["params"]
    lat = model.apply({"params": params}, portrait, method=FaceModel.encode)
    v_can = model.apply({"params": params}, lat["v_app"], lat["z_id"], lat["z_pose"],
                        lat["z_dyn"], portrait, method=FaceModel.canonicalize)  # once
    img = model.apply({"params": params}, v_can, lat["z_id"], z_pose_t, z_dyn_t,
                      method=FaceModel.render)                               # per frame
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vasa_jax.image_ops import to_float_image
from vasa_jax.models import layers, motion_labels
from vasa_jax.models.face_decoder import FaceDecoder
from vasa_jax.models.face_encoder import FaceEncoder

Dtype = Any


class FaceModel(nn.Module):
  """Encoder + decoder of the face latent space.

  Attributes:
    config: `config.model` (ConfigDict) or a `layers.FaceConfig`.
    dtype: compute dtype (bfloat16 for mixed precision); outputs images and codes in float32.
    param_dtype: parameter dtype (float32).
  """
  config: Any
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    cfg = layers.as_face_config(self.config)
    self.encoder = FaceEncoder(cfg, self.dtype, self.param_dtype)
    self.decoder = FaceDecoder(cfg, self.dtype, self.param_dtype)

  def encode(self, img: jax.Array) -> dict[str, jax.Array]:
    """Args: img (B, R, R, 3) in [-1, 1].

    Returns:
      dict v_app (B, D, S, S, C), z_id (B, Zi), z_pose (B, 6), z_dyn (B, Zd).
    """
    v_app, z_id = self.encoder.encode_appearance(img)
    z_pose, z_dyn = self.encoder.encode_motion(img)
    return dict(v_app=v_app, z_id=z_id, z_pose=z_pose, z_dyn=z_dyn)

  def encode_appearance(self, img: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(v_app, z_id) of `img` (B, R, R, 3)."""
    return self.encoder.encode_appearance(img)

  def encode_motion(self, img: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(z_pose (B, 6), z_dyn (B, Zd)) of `img` (B, R, R, 3)."""
    return self.encoder.encode_motion(img)

  def encode_identity(self, img: jax.Array) -> jax.Array:
    """z_id (B, Zi) of `img`, without building the volume."""
    return self.encoder.encode_identity(img)

  def canonicalize(self, v_app, z_id, z_pose_src, z_dyn_src, src_img=None):
    """Source latents -> canonical volume v_can (B, D, S, S, Cv), or with
    `config.source_warp` a dict that also holds the source image `src_img` (B, R, R, 3).
    See `FaceDecoder`."""
    return self.decoder.canonicalize(v_app, z_id, z_pose_src, z_dyn_src, src_img)

  def render(self, v_can, z_id, z_pose_tgt, z_dyn_tgt) -> jax.Array:
    """Canonical volume + target motion -> image (B, R, R, 3) in [-1, 1]."""
    return self.decoder.render(v_can, z_id, z_pose_tgt, z_dyn_tgt)

  def decode(self, v_app, z_id, z_pose_src, z_dyn_src, z_pose_tgt, z_dyn_tgt,
             src_img=None) -> jax.Array:
    """Both warps and the renderer in one call: (B, R, R, 3) in [-1, 1]. `src_img` (B, R, R, 3)
    is the image the source latents came from (needed with `config.source_warp`)."""
    return self.decoder(v_app, z_id, z_pose_src, z_dyn_src, z_pose_tgt, z_dyn_tgt, src_img)

  def reconstruct(self, src: jax.Array, drv: jax.Array) -> jax.Array:
    """Reenactment: the appearance of `src` with the pose and dynamics of `drv`.

    Args:
      src, drv: (B, R, R, 3) in [-1, 1].
    Returns:
      (B, R, R, 3) in [-1, 1].
    """
    s = self.encode(src)
    z_pose_d, z_dyn_d = self.encoder.encode_motion(drv)
    return self.decode(s["v_app"], s["z_id"], s["z_pose"], s["z_dyn"], z_pose_d, z_dyn_d, src)

  def __call__(self, src: jax.Array, drv: jax.Array) -> jax.Array:
    """`reconstruct`; used by `init` because it touches every submodule."""
    return self.reconstruct(src, drv)


def encode_portrait(model: FaceModel, params, img: jax.Array, labels: jax.Array,
                    valid: jax.Array):
  """A source portrait's canonical volume and latents, as in training: the face mesh's pose and
  mouth pin the labelled entries (`motion_labels`; rows are invalid without `label_motion`).

  Args:
    model, params: the stage 1 model and its parameters.
    img: (B, R, R, 3) uint8 crops; labels: (B, 5); valid: (B,).

  Returns:
    (v_can, z_id, z_pose, z_dyn) for `FaceModel.render`.
  """
  x = to_float_image(img)
  lat = model.apply({"params": params}, x, method=FaceModel.encode)
  z_pose, z_dyn = motion_labels.apply_motion_labels(lat["z_pose"], lat["z_dyn"], labels, valid)
  v_can = model.apply({"params": params}, lat["v_app"], lat["z_id"], z_pose, z_dyn, x,
                      method=FaceModel.canonicalize)
  return v_can, lat["z_id"], z_pose, z_dyn
