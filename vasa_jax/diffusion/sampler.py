"""Motion sampling: multi-condition CFG, one jitted window sampler, and whole sequences.

The model is passed in as a function `denoise_fn(params, x_t, t, cond) -> x0_hat` (see
`vasa_jax.models.motion_dit.make_apply_fns`), so tests can use analytic fake denoisers.

Windows (VASA-1 section 3.2): a sequence of T frames is generated as ceil(T / W) consecutive,
non-overlapping windows of W frames. Window i is conditioned on the last K generated frames of
window i - 1 and on their audio features (`carry`); the first window has `has_prev` False. The
last window is zero-padded to W frames with `has_audio` False on the padding and trimmed after.
Window i's noise comes from `fold_in(rng, i)`, so a streaming generator reproduces it exactly.
`WindowLoop` is the one place that walks windows; offline and streaming generation both use it.

Carry layout (chosen here): {"motion_prev": (B, K, Dm) generated motion, "audio_prev": (B, K, Da)
*encoded* audio features (not raw log-mel rows: the encoder runs once per frame over the whole
stream, see `inference/streaming.py`), "has_prev": (B,) bool, "motion_anchor": (B, 1, Dm) the
mean of the first window's last K frames (optional)}.

Anchored context (issue 18): fed its own output, the model adds a small bias to the context's
level every window, so over a minute the pose random-walks 2-3 training std away and the
dynamics freeze (the mouth stops moving). With `motion_anchor` in the carry, the context is fed
with its own shape (motion_prev minus its mean) at the level the first window chose
(`anchor_context`): local continuity is kept, the level cannot accumulate. A carry without the
key (older callers) is fed as is.

The denoising loop is one `lax.scan` inside one jitted call (maxdiffusion style); guidance scales
are traced arguments, so changing them does not retrace.
"""
from __future__ import annotations

from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax.constants import CFG_AUDIO, CFG_GAZE
from vasa_jax.diffusion import schedule as schedule_lib

SAMPLERS = {"ddim": 0.0, "ddpm": 1.0}  # name -> eta


def make_controls(emotion_dim: int, *, gaze=None, distance=None, emotion=None,
                  batch: int = 1) -> dict:
  """Control conditions for sampling, batched; None means "not given" (null token).

  VASA-1's inference defaults (forward gaze, average distance, no emotion) correspond to passing
  gaze=(0, 0), distance=(0,) (normalised) and emotion=None.

  Args:
    emotion_dim: E.
    gaze: (2,) theta, phi in radians, or None.
    distance: (1,) normalised head distance, or None.
    emotion: (E,) emotion offset, or None.
    batch: B.

  Returns:
    {"gaze" (B, 2), "distance" (B, 1), "emotion" (B, E), "has_gaze", "has_distance",
    "has_emotion" (B,) bool}.
  """
  def one(value, size, key):
    arr = np.zeros((size,), np.float32) if value is None else np.asarray(value, np.float32)
    if arr.shape != (size,):
      raise ValueError(f"{key} must have shape ({size},), got {arr.shape}")
    return (jnp.broadcast_to(jnp.asarray(arr), (batch, size)),
            jnp.full((batch,), value is not None, bool))

  out = {}
  for key, value, size in (("gaze", gaze, 2), ("distance", distance, 1),
                           ("emotion", emotion, emotion_dim)):
    out[key], out[f"has_{key}"] = one(value, size, key)
  return out


def initial_carry(batch: int, context: int, motion_dim: int, audio_dim: int) -> dict:
  """The carry of the first window: zeros with `has_prev` False."""
  return {"motion_prev": jnp.zeros((batch, context, motion_dim), jnp.float32),
          "audio_prev": jnp.zeros((batch, context, audio_dim), jnp.float32),
          "has_prev": jnp.zeros((batch,), bool),
          "motion_anchor": jnp.zeros((batch, 1, motion_dim), jnp.float32)}


def anchor_context(carry: dict) -> dict:
  """The carry as the model sees it: motion_prev moved to the anchor level, its shape kept.

  motion_prev - mean_K(motion_prev) + motion_anchor, (B, K, Dm); without `motion_anchor` the
  carry is returned unchanged.
  """
  if "motion_anchor" not in carry:
    return carry
  prev = carry["motion_prev"]  # (B, K, Dm)
  return dict(carry, motion_prev=prev - prev.mean(1, keepdims=True) + carry["motion_anchor"])


