"""Multi-scale PatchGAN discriminator (hinge loss), with per-layer features for feature matching.

Scale k sees the image average-pooled by 2^k. Each scale: patchify by 2 -> conv -> LeakyReLU,
then `disc_layers - 1` stride-2 (avg-pool) conv + GroupNorm + LeakyReLU stages, then a 1-channel
logit map. The generator and discriminator losses over all scales are in
`vasa_jax.train.latent_losses` and use `hinge_loss` below.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vasa_jax.models import layers

Dtype = Any


def hinge_loss(logits: jax.Array, real: bool) -> jax.Array:
  """Discriminator hinge: mean(relu(1 - l)) for real, mean(relu(1 + l)) for fake; float32."""
  logits = logits.astype(jnp.float32)
  return jnp.mean(nn.relu(1.0 - logits)) if real else jnp.mean(nn.relu(1.0 + logits))


class PatchDiscriminator(nn.Module):
  """One PatchGAN scale: (B, H, W, 3) -> (logits (B, h, w, 1), [features (B, h_l, w_l, C_l)])."""
  width: int
  num_layers: int = 3
  groups: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, img: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    act = layers.activation("lrelu")
    feats = []
    x = layers.space_to_depth(img.astype(self.dtype), 2)  # a stride-2 stem without a big conv
    x = act(layers.Conv(self.width, (3, 3), name="conv0", **kw)(x))
    feats.append(x)
    ch = self.width
    for i in range(1, self.num_layers):
      ch = min(ch * 2, 8 * self.width)
      x = layers.Conv(ch, (3, 3), name=f"conv{i}", **kw)(layers.downsample(x))
      x = act(layers.group_norm(ch, self.groups, name=f"norm{i}", **kw)(x))
      feats.append(x)
    logits = layers.Conv(1, (3, 3), name="to_logits", **kw)(x)
    return logits.astype(jnp.float32), feats


class Discriminator(nn.Module):
  """Multi-scale PatchGAN.

  Attributes:
    config: `config.model` (uses disc_width, disc_scales, disc_layers, groups).
  """
  config: Any
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, img: jax.Array) -> list[tuple[jax.Array, list[jax.Array]]]:
    """Args: img (B, R, R, 3) in [-1, 1].

    Returns:
      one (logits (B, h, w, 1) float32, features list) per scale, finest first.
    """
    c = layers.as_face_config(self.config)
    outs = []
    x = img
    for k in range(c.disc_scales):
      if k:
        x = layers.downsample(x)
      outs.append(PatchDiscriminator(c.disc_width, c.disc_layers, c.groups, self.dtype,
                                     self.param_dtype, name=f"scale{k}")(x))
    return outs
