"""Audio encoders for stage 2: per-frame log-mel rows (B, T, 4, 80) -> features (B, T, Da).

`AudioEncoder` (config.model.audio_encoder = "mel") is small, trained with the motion model, and
has a bounded receptive field so streaming can reproduce the offline features exactly:

  output frame t depends on input frames [t - receptive_past, t + lookahead]

It is built as: fixed log-mel normalisation -> flatten the 4 rows -> dense -> a shift of
`lookahead` frames to the left (position t now carries frame t + lookahead; zeros past the end;
a sequence's first `lookahead` frames are shifted out and unused) ->
`convs` causal 1D convolutions (kernel `kernel`) -> `layers` pre-LN transformer layers whose
attention sees the `attn_past` previous frames and itself (banded, relative position bias, no
absolute positions, so features do not depend on where a frame sits in the buffer) -> LayerNorm.
Hence receptive_past = convs * (kernel - 1) + layers * attn_past - lookahead. A buffer that must
reproduce whole-sequence features from frame s on has to start receptive_past + lookahead frames
before s (`inference/streaming.py` does this).

`Wav2Vec2Model` (config.model.audio_encoder = "wav2vec2") is a linen port of the Hugging Face
wav2vec2 base architecture with a loader for local checkpoint directories; see its docstring.
Its attention is global, so it has no bounded receptive field (offline use only).

The small layer helpers here (`dense`, `layer_norm`, `Mlp`) are shared with `motion_dit.py`:
every parameter carries logical axis names from `configs/common.py:LOGICAL_AXIS_RULES`.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax.errors import VasaInputError

Dtype = Any

# Natural-log mel power (vasa_jax.data.audio_features.log_mel) spans about -11.5 (silence) to +9
# (full-scale tone); this fixed affine map brings it near zero mean, unit spread before the first
# dense layer. Fixed (not data statistics) so the encoder needs no extra state.
MEL_MEAN = -5.0
MEL_STD = 4.0


def dense(features: int, axes: tuple[str, str], *, name: str | None = None,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
          use_bias: bool = True, kernel_init=nn.initializers.lecun_normal()) -> nn.Dense:
  """nn.Dense whose kernel is named `axes` (in, out) and bias `(axes[1],)`."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                         (axes[1],)))


def layer_norm(*, name: str | None = None, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32) -> nn.LayerNorm:
  """nn.LayerNorm with logically named (replicated) scale and bias."""
  return nn.LayerNorm(dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                              ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             ("norm",)))


class Mlp(nn.Module):
  """Transformer feed-forward block: dense (embed -> mlp), GELU, dense (mlp -> embed)."""
  width: int
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # (B, T, D)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(self.width * self.mlp_ratio, ("embed", "mlp"), name="fc1", **kw)(x)
    h = nn.gelu(h)
    h = nn.with_logical_constraint(h, ("batch", "time", "mlp"))
    return dense(self.width, ("mlp", "embed"), name="fc2", **kw)(h)


def qkv_projection(heads: int, head_dim: int, name: str, dtype: Dtype,
                   param_dtype: Dtype) -> nn.DenseGeneral:
  """(B, T, D) -> (B, T, H, Dh), kernel named (embed, heads, kv)."""
  return nn.DenseGeneral(
      (heads, head_dim), dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                               ("embed", "heads", "kv")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("heads", "kv")))


