"""Stage 2 motion diffusion transformer (VASA-1 section 3.2) and the model that bundles it.

`MotionDiT` predicts the clean motion window x0 from a noisy one. Every condition is a token
joined along time with the noisy frames (VASA-1 "concatenated along the temporal dimension"):

  [gaze, distance, emotion | timestep | K previous frames | W noisy frames]

- control tokens: a dense projection each, or a learned null token where its mask is False;
- timestep token: sinusoidal embedding -> MLP;
- previous frames: dense(motion_prev) + dense(audio_prev) per frame, or a learned null token
  per frame where `has_prev` is False;
- window frames: dense(x_t) + dense(audio), the audio part replaced by a learned null vector where
  `has_audio` is False (per sample (B,) or per frame (B, W), the latter for short final windows).

A learned positional embedding is added and a pre-LN transformer encoder with full attention
runs over the 4 + K + W tokens; a dense head on the last W positions gives x0_hat.

`MotionModel` holds the `AudioEncoder` and the `MotionDiT` in one parameter tree
{"audio_encoder": ..., "dit": ...} with the entry points `encode_audio` and `denoise`.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vasa_jax.models.audio_encoder import (AudioEncoder, Mlp, dense, layer_norm, out_projection,
                                           qkv_projection)

Dtype = Any
NUM_CONTROL_TOKENS = 3  # gaze, distance, emotion
NUM_PREFIX_TOKENS = NUM_CONTROL_TOKENS + 1  # + timestep


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of (B,) timesteps (ints or floats) -> (B, dim) float32."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _mask(cond: dict, key: str, batch: int) -> jax.Array:
  """A boolean condition mask, all True when absent."""
  m = cond.get(key)
  return jnp.ones((batch,), bool) if m is None else jnp.asarray(m).astype(bool)


class SelfAttention(nn.Module):
  """Full multi-head self-attention with logically named projections."""
  width: int
  heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # (B, L, D)
    dh = self.width // self.heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q = qkv_projection(self.heads, dh, "query", **kw)(x)  # (B, L, H, Dh)
    k = qkv_projection(self.heads, dh, "key", **kw)(x)
    v = qkv_projection(self.heads, dh, "value", **kw)(x)
    q = nn.with_logical_constraint(q, ("batch", "time", "heads", "kv"))
    k = nn.with_logical_constraint(k, ("batch", "time", "heads", "kv"))
    v = nn.with_logical_constraint(v, ("batch", "time", "heads", "kv"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(dh).astype(q.dtype)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return out_projection(self.width, "out", heads=self.heads, head_dim=dh, **kw)(out)


class DiTBlock(nn.Module):
  """Pre-LN transformer encoder layer. Signature (x, _) -> (x, None) so `nn.scan` can run it."""
  width: int
  heads: int
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, _=None):  # (B, L, D)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layer_norm(name="attn_norm", **kw)(x)
    x = x + SelfAttention(self.width, self.heads, name="attn", **kw)(h)
    x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    h = layer_norm(name="mlp_norm", **kw)(x)
    x = x + Mlp(self.width, self.mlp_ratio, name="mlp", **kw)(h)
    x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    return x, None


_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
}


class MotionDiT(nn.Module):
  """x0-predicting diffusion transformer over a motion window (see the module docstring).

  Attributes:
    motion_dim: Dm, size of [z_pose, z_dyn].
    layers, width, heads, mlp_ratio: transformer size.
    scan_layers: run the layers with `nn.scan` (one compiled layer, stacked parameters with a
      leading "depth" axis) instead of a Python loop (parameters `layers_0`, `layers_1`, ...).
    remat_policy: "none" | "full" | "dots" (`nn.remat` of each layer).
  """
  motion_dim: int
  layers: int = 2
  width: int = 64
  heads: int = 4
  mlp_ratio: int = 4
  scan_layers: bool = False
  remat_policy: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_t: jax.Array, t: jax.Array, cond: dict) -> jax.Array:
    """Predicts the clean window.

    Args:
      x_t: (B, W, Dm) noisy motion.
      t: (B,) timesteps.
      cond: dict with `audio` (B, W, Da), `motion_prev` (B, K, Dm), `audio_prev` (B, K, Da),
        `gaze` (B, 2), `distance` (B, 1), `emotion` (B, E) and boolean masks `has_audio` (B,) or
        (B, W), `has_prev`, `has_gaze`, `has_distance`, `has_emotion` (B,) (absent = True).

    Returns:
      (B, W, Dm) x0_hat (float32).
    """
    b, w, dm = x_t.shape
    k = cond["motion_prev"].shape[1]
    d = self.width
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def null(name):
      return self.param(name, nn.with_logical_partitioning(
          nn.initializers.normal(0.02), ("embed",)), (d,), self.param_dtype).astype(self.dtype)

    def control(name, value, mask_key):
      tok = dense(d, ("latent", "embed"), name=f"{name}_in", **kw)(value.astype(self.dtype))
      return jnp.where(_mask(cond, mask_key, b)[:, None], tok, null(f"{name}_null"))  # (B, D)

    controls = [control("gaze", cond["gaze"], "has_gaze"),
                control("distance", cond["distance"], "has_distance"),
                control("emotion", cond["emotion"], "has_emotion")]
    temb = timestep_embedding(t, d).astype(self.dtype)
    temb = dense(d, ("latent", "mlp"), name="time_in", **kw)(temb)
    temb = dense(d, ("mlp", "embed"), name="time_mlp", **kw)(nn.silu(temb))

    audio_in = dense(d, ("latent", "embed"), name="audio_in", **kw)
    prev = dense(d, ("latent", "embed"), name="prev_motion_in", **kw)(
        cond["motion_prev"].astype(self.dtype)) + audio_in(cond["audio_prev"].astype(self.dtype))
    prev_null = self.param("prev_null", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("time", "embed")), (k, d), self.param_dtype)
    prev = jnp.where(_mask(cond, "has_prev", b)[:, None, None], prev,
                     prev_null.astype(self.dtype)[None])  # (B, K, D)

    has_audio = _mask(cond, "has_audio", b)
    has_audio = has_audio[:, None] if has_audio.ndim == 1 else has_audio  # (B, 1|W)
    audio = jnp.where(has_audio[..., None], audio_in(cond["audio"].astype(self.dtype)),
                      null("audio_null"))
    win = dense(d, ("latent", "embed"), name="x_in", **kw)(x_t.astype(self.dtype)) + audio

    tokens = jnp.concatenate([jnp.stack(controls + [temb], axis=1), prev, win], axis=1)
    length = tokens.shape[1]  # 4 + K + W
    pos = self.param("pos_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("time", "embed")), (length, d), self.param_dtype)
    x = tokens + pos.astype(self.dtype)[None]
    x = nn.with_logical_constraint(x, ("batch", "time", "embed"))

    block = DiTBlock
    if self.remat_policy != "none":
      if self.remat_policy not in _REMAT_POLICIES:
        raise ValueError(f"Unknown remat_policy {self.remat_policy!r}; use none | full | dots "
                         "(config.model.remat_policy)")
      block = nn.remat(DiTBlock, policy=_REMAT_POLICIES[self.remat_policy],
                       prevent_cse=not self.scan_layers)
    block_kw = dict(width=d, heads=self.heads, mlp_ratio=self.mlp_ratio, **kw)
    if self.scan_layers:
      x, _ = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                     length=self.layers, metadata_params={nn.PARTITION_NAME: "depth"})(
                         name="layers", **block_kw)(x, None)
    else:
      for i in range(self.layers):
        x, _ = block(name=f"layers_{i}", **block_kw)(x, None)

    x = layer_norm(name="out_norm", **kw)(x[:, NUM_PREFIX_TOKENS + k:])  # (B, W, D)
    out = dense(dm, ("embed", "latent"), name="head", **kw)(x)
    return out.astype(jnp.float32)


def stack_layer_params(params: dict, layers: int) -> dict:
  """Converts unscanned DiT parameters (`layers_i`) to the scanned layout (`layers`, stacked)."""
  params = dict(params)
  per_layer = [params.pop(f"layers_{i}") for i in range(layers)]
  params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
  return params


class MotionModel(nn.Module):
  """Audio encoder + motion DiT in one parameter tree {"audio_encoder", "dit"}."""
  audio_encoder: AudioEncoder
  dit: MotionDiT

  def encode_audio(self, feats: jax.Array) -> jax.Array:
    """(B, T, 4, 80) log-mel rows -> (B, T, Da)."""
    return self.audio_encoder(feats)

  def denoise(self, x_t: jax.Array, t: jax.Array, cond: dict) -> jax.Array:
    """(B, W, Dm) noisy motion, (B,) t, cond with encoded audio -> (B, W, Dm) x0_hat."""
    return self.dit(x_t, t, cond)

  def __call__(self, x_t: jax.Array, t: jax.Array, cond: dict) -> jax.Array:
    """Training / init entry with raw log-mel audio.

    `cond["audio"]` (B, W, 4, 80) and `cond["audio_prev"]` (B, K, 4, 80) are encoded together
    ([prev, window] in time). `cond["audio_prev_valid"]` (B,) bool (optional, default True) says
    whether the previous audio exists (the pipeline's `has_prev` before any dropout); when False
    those frames act as the padding before a sequence start, as in inference's first window.
    """
    b, k = cond["audio_prev"].shape[:2]
    w = cond["audio"].shape[1]
    prev_valid = _mask(cond, "audio_prev_valid", b)
    valid = jnp.concatenate([jnp.broadcast_to(prev_valid[:, None], (b, k)),
                             jnp.ones((b, w), bool)], axis=1)  # (B, K + W)
    feats = self.audio_encoder(jnp.concatenate([cond["audio_prev"], cond["audio"]], axis=1),
                               valid)
    cond = {key: v for key, v in cond.items() if key != "audio_prev_valid"}
    cond.update(audio_prev=feats[:, :k], audio=feats[:, k:])
    return self.denoise(x_t, t, cond)


def _dtype(name) -> Dtype:
  dtype = jnp.dtype(name)
  if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
    raise ValueError(f"compute dtype must be float32, bfloat16 or float16, got {name!r}")
  return dtype


def build_motion_model(config, dtype=None) -> MotionModel:
  """Builds the stage 2 model from a `configs/motion.py` config.

  Args:
    config: the full config (uses `config.model` and `config.train.compute_dtype`).
    dtype: activation dtype overriding `config.train.compute_dtype` (inference sets its own).

  Returns:
    A `MotionModel`; parameters are float32, activations in the compute dtype.
  """
  m = config.model
  if m.get("audio_encoder", "mel") != "mel":
    raise ValueError(f"audio_encoder {m.audio_encoder!r} is not trainable inside MotionModel; "
                     "only 'mel' is wired into stage 2 training (config.model.audio_encoder)")
  dtype = _dtype(dtype or config.get("train", {}).get("compute_dtype", "float32"))
  kw = dict(dtype=dtype, param_dtype=jnp.float32)
  audio = AudioEncoder(width=m.audio_width, layers=m.audio_layers, heads=m.heads,
                       attn_past=m.get("audio_attn_past", 4),
                       lookahead=m.get("audio_lookahead", 0), mlp_ratio=m.mlp_ratio, **kw)
  dit = MotionDiT(motion_dim=m.motion_dim, layers=m.layers, width=m.width, heads=m.heads,
                  mlp_ratio=m.mlp_ratio, scan_layers=m.scan_layers, remat_policy=m.remat_policy,
                  **kw)
  return MotionModel(audio_encoder=audio, dit=dit)


def make_apply_fns(model: MotionModel) -> tuple[Callable, Callable]:
  """Pure functions for the sampler: (denoise_fn, encode_fn).

  Returns:
    denoise_fn(params, x_t, t, cond) -> x0_hat and encode_fn(params, feats) -> features, where
    `params` is the MotionModel parameter tree (unboxed or boxed).
  """
  def denoise_fn(params, x_t, t, cond):
    return model.apply({"params": params}, x_t, t, cond, method=MotionModel.denoise)

  def encode_fn(params, feats):
    return model.apply({"params": params}, feats, method=MotionModel.encode_audio)

  return denoise_fn, encode_fn


def batch_cond(batch: dict, masks: dict) -> dict:
  """The `MotionModel.__call__` condition (raw log-mel audio) from a batch and its masks."""
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  return {"audio": f32(batch["audio"]), "audio_prev": f32(batch["audio_prev"]),
          "audio_prev_valid": jnp.asarray(batch["has_prev"], bool),
          "motion_prev": f32(batch["motion_prev"]), "gaze": f32(batch["gaze"]),
          "distance": f32(batch["distance"]), "emotion": f32(batch["emotion"]), **masks}


def full_masks(batch: dict, window: int) -> dict:
  """Masks with nothing dropped beyond what the data lacks (for evaluation)."""
  b = batch["has_prev"].shape[0]
  ones = jnp.ones((b,), bool)
  return {"has_audio": jnp.ones((b, window), bool),
          "has_prev": jnp.asarray(batch["has_prev"], bool),
          "has_gaze": ones, "has_distance": ones,
          "has_emotion": jnp.asarray(batch["emotion_mask"], bool)}
