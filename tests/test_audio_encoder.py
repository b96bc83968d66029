"""The mel audio encoder: shapes, exact receptive field, padding semantics, axis names."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import LOGICAL_AXIS_RULES
from vasa_jax.models.audio_encoder import AudioEncoder

T = 24


def _encoder(lookahead):
  return AudioEncoder(width=32, layers=2, heads=4, attn_past=3, lookahead=lookahead)


@pytest.fixture(scope="module", params=[0, 2])
def enc(request):
  e = _encoder(request.param)
  x = jax.random.normal(jax.random.key(0), (2, T, 4, 80)) * 3 - 5
  variables = jax.jit(e.init)(jax.random.key(1), x)
  return e, nn.unbox(variables), jax.jit(e.apply), x, variables


def test_shape_and_finite(enc):
  e, params, apply, x, _ = enc
  y = apply(params, x)
  assert y.shape == (2, T, 32) and np.isfinite(np.asarray(y)).all()
  assert e.receptive_past == 2 * 2 + 2 * 3 - e.lookahead


def test_receptive_field_is_exact(enc):
  e, params, apply, x, _ = enc
  base = apply(params, x)
  s = 8
  changed = np.abs(np.asarray(apply(params, x.at[:, s].add(2.0)) - base)).max(axis=(0, 2))
  hit = np.nonzero(changed > 1e-6)[0]
  assert hit.min() == s - e.lookahead and hit.max() == s + e.receptive_past


def test_buffer_with_enough_past_matches_whole_sequence(enc):
  e, params, apply, x, _ = enc
  full = apply(params, x)
  start = 3
  lo = start + e.receptive_past + e.lookahead  # the first exact frame of a buffer at `start`
  hi = T - 4 - e.lookahead  # buffer ends at T - 4
  part = apply(params, x[:, start:T - 4])
  np.testing.assert_allclose(part[:, lo - start:hi - start], full[:, lo:hi], atol=1e-5)


def test_invalid_prefix_acts_like_sequence_start(enc):
  _, params, apply, x, _ = enc
  junk = jax.random.normal(jax.random.key(9), (2, 5, 4, 80))
  valid = jnp.concatenate([jnp.zeros((2, 5), bool), jnp.ones((2, T), bool)], axis=1)
  with_prefix = apply(params, jnp.concatenate([junk, x], axis=1), valid)
  np.testing.assert_allclose(with_prefix[:, 5:], apply(params, x), atol=1e-5)


def test_every_parameter_has_known_logical_names(enc):
  *_, variables = enc
  known = {name for name, _ in LOGICAL_AXIS_RULES}
  leaves = jax.tree.leaves(variables, is_leaf=lambda v: isinstance(v, nn.Partitioned))
  assert leaves and all(isinstance(v, nn.Partitioned) for v in leaves)
  for v in leaves:
    assert set(v.names) <= known and len(v.names) == v.value.ndim


def test_lookahead_beyond_receptive_field_raises():
  e = AudioEncoder(width=8, layers=0, heads=2, convs=1, kernel=2, lookahead=3)
  with pytest.raises(ValueError, match="audio_lookahead"):
    e.init(jax.random.key(0), jnp.zeros((1, 4, 4, 80)))


# -- wav2vec2 -------------------------------------------------------------------------------------

from vasa_jax.errors import VasaInputError  # noqa: E402
from vasa_jax.models import audio_encoder as ae  # noqa: E402

_TINY_W2V = dict(conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2), hidden_size=16,
                 num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                 num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)


def _torch_style_state(params, cfg):
  """The inverse of convert_wav2vec2_state_dict's mapping (weight-normed pos conv, g = ||v||)."""
  p = jax.tree.map(np.asarray, params)
  lin = lambda d: {"weight": d["kernel"].T, "bias": d["bias"]}  # noqa: E731
  nrm = lambda d: {"weight": d["scale"], "bias": d["bias"]}  # noqa: E731
  out = {}

  def put(prefix, d):
    out.update({f"{prefix}.{k}": v for k, v in d.items()})

  for i in range(len(cfg.conv_dim)):
    put(f"feature_extractor.conv_layers.{i}.conv",
        {"weight": p["feature_extractor"][f"conv_{i}"]["kernel"].transpose(2, 1, 0)})
    if f"norm_{i}" in p["feature_extractor"]:
      put(f"feature_extractor.conv_layers.{i}.layer_norm", nrm(p["feature_extractor"][f"norm_{i}"]))
  put("feature_projection.layer_norm", nrm(p["feature_projection_norm"]))
  put("feature_projection.projection", lin(p["feature_projection"]))
  v = p["pos_conv"]["kernel"].transpose(2, 1, 0)
  put("encoder.pos_conv_embed.conv", {"weight_v": v, "bias": p["pos_conv"]["bias"],
                                      "weight_g": np.sqrt((v ** 2).sum((0, 1), keepdims=True))})
  put("encoder.layer_norm", nrm(p["encoder_layer_norm"]))
  for i in range(cfg.num_hidden_layers):
    q = p[f"layers_{i}"]
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
      put(f"encoder.layers.{i}.attention.{name}", lin(q[name]))
    for name in ("intermediate_dense", "output_dense"):
      put(f"encoder.layers.{i}.feed_forward.{name}", lin(q[name]))
    put(f"encoder.layers.{i}.layer_norm", nrm(q["layer_norm"]))
    put(f"encoder.layers.{i}.final_layer_norm", nrm(q["final_layer_norm"]))
  return {"wav2vec2." + k: v for k, v in out.items()}


@pytest.mark.parametrize("stable", [False, True])
def test_wav2vec2_runs_and_converts_its_own_layout(stable):
  cfg = ae.Wav2Vec2Config(**_TINY_W2V, do_stable_layer_norm=stable,
                          feat_extract_norm="layer" if stable else "group")
  model = ae.Wav2Vec2Model(cfg)
  wav = jax.random.normal(jax.random.key(0), (2, 640 * 5))
  params = jax.jit(model.init)(jax.random.key(1), wav)["params"]
  feats = ae.wav2vec2_features(model, params, wav, num_frames=5)
  assert feats.shape == (2, 5, 16) and np.isfinite(np.asarray(feats)).all()
  converted = ae.convert_wav2vec2_state_dict(_torch_style_state(params, cfg), cfg)
  assert jax.tree.structure(converted) == jax.tree.structure(params)
  np.testing.assert_allclose(model.apply({"params": converted}, wav),
                             model.apply({"params": params}, wav), atol=1e-5)


def test_wav2vec2_loader_needs_a_local_directory(tmp_path):
  with pytest.raises(VasaInputError, match="config.json"):
    ae.load_wav2vec2(tmp_path)


def test_wav2vec2_matches_transformers(tmp_path):
  """Numerical match with a tiny random `transformers.Wav2Vec2Model` (needs torch)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg = transformers.Wav2Vec2Config(**_TINY_W2V)
  ref = transformers.Wav2Vec2Model(cfg).eval()
  ref.save_pretrained(tmp_path, safe_serialization=False)
  model, params = ae.load_wav2vec2(tmp_path)
  wav = np.random.default_rng(0).standard_normal((1, 3200)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(wav)).last_hidden_state.numpy()
  np.testing.assert_allclose(model.apply({"params": params}, jnp.asarray(wav)), want, atol=1e-4)