def out_projection(width: int, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.DenseGeneral:
  """(B, T, H, Dh) -> (B, T, D), kernel named (heads, kv, embed)."""
  return nn.DenseGeneral(
      width, axis=(-2, -1), dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                               ("heads", "kv", "embed")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


class BandedSelfAttention(nn.Module):
  """Causal self-attention over the `past` previous frames and the frame itself.

  Keys are gathered per query as a band of past + 1 frames, so the cost is O(T * past) and the
  arithmetic for a frame is the same wherever it sits in the sequence (streaming == offline).
  A learned bias per head and relative offset replaces absolute positions.
  """
  width: int
  heads: int
  past: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, key_valid=None):  # (B, T, D), (B, T) bool or None
    b, t, _ = x.shape
    dh = self.width // self.heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q = qkv_projection(self.heads, dh, "query", **kw)(x)  # (B, T, H, Dh)
    k = qkv_projection(self.heads, dh, "key", **kw)(x)
    v = qkv_projection(self.heads, dh, "value", **kw)(x)
    n = self.past + 1
    pad = ((0, 0), (self.past, 0), (0, 0), (0, 0))
    k_pad, v_pad = jnp.pad(k, pad), jnp.pad(v, pad)
    # Band j of query t holds key t - past + j.
    k_band = jnp.stack([k_pad[:, j:j + t] for j in range(n)], axis=2)  # (B, T, n, H, Dh)
    v_band = jnp.stack([v_pad[:, j:j + t] for j in range(n)], axis=2)
    rel_bias = self.param("rel_bias", nn.with_logical_partitioning(
        nn.initializers.zeros_init(), ("heads", "kernel")), (self.heads, n), self.param_dtype)
    logits = jnp.einsum("bthd,btjhd->bthj", q, k_band) / jnp.sqrt(dh).astype(q.dtype)
    logits = logits.astype(jnp.float32) + rel_bias.astype(jnp.float32)[None, None]
    # Keys before the start of the sequence do not exist.
    valid = (jnp.arange(t)[:, None] - self.past + jnp.arange(n)[None, :]) >= 0  # (T, n)
    valid = valid[None, :, None, :]  # (1, T, 1, n)
    if key_valid is not None:
      kv_pad = jnp.pad(key_valid, ((0, 0), (self.past, 0)))
      band = jnp.stack([kv_pad[:, j:j + t] for j in range(n)], axis=-1)  # (B, T, n)
      valid = valid & band[:, :, None, :]
    logits = jnp.where(valid, logits, -1e30)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bthj,btjhd->bthd", probs, v_band)  # (B, T, H, Dh)
    return out_projection(self.width, "out", **kw)(out)


class AudioEncoder(nn.Module):
  """Log-mel encoder with a bounded receptive field (see the module docstring).

  Attributes:
    width: output feature size Da.
    layers: transformer layers.
    heads: attention heads.
    attn_past: frames of past each attention layer sees.
    lookahead: future frames each output frame sees.
    kernel: temporal kernel of the causal convolutions.
    convs: number of causal convolutions.
  """
  width: int = 64
  layers: int = 1
  heads: int = 4
  attn_past: int = 4
  lookahead: int = 0
  kernel: int = 3
  convs: int = 2
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def receptive_past(self) -> int:
    """Past input frames that influence an output frame."""
    return self.convs * (self.kernel - 1) + self.layers * self.attn_past - self.lookahead

  @nn.compact
  def __call__(self, feats: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Encodes log-mel rows.

    Args:
      feats: (B, T, 4, 80) float32 log-mel rows (vasa_jax.data.audio_features.log_mel).
      valid: optional (B, T) bool; False marks frames that do not exist (e.g. the zeros the
        pipeline puts before a clip's first window). They are treated exactly like the padding
        before a sequence start: zero hidden state for the convolutions, masked attention keys.
        Only a False prefix matches sequence-start semantics exactly.

    Returns:
      (B, T, width) features; frame t depends on input frames [t - receptive_past,
      t + lookahead] only (zeros stand in for frames past either end).
    """
    if self.receptive_past < 0:
      raise ValueError(f"lookahead {self.lookahead} exceeds the causal receptive field "
                       f"{self.receptive_past + self.lookahead}; lower config.model.audio_lookahead")
    b, t = feats.shape[:2]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = (feats.astype(jnp.float32) - MEL_MEAN) / MEL_STD
    x = x.reshape(b, t, -1).astype(self.dtype)  # (B, T, 4 * 80)
    x = dense(self.width, ("latent", "embed"), name="input", **kw)(x)  # (B, T, D)
    if self.lookahead:
      # Position t now carries frame t + lookahead. (So a sequence's first `lookahead` frames
      # reach no output; they are shifted out before the start, offline and streaming alike.)
      x = jnp.pad(x[:, self.lookahead:], ((0, 0), (0, min(self.lookahead, t)), (0, 0)))
    keep = None
    if valid is not None:
      # Masked by position (not by shifted frame) so an invalid prefix of length P behaves
      # exactly like a sequence that starts at P.
      keep = jnp.asarray(valid, bool)[..., None]  # (B, T, 1)
      x = jnp.where(keep, x, 0)
    x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    for i in range(self.convs):
      h = jnp.pad(x, ((0, 0), (self.kernel - 1, 0), (0, 0)))  # causal
      h = nn.Conv(self.width, (self.kernel,), padding="VALID", name=f"conv_{i}",
                  kernel_init=nn.with_logical_partitioning(
                      nn.initializers.lecun_normal(), ("kernel", "conv_in", "embed")),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                         ("embed",)), **kw)(h)
      x = x + nn.gelu(h)
      if keep is not None:  # missing frames read as zero padding by the next convolution
        x = jnp.where(keep, x, 0)
      x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    key_valid = None if keep is None else keep[..., 0]
    for i in range(self.layers):
      h = layer_norm(name=f"attn_norm_{i}", **kw)(x)
      x = x + BandedSelfAttention(self.width, self.heads, self.attn_past, name=f"attn_{i}",
                                  **kw)(h, key_valid)
      h = layer_norm(name=f"mlp_norm_{i}", **kw)(x)
      x = x + Mlp(self.width, self.mlp_ratio, name=f"mlp_{i}", **kw)(h)
      x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    return layer_norm(name="out_norm", **kw)(x)