def next_anchor(carry: dict, motion_prev: jax.Array) -> jax.Array:
  """(B, 1, Dm): the old anchor once set, else the level of the first window's last frames."""
  level = motion_prev.mean(1, keepdims=True)  # (B, 1, Dm)
  return jnp.where(carry["has_prev"][:, None, None], carry["motion_anchor"], level)


def guided_x0(apply_fn: Callable, params, x_t: jax.Array, t: jax.Array, cond: dict,
              cfg_audio: float | jax.Array, cfg_gaze: float | jax.Array) -> jax.Array:
  """VASA-1 multi-condition classifier-free guidance in one batched forward pass.

  x0 = (1 + la + lg) H(C) - la H(C without audio) - lg H(C without gaze).

  Args:
    apply_fn: denoise_fn(params, x_t, t, cond) -> x0_hat.
    params: model parameters.
    x_t: (B, W, Dm).
    t: (B,) timesteps.
    cond: the full condition dict (see `MotionDiT`).
    cfg_audio: la.
    cfg_gaze: lg.

  Returns:
    (B, W, Dm) guided x0.
  """
  b = x_t.shape[0]
  no_audio = dict(cond, has_audio=jnp.zeros_like(jnp.asarray(cond["has_audio"]), bool))
  no_gaze = dict(cond, has_gaze=jnp.zeros((b,), bool))
  variants = [cond, no_audio, no_gaze]
  keys = sorted(cond)
  stacked = {k: jnp.concatenate([jnp.asarray(v[k]) for v in variants], axis=0) for k in keys}
  out = apply_fn(params, jnp.concatenate([x_t] * 3, 0), jnp.concatenate([t] * 3, 0), stacked)
  h_c, h_no_audio, h_no_gaze = jnp.split(out, 3, axis=0)
  la = jnp.asarray(cfg_audio, h_c.dtype)
  lg = jnp.asarray(cfg_gaze, h_c.dtype)
  return (1.0 + la + lg) * h_c - la * h_no_audio - lg * h_no_gaze


def build_cond(carry: dict, audio_window: jax.Array, audio_mask: jax.Array, controls: dict) -> dict:
  """Joins the carry, a window's encoded audio and the controls into the DiT condition dict."""
  return {"audio": audio_window, "has_audio": audio_mask,
          "motion_prev": carry["motion_prev"], "audio_prev": carry["audio_prev"],
          "has_prev": carry["has_prev"], **controls}


