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
from typing import Any

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


class _HeadsDense(nn.Module):
  """A dense map with a multi-axis kernel created at its final shape.

  nn.DenseGeneral builds its kernel flat and then reshapes the logically partitioned box; under
  an active mesh that applies the 3-axis sharding constraint to the flat 2D array and fails, so
  the kernel here is created directly with its (in..., out...) shape.
  """
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  bias_axes: tuple[str, ...]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n_in, n_out = len(self.in_shape), len(self.out_shape)
    init = nn.initializers.lecun_normal(in_axis=tuple(range(n_in)),
                                        out_axis=tuple(range(n_in, n_in + n_out)))
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.kernel_axes),
                        self.in_shape + self.out_shape, self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           self.bias_axes),
                      self.out_shape, self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jax.lax.dot_general(x, kernel, (((tuple(range(x.ndim - n_in, x.ndim))),
                                         tuple(range(n_in))), ((), ())))
    return y + bias


def qkv_projection(heads: int, head_dim: int, name: str, dtype: Dtype,
                   param_dtype: Dtype, in_features: int | None = None):
  """(B, T, D) -> (B, T, H, Dh), kernel named (embed, heads, kv); D = heads * head_dim."""
  d = in_features or heads * head_dim
  return _HeadsDense((d,), (heads, head_dim), ("embed", "heads", "kv"), ("heads", "kv"),
                     dtype=dtype, param_dtype=param_dtype, name=name)


def out_projection(width: int, name: str, dtype: Dtype, param_dtype: Dtype, heads: int,
                   head_dim: int):
  """(B, T, H, Dh) -> (B, T, D), kernel named (heads, kv, embed)."""
  return _HeadsDense((heads, head_dim), (width,), ("heads", "kv", "embed"), ("embed",),
                     dtype=dtype, param_dtype=param_dtype, name=name)


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
    return out_projection(self.width, "out", heads=self.heads, head_dim=dh, **kw)(out)


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
                       f"{self.receptive_past + self.lookahead}; lower "
                       "config.model.audio_lookahead")
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


# --------------------------------------------------------------------------- wav2vec2 (optional)


class Wav2Vec2Config:
  """The fields of a Hugging Face `Wav2Vec2Config` (config.json) the architecture needs."""

  def __init__(self, **kw):
    self.conv_dim = tuple(kw.get("conv_dim", (512,) * 7))
    self.conv_kernel = tuple(kw.get("conv_kernel", (10, 3, 3, 3, 3, 2, 2)))
    self.conv_stride = tuple(kw.get("conv_stride", (5, 2, 2, 2, 2, 2, 2)))
    self.conv_bias = bool(kw.get("conv_bias", False))
    self.feat_extract_norm = kw.get("feat_extract_norm", "group")
    self.hidden_size = int(kw.get("hidden_size", 768))
    self.num_hidden_layers = int(kw.get("num_hidden_layers", 12))
    self.num_attention_heads = int(kw.get("num_attention_heads", 12))
    self.intermediate_size = int(kw.get("intermediate_size", 3072))
    self.num_conv_pos_embeddings = int(kw.get("num_conv_pos_embeddings", 128))
    self.num_conv_pos_embedding_groups = int(kw.get("num_conv_pos_embedding_groups", 16))
    self.layer_norm_eps = float(kw.get("layer_norm_eps", 1e-5))
    self.do_stable_layer_norm = bool(kw.get("do_stable_layer_norm", False))
    act = kw.get("hidden_act", "gelu")
    if act != "gelu" or kw.get("feat_extract_activation", "gelu") != "gelu":
      raise VasaInputError(f"wav2vec2 checkpoint uses activation {act!r}; only 'gelu' is "
                           "supported (config.json hidden_act / feat_extract_activation)")
    if self.feat_extract_norm not in ("group", "layer"):
      raise VasaInputError(f"Unknown feat_extract_norm {self.feat_extract_norm!r} in config.json")

  @classmethod
  def from_dir(cls, path: str | os.PathLike) -> "Wav2Vec2Config":
    f = pathlib.Path(path) / "config.json"
    if not f.is_file():
      raise VasaInputError(f"{f} not found: config.model.wav2vec2_path must be a local Hugging "
                           "Face wav2vec2 directory (config.json + pytorch_model.bin or "
                           "model.safetensors); nothing is downloaded.")
    return cls(**json.loads(f.read_text()))


def _gelu(x):
  return nn.gelu(x, approximate=False)  # torch's exact GELU


