"""Window sampler, guidance, sequences and streaming (fake denoisers and the tiny model)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import motion as motion_config
from vasa_jax.diffusion import sampler as S
from vasa_jax.inference.streaming import MotionStream, make_stream

# Checks behaviour, not speed: unoptimised XLA compiles the tiny model several times faster.
pytestmark = pytest.mark.usefixtures("fast_compile")

W, K, DM, DA, E = 8, 3, 5, 6, 4


def _config(steps=10, sampler="ddim"):
  c = motion_config.get_config("tiny")
  c.diffusion.sample_steps = steps
  c.diffusion.sampler = sampler
  return c


def _controls():
  return S.make_controls(E, gaze=(0.1, -0.2), distance=(0.3,))


def _const_denoiser(target):
  def fn(params, x_t, t, cond):
    del params, t, cond
    return jnp.broadcast_to(target, x_t.shape)
  return fn


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_fake_denoiser_reaches_its_x0(sampler):
  target = jnp.linspace(-1.0, 1.0, W * DM).reshape(1, W, DM)
  fn = S.make_sample_window(_const_denoiser(target), _config(10, sampler))
  carry = S.initial_carry(1, K, DM, DA)
  new_carry, motion = fn(None, carry, jnp.zeros((1, W, DA)), jnp.ones((1, W), bool), _controls(),
                         jax.random.key(0), 0.5, 1.0)
  np.testing.assert_allclose(motion, target, atol=1e-5)
  np.testing.assert_allclose(new_carry["motion_prev"], target[:, W - K:], atol=1e-5)
  assert bool(new_carry["has_prev"].all())


def _mask_denoiser(calls):
  """x0 depends on the masks: 1 + 2 has_audio(frame) + 4 has_gaze + 0.1 x_t."""
  def fn(params, x_t, t, cond):
    del params, t
    calls.append(x_t.shape[0])
    audio = cond["has_audio"].astype(jnp.float32)[..., None]  # (B, W, 1)
    gaze = cond["has_gaze"].astype(jnp.float32)[:, None, None]
    return 1.0 + 2.0 * audio + 4.0 * gaze + 0.1 * x_t
  return fn


def test_guided_x0_formula_in_one_batched_call():
  calls = []
  fn = _mask_denoiser(calls)
  x_t = jax.random.normal(jax.random.key(1), (2, W, DM))
  t = jnp.array([5, 9])
  mask = jnp.ones((2, W), bool).at[1, -3:].set(False)
  cond = S.build_cond(S.initial_carry(2, K, DM, DA), jnp.zeros((2, W, DA)), mask,
                      S.make_controls(E, gaze=(0.0, 0.0), batch=2))
  out = S.guided_x0(fn, None, x_t, t, cond, 0.5, 1.0)
  assert calls == [6]  # the three branches in one forward pass
  h_c = fn(None, x_t, t, cond)
  h_a = fn(None, x_t, t, dict(cond, has_audio=jnp.zeros_like(mask)))
  h_g = fn(None, x_t, t, dict(cond, has_gaze=jnp.zeros((2,), bool)))
  np.testing.assert_allclose(out, 2.5 * h_c - 0.5 * h_a - 1.0 * h_g, atol=1e-5)
  # Scale 0 is the plain conditional prediction.
  np.testing.assert_array_equal(S.guided_x0(fn, None, x_t, t, cond, 0.0, 0.0), h_c)


def test_window_sampler_traced_once_across_windows_and_scales():
  calls = []
  fn = S.make_sample_window(_mask_denoiser(calls), _config(4))
  carry = S.initial_carry(1, K, DM, DA)
  outs = []
  for i, (la, lg) in enumerate([(0.5, 1.0), (0.0, 0.0), (2.0, 0.3), (1.0, 1.0)]):
    carry, m = fn(None, carry, jnp.zeros((1, W, DA)), jnp.ones((1, W), bool), _controls(),
                  jax.random.key(i), la, lg)
    outs.append(m)
  assert len(calls) == 1  # the denoiser (inside the scan) was traced once in total
  assert fn._cache_size() == 1  # pylint: disable=protected-access
  assert not np.allclose(outs[0], outs[1])  # the scales are live, not baked in


def _ramp_denoiser(delta):
  """x0[j] = last context frame (0 without context) + (j + 1) delta: a continuous ramp."""
  def fn(params, x_t, t, cond):
    del params, t
    last = jnp.where(cond["has_prev"][:, None], cond["motion_prev"][:, -1], 0.0)  # (B, Dm)
    steps = jnp.arange(1, x_t.shape[1] + 1, dtype=jnp.float32)[None, :, None]
    return last[:, None, :] + steps * delta
  return fn


def test_unanchored_windows_join_without_a_jump():
  delta = 0.05
  fn = S.make_sample_window(_ramp_denoiser(delta), _config(5, "ddpm"))
  carry = {k: v for k, v in S.initial_carry(1, K, DM, DA).items() if k != "motion_anchor"}
  out = []
  for i in range(3):  # a carry without an anchor is fed as is (the ramp continues)
    carry, m = fn(None, carry, jnp.zeros((1, W, DA)), jnp.ones((1, W), bool), _controls(),
                  jax.random.key(i), 0.5, 1.0)
    out.append(m[0])
  motion = np.concatenate(out)
  np.testing.assert_allclose(np.diff(motion, axis=0), delta, atol=1e-4)
  np.testing.assert_allclose(motion[0], delta, atol=1e-5)


def test_anchored_context_stops_a_drifting_model():
  """A model that drifts by delta per frame from its context: anchored, the level it reaches
  is bounded by one window's drift, and every window still follows on from its context."""
  delta = 0.05
  fn = S.make_sample_window(_ramp_denoiser(delta), _config(5, "ddpm"))
  t_total = 20 * W + 5
  motion = np.asarray(S.sample_sequence(fn, None, jnp.zeros((t_total, DA)), _controls(),
                                        jax.random.key(0), window=W, context=K, motion_dim=DM))
  assert motion.shape == (t_total, DM)
  # Unanchored it would reach t_total * delta = 8.25; anchored it stays within two windows.
  assert np.abs(motion).max() <= 2 * W * delta + 1e-4
  inside = np.delete(np.diff(motion, axis=0), np.arange(W - 1, t_total - 1, W), axis=0)
  np.testing.assert_allclose(inside, delta, atol=1e-4)
  # Window i starts from its anchored context: anchor + (last - mean of the last K) + delta.
  first = motion[:W]
  anchor = first[W - K:].mean(0)
  np.testing.assert_allclose(motion[W], anchor + first[-1] - first[W - K:].mean(0) + delta,
                             atol=1e-4)