def sample_window(apply_fn: Callable, params, carry: dict, audio_window: jax.Array,
                  controls: dict, rng: jax.Array, *, audio_mask: jax.Array | None = None,
                  schedule: schedule_lib.Schedule | None = None, steps: int = 50,
                  sampler: str = "ddim", cfg_audio: float | jax.Array = CFG_AUDIO,
                  cfg_gaze: float | jax.Array = CFG_GAZE) -> tuple[dict, jax.Array]:
  """Generates one motion window by DDIM / DDPM with guidance (one `lax.scan`).

  Args:
    apply_fn: denoise_fn(params, x_t, t, cond) -> x0_hat.
    params: model parameters.
    carry: {"motion_prev" (B, K, Dm), "audio_prev" (B, K, Da), "has_prev" (B,)} and optionally
      "motion_anchor" (B, 1, Dm) (see `anchor_context`).
    audio_window: (B, W, Da) encoded audio of the window.
    controls: from `make_controls`.
    rng: this window's key.
    audio_mask: (B, W) bool, False on padded frames; None = all True.
    schedule: the training schedule (default cosine, 1000 steps).
    steps: sampling steps S.
    sampler: "ddim" (eta 0) or "ddpm" (eta 1).
    cfg_audio, cfg_gaze: guidance scales.

  Returns:
    (new carry with the window's last K frames, motion (B, W, Dm)).
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"Unknown sampler {sampler!r}; use one of {sorted(SAMPLERS)} "
                     "(config.diffusion.sampler)")
  schedule = schedule or schedule_lib.make_schedule("cosine", 1000)
  b, w, _ = audio_window.shape
  k, dm = carry["motion_prev"].shape[1:]
  if audio_mask is None:
    audio_mask = jnp.ones((b, w), bool)
  cond = build_cond(anchor_context(carry), audio_window, audio_mask, controls)
  ts = schedule_lib.sampling_timesteps(schedule.num_steps, steps)
  ts_prev = np.concatenate([ts[1:], [-1]]).astype(np.int32)
  eta = SAMPLERS[sampler]
  rng_init, rng_steps = jax.random.split(rng)
  x_init = jax.random.normal(rng_init, (b, w, dm), jnp.float32)

  def body(x_t, inputs):
    i, t, t_prev = inputs
    tb = jnp.full((b,), t, jnp.int32)
    x0 = guided_x0(apply_fn, params, x_t, tb, cond, cfg_audio, cfg_gaze)
    noise = jax.random.normal(jax.random.fold_in(rng_steps, i), x_t.shape, x_t.dtype)
    x_prev = schedule_lib.ddim_step(schedule, x_t, x0, tb, jnp.full((b,), t_prev, jnp.int32),
                                    noise, eta)
    return x_prev, None

  xs = (jnp.arange(steps, dtype=jnp.int32), jnp.asarray(ts), jnp.asarray(ts_prev))
  motion, _ = jax.lax.scan(body, x_init, xs)
  new_carry = {"motion_prev": motion[:, w - k:], "audio_prev": audio_window[:, w - k:],
               "has_prev": jnp.ones((b,), bool)}
  if "motion_anchor" in carry:
    new_carry["motion_anchor"] = next_anchor(carry, motion[:, w - k:])
  return new_carry, motion


def make_sample_window(apply_fn: Callable, config, *, steps: int | None = None,
                       sampler: str | None = None) -> Callable:
  """One jitted window sampler reused for every window.

  Args:
    apply_fn: denoise_fn(params, x_t, t, cond) -> x0_hat.
    config: a `configs/motion.py` config (`config.diffusion`).
    steps: sampling steps (default config.diffusion.sample_steps).
    sampler: "ddim" | "ddpm" (default config.diffusion.sampler).

  Returns:
    fn(params, carry, audio_window, audio_mask, controls, rng, cfg_audio, cfg_gaze)
    -> (carry, motion (B, W, Dm)); scales are traced, so new values reuse the compiled code.
  """
  d = config.diffusion
  schedule = schedule_lib.make_schedule(d.schedule, d.train_steps)
  steps = int(steps or d.sample_steps)
  sampler = sampler or d.sampler

  def fn(params, carry, audio_window, audio_mask, controls, rng, cfg_audio, cfg_gaze):
    return sample_window(apply_fn, params, carry, audio_window, controls, rng,
                         audio_mask=audio_mask, schedule=schedule, steps=steps, sampler=sampler,
                         cfg_audio=cfg_audio, cfg_gaze=cfg_gaze)

  return jax.jit(fn)


def window_count(num_frames: int, window: int) -> int:
  """ceil(T / W), at least 1."""
  return max(1, -(-num_frames // window))


def pad_window(audio: jax.Array, start: int, window: int) -> tuple[jax.Array, jax.Array]:
  """Frames [start, start + W) of (T, Da) features, zero-padded past T, and their (W,) mask."""
  seg = audio[start:start + window]
  n = seg.shape[0]
  seg = jnp.pad(seg, ((0, window - n), (0, 0)))
  return seg, jnp.arange(window) < n


class WindowLoop:
  """The window loop every generator shares: `sample_sequence`, `Pipeline.generate` and
  `MotionStream` (streaming) all walk the audio through one of these.

  It owns the window boundaries (window 0 emits `first_window` frames, every later one W), the
  padding of a short window to W frames (audio masked), the carry (incl. `motion_anchor`) and the
  per-window key fold_in(rng, i). Callers only supply each window's encoded audio, as soon as
  they have it: all at once offline (`windows`), chunk by chunk when streaming (`step`).

  Args:
    sample_window_fn: from `make_sample_window`.
    params: model parameters.
    controls: from `make_controls` (batch 1).
    rng: the sequence seed.
    window: W.
    context: K.
    motion_dim: Dm.
    audio_dim: Da.
    cfg_audio, cfg_gaze: guidance scales.
    first_window: frames emitted by window 0 (None = W).
  """

  def __init__(self, sample_window_fn: Callable, params, controls: dict, rng: jax.Array, *,
               window: int, context: int, motion_dim: int, audio_dim: int,
               cfg_audio: float | jax.Array = CFG_AUDIO, cfg_gaze: float | jax.Array = CFG_GAZE,
               first_window: int | None = None):
    first_window = window if first_window is None else int(first_window)
    if not 1 <= first_window <= window:
      raise ValueError(f"first_window must be in [1, {window}] (the window W), got {first_window}")
    self._sample_window = sample_window_fn
    self._params, self._controls, self._rng = params, controls, rng
    self._cfg = (cfg_audio, cfg_gaze)
    self.window, self.context, self.first_window = window, context, first_window
    self.motion_dim = motion_dim
    self.carry = initial_carry(1, context, motion_dim, audio_dim)
    self.index = 0  # the next window
    self.start = 0  # its first frame

  @property
  def length(self) -> int:
    """Frames the next window emits when its audio is complete: F for window 0, W after."""
    return self.first_window if self.index == 0 else self.window

  def step(self, audio: jax.Array) -> jax.Array:
    """Samples the next window from its encoded audio (m, Da), 1 <= m <= `length` (fewer only
    for the last window), and returns its motion (m, Dm) as a device array (not waited for)."""
    m = audio.shape[0]
    if not 1 <= m <= self.length:
      raise ValueError(f"window {self.index} takes 1..{self.length} frames of audio, got {m}")
    seg, mask = pad_window(audio, 0, self.window)  # (W, Da), (W,)
    prev_carry = self.carry
    self.carry, motion = self._sample_window(
        self._params, self.carry, seg[None], mask[None], self._controls,
        jax.random.fold_in(self._rng, self.index), *self._cfg)
    motion = motion[0, :m]  # (m, Dm)
    if m < self.window:
      # The sampler's carry holds the window's last K of W frames; after a short window most
      # of those were never emitted, so continue from the frames that were.
      self.carry = self._carry_from(motion, seg, prev_carry)
    self.index += 1
    self.start += m
    return motion

  def windows(self, audio: jax.Array) -> Iterator[jax.Array]:
    """Yields the motion (m, Dm) of each window over all of (T, Da) encoded audio."""
    while self.start < audio.shape[0]:
      yield self.step(audio[self.start:self.start + self.length])

  def _carry_from(self, motion: jax.Array, audio: jax.Array, prev_carry: dict) -> dict:
    """The carry after emitting `motion` (m, Dm) with encoded audio `audio` (>= m, Da).

    Shapes and dtypes match the sampler's own carry, so the next window reuses its compiled
    code. With m < K there is no K-frame past: the first frame is repeated before it (a still
    head before the stream started), which keeps the next window continuous, where dropping
    the context (`has_prev` False, as training does that close to a clip start) would not.
    """
    m = motion.shape[0]
    idx = np.clip(np.arange(m - self.context, m), 0, None)  # (K,) last K, first one repeated
    carry = {"motion_prev": motion[idx][None],  # (1, K, Dm)
             "audio_prev": audio[idx][None],  # (1, K, Da)
             "has_prev": jnp.ones((1,), bool)}
    if "motion_anchor" in prev_carry:  # the level of the frames emitted, as the sampler does
      carry["motion_anchor"] = next_anchor(prev_carry, carry["motion_prev"])
    return carry


def sample_sequence(sample_window_fn: Callable, params, audio: jax.Array, controls: dict,
                    rng: jax.Array, *, window: int, context: int, motion_dim: int,
                    encode_fn: Callable | None = None, cfg_audio: float = CFG_AUDIO,
                    cfg_gaze: float = CFG_GAZE) -> jax.Array:
  """Generates motion for audio of any length, window by window (`WindowLoop`).

  Args:
    sample_window_fn: from `make_sample_window`.
    params: model parameters (passed to `sample_window_fn` and `encode_fn`).
    audio: (T, Da) encoded features, or (T, 4, 80) log-mel rows when `encode_fn` is given.
    controls: from `make_controls` (batch 1).
    rng: the sequence seed; window i uses fold_in(rng, i).
    window: W.
    context: K.
    motion_dim: Dm.
    encode_fn: encode_fn(params, (1, T, 4, 80)) -> (1, T, Da), run once over the whole audio.
    cfg_audio, cfg_gaze: guidance scales.

  Returns:
    (T, Dm) float32 motion (normalised, as the model was trained).
  """
  audio = jnp.asarray(audio, jnp.float32)
  if audio.ndim == 3:
    if encode_fn is None:
      raise ValueError("sample_sequence got log-mel rows (T, 4, 80) but no encode_fn")
    audio = encode_fn(params, audio[None])[0]  # (T, Da)
  if audio.ndim != 2:
    raise ValueError(f"audio must be (T, Da) or (T, 4, 80), got {audio.shape}")
  loop = WindowLoop(sample_window_fn, params, controls, rng, window=window, context=context,
                    motion_dim=motion_dim, audio_dim=audio.shape[1], cfg_audio=cfg_audio,
                    cfg_gaze=cfg_gaze)
  out = list(loop.windows(audio))
  return jnp.concatenate(out, axis=0) if out else jnp.zeros((0, motion_dim), jnp.float32)