class _W2VFeatureEncoder(nn.Module):
  cfg: Wav2Vec2Config

  @nn.compact
  def __call__(self, wav):  # (B, N) -> (B, N', C)
    c = self.cfg
    x = wav[..., None]
    for i, (dim, k, s) in enumerate(zip(c.conv_dim, c.conv_kernel, c.conv_stride)):
      x = nn.Conv(dim, (k,), strides=(s,), padding="VALID", use_bias=c.conv_bias,
                  name=f"conv_{i}")(x)
      if c.feat_extract_norm == "group" and i == 0:
        x = nn.GroupNorm(num_groups=dim, epsilon=1e-5, name=f"norm_{i}")(x)
      elif c.feat_extract_norm == "layer":
        x = nn.LayerNorm(epsilon=1e-5, name=f"norm_{i}")(x)
      x = _gelu(x)
    return x


class _W2VLayer(nn.Module):
  cfg: Wav2Vec2Config

  @nn.compact
  def __call__(self, x):  # (B, N, D)
    c = self.cfg
    d, h = c.hidden_size, c.num_attention_heads
    ln = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, name=name)  # noqa: E731

    def attention(y):
      q = nn.Dense(d, name="q_proj")(y) * (d // h) ** -0.5
      k = nn.Dense(d, name="k_proj")(y)
      v = nn.Dense(d, name="v_proj")(y)
      split = lambda z: z.reshape(z.shape[:2] + (h, d // h))  # noqa: E731
      probs = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)), axis=-1)
      out = jnp.einsum("bhqk,bkhd->bqhd", probs, split(v)).reshape(y.shape)
      return nn.Dense(d, name="out_proj")(out)

    def feed_forward(y):
      y = _gelu(nn.Dense(c.intermediate_size, name="intermediate_dense")(y))
      return nn.Dense(d, name="output_dense")(y)

    if c.do_stable_layer_norm:  # pre-LN (large "lv60" checkpoints)
      x = x + attention(ln("layer_norm")(x))
      return x + feed_forward(ln("final_layer_norm")(x))
    x = ln("layer_norm")(x + attention(x))  # post-LN (base)
    return ln("final_layer_norm")(x + feed_forward(x))


class Wav2Vec2Model(nn.Module):
  """Linen port of Hugging Face `Wav2Vec2Model` (inference, no masking / dropout).

  Parameter names follow the torch module names so `convert_wav2vec2_state_dict` is mechanical.
  `__call__(wav (B, N) 16 kHz) -> last_hidden_state (B, N', D)` at 50 Hz.
  """
  cfg: Wav2Vec2Config

  @nn.compact
  def __call__(self, wav: jax.Array) -> jax.Array:
    c = self.cfg
    x = _W2VFeatureEncoder(c, name="feature_extractor")(wav.astype(jnp.float32))
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="feature_projection_norm")(x)
    x = nn.Dense(c.hidden_size, name="feature_projection")(x)
    k = c.num_conv_pos_embeddings
    pos = nn.Conv(c.hidden_size, (k,), padding=[(k // 2, k // 2)],
                  feature_group_count=c.num_conv_pos_embedding_groups, name="pos_conv")(x)
    if k % 2 == 0:
      pos = pos[:, :-1]  # Wav2Vec2SamePadLayer
    x = x + _gelu(pos)
    if not c.do_stable_layer_norm:
      x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="encoder_layer_norm")(x)
    for i in range(c.num_hidden_layers):
      x = _W2VLayer(c, name=f"layers_{i}")(x)
    if c.do_stable_layer_norm:
      x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="encoder_layer_norm")(x)
    return x