def test_anchor_context_keeps_the_shape_and_moves_the_level():
  prev = jax.random.normal(jax.random.key(1), (2, K, DM)) + 3.0
  anchor = jnp.full((2, 1, DM), -1.0)
  carry = dict(S.initial_carry(2, K, DM, DA), motion_prev=prev, motion_anchor=anchor)
  fed = S.anchor_context(carry)["motion_prev"]
  np.testing.assert_allclose(fed.mean(1, keepdims=True), anchor, atol=1e-5)
  np.testing.assert_allclose(np.diff(fed, axis=1), np.diff(prev, axis=1), atol=1e-5)
  legacy = {k: v for k, v in carry.items() if k != "motion_anchor"}
  assert S.anchor_context(legacy) is legacy


def _noise_denoiser(params, x_t, t, cond):
  """Depends on the noise and the audio, so seeds and windows matter."""
  del params, t
  audio = jnp.where(cond["has_audio"][..., None], cond["audio"][..., :1], -1.0)
  prev = jnp.where(cond["has_prev"][:, None, None], cond["motion_prev"].mean(1, keepdims=True), 0)
  return 0.3 * x_t + audio + 0.5 * prev


def test_sequence_is_deterministic_per_seed_and_masks_the_padding():
  fn = S.make_sample_window(_noise_denoiser, _config(6, "ddpm"))
  audio = jax.random.normal(jax.random.key(5), (2 * W + 3, DA))
  kw = dict(window=W, context=K, motion_dim=DM)
  a = S.sample_sequence(fn, None, audio, _controls(), jax.random.key(7), **kw)
  b = S.sample_sequence(fn, None, audio, _controls(), jax.random.key(7), **kw)
  c = S.sample_sequence(fn, None, audio, _controls(), jax.random.key(8), **kw)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert a.shape == (2 * W + 3, DM) and np.isfinite(np.asarray(a)).all()
  # Window i only depends on fold_in(seed, i): regenerate window 1 by hand.
  carry = S.initial_carry(1, K, DM, DA)
  mask = jnp.ones((1, W), bool)
  carry, _ = fn(None, carry, audio[None, :W], mask, _controls(), jax.random.fold_in(
      jax.random.key(7), 0), 0.5, 1.0)
  _, w1 = fn(None, carry, audio[None, W:2 * W], mask, _controls(),
             jax.random.fold_in(jax.random.key(7), 1), 0.5, 1.0)
  np.testing.assert_allclose(a[W:2 * W], w1[0], atol=1e-6)