def convert_wav2vec2_state_dict(state: dict[str, np.ndarray], cfg: Wav2Vec2Config) -> dict:
  """Maps a torch `Wav2Vec2Model` state dict (numpy arrays) to `Wav2Vec2Model` params.

  Args:
    state: name -> array, with or without the "wav2vec2." prefix of CTC / pretraining heads.
    cfg: the checkpoint's config.

  Returns:
    The linen params dict.
  """
  state = {k.removeprefix("wav2vec2."): np.asarray(v, np.float32) for k, v in state.items()}

  def get(name):
    if name not in state:
      raise VasaInputError(f"wav2vec2 checkpoint lacks {name!r}; is it a Wav2Vec2Model?")
    return state[name]

  def linear(prefix):
    return {"kernel": get(prefix + ".weight").T, "bias": get(prefix + ".bias")}

  def norm(prefix):
    return {"scale": get(prefix + ".weight"), "bias": get(prefix + ".bias")}

  fe = {}
  for i in range(len(cfg.conv_dim)):
    p = f"feature_extractor.conv_layers.{i}"
    conv = {"kernel": get(p + ".conv.weight").transpose(2, 1, 0)}
    if cfg.conv_bias:
      conv["bias"] = get(p + ".conv.bias")
    fe[f"conv_{i}"] = conv
    if (cfg.feat_extract_norm == "group" and i == 0) or cfg.feat_extract_norm == "layer":
      fe[f"norm_{i}"] = norm(p + ".layer_norm")
  pc = "encoder.pos_conv_embed.conv"
  if pc + ".weight_g" in state:
    g, v = get(pc + ".weight_g"), get(pc + ".weight_v")
  elif pc + ".parametrizations.weight.original0" in state:
    g = get(pc + ".parametrizations.weight.original0")
    v = get(pc + ".parametrizations.weight.original1")
  else:
    g, v = None, get(pc + ".weight")
  # torch weight_norm(dim=2): w = g * v / ||v|| with the norm over every axis but the kernel one.
  w = v if g is None else v * (g / np.sqrt((v ** 2).sum(axis=(0, 1), keepdims=True)))
  params = {
      "feature_extractor": fe,
      "feature_projection_norm": norm("feature_projection.layer_norm"),
      "feature_projection": linear("feature_projection.projection"),
      "pos_conv": {"kernel": w.transpose(2, 1, 0), "bias": get(pc + ".bias")},
      "encoder_layer_norm": norm("encoder.layer_norm"),
  }
  for i in range(cfg.num_hidden_layers):
    p = f"encoder.layers.{i}"
    params[f"layers_{i}"] = {
        "q_proj": linear(p + ".attention.q_proj"), "k_proj": linear(p + ".attention.k_proj"),
        "v_proj": linear(p + ".attention.v_proj"), "out_proj": linear(p + ".attention.out_proj"),
        "layer_norm": norm(p + ".layer_norm"),
        "intermediate_dense": linear(p + ".feed_forward.intermediate_dense"),
        "output_dense": linear(p + ".feed_forward.output_dense"),
        "final_layer_norm": norm(p + ".final_layer_norm"),
    }
  return jax.tree.map(jnp.asarray, params)


def _read_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
  st = path / "model.safetensors"
  if st.is_file():
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    return load_file(str(st))
  pt = path / "pytorch_model.bin"
  if pt.is_file():
    import torch  # pylint: disable=import-outside-toplevel
    sd = torch.load(str(pt), map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in sd.items()}
  raise VasaInputError(f"No model.safetensors or pytorch_model.bin in {path} "
                       "(config.model.wav2vec2_path must be a local Hugging Face checkpoint)")


def load_wav2vec2(path: str | os.PathLike) -> tuple[Wav2Vec2Model, dict]:
  """Loads a local Hugging Face wav2vec2 directory (never downloads).

  Args:
    path: directory with config.json and model.safetensors (needs `safetensors`) or
      pytorch_model.bin (needs `torch`).

  Returns:
    (Wav2Vec2Model, params).
  """
  path = pathlib.Path(path)
  cfg = Wav2Vec2Config.from_dir(path)
  return Wav2Vec2Model(cfg), convert_wav2vec2_state_dict(_read_state_dict(path), cfg)


def wav2vec2_features(model: Wav2Vec2Model, params, wav: jax.Array, num_frames: int,
                      normalize: bool = True) -> jax.Array:
  """wav2vec2 hidden states resampled from 50 Hz to 25 fps video frames.

  Args:
    model, params: from `load_wav2vec2`.
    wav: (B, N) float32 16 kHz audio.
    num_frames: T video frames (usually ceil(N / 640)).
    normalize: zero-mean unit-variance per utterance, as the Hugging Face feature extractor does
      for base checkpoints (`do_normalize`).

  Returns:
    (B, T, D) features (linear interpolation of the 50 Hz states; half-frame centres aligned).
  """
  wav = jnp.asarray(wav, jnp.float32)
  if normalize:
    wav = (wav - wav.mean(-1, keepdims=True)) / jnp.sqrt(wav.var(-1, keepdims=True) + 1e-7)
  h = model.apply({"params": params}, wav)  # (B, N', D)
  return jax.image.resize(h, (h.shape[0], num_frames, h.shape[2]), "linear")