def test_window_loop_owns_boundaries_padding_and_keys():
  """The one window loop (sample_sequence, Pipeline.generate, MotionStream): window 0 emits F
  frames, later ones W, the last is padded and trimmed, window i uses fold_in(seed, i)."""
  fn = S.make_sample_window(_noise_denoiser, _config(6, "ddpm"))
  audio = jax.random.normal(jax.random.key(5), (2 * W + 3, DA))
  kw = dict(window=W, context=K, motion_dim=DM, audio_dim=DA)
  loop = S.WindowLoop(fn, None, _controls(), jax.random.key(7), first_window=3, **kw)
  assert [m.shape[0] for m in loop.windows(audio)] == [3, W, W]
  assert (loop.index, loop.start) == (3, 2 * W + 3)
  # With F = W it is sample_sequence's loop, key for key.
  full = S.WindowLoop(fn, None, _controls(), jax.random.key(7), **kw)
  np.testing.assert_array_equal(
      jnp.concatenate(list(full.windows(audio))),
      S.sample_sequence(fn, None, audio, _controls(), jax.random.key(7), window=W, context=K,
                        motion_dim=DM))
  with pytest.raises(ValueError, match="takes 1..8 frames"):
    S.WindowLoop(fn, None, _controls(), jax.random.key(7), **kw).step(audio[:W + 1])
  with pytest.raises(ValueError, match="first_window"):
    S.WindowLoop(fn, None, _controls(), jax.random.key(7), first_window=W + 1, **kw)


def test_make_controls_validates_shapes():
  c = S.make_controls(E)
  assert c["emotion"].shape == (1, E) and not bool(c["has_gaze"][0])
  with pytest.raises(ValueError, match="gaze"):
    S.make_controls(E, gaze=(0.1, 0.2, 0.3))


# -- the tiny real model: offline vs streaming --------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
  from vasa_jax.models.motion_dit import build_motion_model, make_apply_fns

  c = _config(3, "ddpm")
  c.model.audio_lookahead = 2
  c.model.update(layers=1, width=32, audio_width=32, window=8, context=3)  # fast compiles
  model = build_motion_model(c)
  m = c.model
  cond = {"audio": jnp.zeros((1, m.window, 4, 80)), "audio_prev": jnp.zeros((1, m.context, 4, 80)),
          "motion_prev": jnp.zeros((1, m.context, m.motion_dim)), "gaze": jnp.zeros((1, 2)),
          "distance": jnp.zeros((1, 1)), "emotion": jnp.zeros((1, m.emotion_dim))}
  import flax.linen as nn
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, m.window, m.motion_dim)),
                                        jnp.zeros((1,), jnp.int32), cond)["params"])
  denoise_fn, encode_fn = make_apply_fns(model)
  return c, model, params, S.make_sample_window(denoise_fn, c), jax.jit(encode_fn)


def _offline(tiny_model, feats, controls, rng):
  """Offline motion for feature frames (T, 4, 80): the reference every stream must match."""
  c, _, params, window_fn, encode_fn = tiny_model
  return S.sample_sequence(window_fn, params, feats, controls, rng, window=c.model.window,
                           context=c.model.context, motion_dim=c.model.motion_dim,
                           encode_fn=encode_fn)


def _stream_kwargs(c, model):
  return dict(window=c.model.window, context=c.model.context, motion_dim=c.model.motion_dim,
              audio_dim=c.model.audio_width, receptive_past=model.audio_encoder.receptive_past,
              lookahead=model.audio_encoder.lookahead)


def test_streaming_feature_frames_equal_offline(tiny_model):
  c, model, params, window_fn, encode_fn = tiny_model
  w = c.model.window
  feats = np.asarray(jax.random.normal(jax.random.key(3), (2 * w + 5, 4, 80))) * 2 - 5
  controls = S.make_controls(c.model.emotion_dim, gaze=(0.0, 0.0))
  rng = jax.random.key(11)
  offline = _offline(tiny_model, feats, controls, rng)
  stream = MotionStream(window_fn, params, encode_fn, controls, rng, **_stream_kwargs(c, model))
  got, sizes = [], []
  for lo, hi in [(0, 5), (5, w + 1), (w + 1, w + 2), (w + 2, 2 * w + 2), (2 * w + 2, 2 * w + 5)]:
    out = stream.push(feats[lo:hi])
    sizes.append(len(out))
    got.append(out)
  got.append(stream.flush())
  # Window i leaves once frame i W + W + lookahead (2) has arrived.
  assert sizes == [0, 0, w, w, 0]
  np.testing.assert_allclose(np.concatenate(got), offline, atol=1e-5)


def test_streaming_raw_samples_equal_offline(tiny_model):
  from vasa_jax.data.audio_features import log_mel

  c, model, params, window_fn, encode_fn = tiny_model
  rng_np = np.random.default_rng(0)
  n = 640 * (c.model.window + 7) + 123
  samples = (0.1 * rng_np.standard_normal(n)).astype(np.float32)
  controls = S.make_controls(c.model.emotion_dim)
  rng = jax.random.key(2)
  offline = _offline(tiny_model, log_mel(samples), controls, rng)
  stream = make_stream(model, params, c, controls, rng, sample_window_fn=window_fn)
  cuts = [0, 1000, 1001, 7000, 11000, n]
  got = [stream.push(samples[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
  got.append(stream.flush())
  assert stream.frames_received == offline.shape[0]
  np.testing.assert_allclose(np.concatenate(got), offline, atol=1e-5)


# -- streaming with a short first window (latency lever) ----------------------------------------


def _stream_frames(stream, feats):
  """Pushes feature frames one at a time: (outputs, frames received when each was non-empty)."""
  got, arrivals = [], []
  for t in range(feats.shape[0]):
    out = stream.push(feats[t:t + 1])
    if len(out):
      got.append(out)
      arrivals.append((stream.frames_received, len(out)))
  got.append(stream.flush())
  return np.concatenate(got), arrivals


@pytest.mark.parametrize("first_window", [2, 5])  # below and above the context K = 3
def test_short_first_window_leaves_early_and_covers_the_audio(tiny_model, first_window):
  c, model, params, window_fn, encode_fn = tiny_model
  w, lookahead = c.model.window, model.audio_encoder.lookahead
  t_total = 2 * w + 5
  feats = np.asarray(jax.random.normal(jax.random.key(4), (t_total, 4, 80))) * 2 - 5
  controls = S.make_controls(c.model.emotion_dim)
  stream = MotionStream(window_fn, params, encode_fn, controls, jax.random.key(1),
                        first_window=first_window, **_stream_kwargs(c, model))
  motion, arrivals = _stream_frames(stream, feats)
  # The first F frames leave once F + lookahead frames of audio exist (not W + lookahead), then
  # a full window every W frames.
  assert arrivals[0] == (first_window + lookahead, first_window)
  assert arrivals[1] == (first_window + w + lookahead, w)
  assert motion.shape == (t_total, c.model.motion_dim) and np.isfinite(motion).all()


@pytest.mark.parametrize("first_window", [None, 8])  # 8 = W: the same windows as the default
def test_full_first_window_still_equals_offline(tiny_model, first_window):
  c, model, params, window_fn, encode_fn = tiny_model
  w = c.model.window
  assert w == 8
  feats = np.asarray(jax.random.normal(jax.random.key(6), (2 * w + 3, 4, 80))) * 2 - 5
  controls = S.make_controls(c.model.emotion_dim, gaze=(0.1, 0.0))
  rng = jax.random.key(9)
  offline = _offline(tiny_model, feats, controls, rng)
  stream = MotionStream(window_fn, params, encode_fn, controls, rng, first_window=first_window,
                        **_stream_kwargs(c, model))
  motion, arrivals = _stream_frames(stream, feats)
  assert arrivals[0] == (w + model.audio_encoder.lookahead, w)
  np.testing.assert_allclose(motion, offline, atol=1e-5)


def test_short_first_window_compiles_nothing_new(tiny_model):
  c, model, params, window_fn, encode_fn = tiny_model
  w, lookahead = c.model.window, model.audio_encoder.lookahead
  feats = np.asarray(jax.random.normal(jax.random.key(8), (3 * w + 1, 4, 80))) * 2 - 5
  controls = S.make_controls(c.model.emotion_dim)

  def run(first_window):
    lengths = []

    def encode(p, x):  # records each encoder buffer length
      lengths.append(x.shape[1])
      return encode_fn(p, x)

    stream = MotionStream(window_fn, params, encode, controls, jax.random.key(0),
                          first_window=first_window, **_stream_kwargs(c, model))
    _stream_frames(stream, feats)
    return lengths

  run(None)
  compiled = window_fn._cache_size()  # pylint: disable=protected-access
  lengths = run(2)
  assert window_fn._cache_size() == compiled == 1  # pylint: disable=protected-access
  # Every buffer but a look-ahead stream's last one has one length, the short first one included.
  steady = model.audio_encoder.receptive_past + lookahead + w + lookahead
  assert set(lengths[:-1]) == {steady}


@pytest.mark.parametrize("first_window", [1, 2, 3, 5])  # K = 3
def test_short_first_window_continues_from_the_emitted_frames(first_window):
  delta = 0.05
  fn = S.make_sample_window(_ramp_denoiser(delta), _config(5, "ddpm"))
  encode = jax.jit(lambda p, x: x.reshape(x.shape[:2] + (-1,))[..., :DA])  # (1, T, DA)
  stream = MotionStream(fn, None, encode, _controls(), jax.random.key(0), window=W, context=K,
                        motion_dim=DM, audio_dim=DA, receptive_past=0,
                        first_window=first_window)
  t_total = 2 * W + 5
  motion, _ = _stream_frames(stream, np.zeros((t_total, 4, 80), np.float32))
  # One continuous ramp: window 1 continues from frame F - 1, not from the first window's
  # unemitted tail (frame W - 1), also when F < K. Its anchor is the level of those emitted
  # frames, so window 1 is fed them unchanged; later windows are held at that level.
  assert motion.shape == (t_total, DM)
  np.testing.assert_allclose(motion[0], delta, atol=1e-5)
  np.testing.assert_allclose(np.diff(motion[:first_window + W], axis=0), delta, atol=1e-4)
  assert np.abs(motion).max() <= (first_window + 2 * W) * delta + 1e-4


@pytest.mark.parametrize("first_window", [0, W + 1])
def test_first_window_out_of_range_is_refused(first_window):
  with pytest.raises(ValueError, match="first_window"):
    MotionStream(None, None, None, _controls(), jax.random.key(0), window=W, context=K,
                 motion_dim=DM, audio_dim=DA, receptive_past=0, first_window=first_window)
