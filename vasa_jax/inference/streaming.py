"""Streaming motion generation: audio in, motion windows out as soon as they can be made.

`MotionStream` reproduces `vasa_jax.diffusion.sampler.sample_sequence` exactly (the same
`sampler.WindowLoop` walks the windows, so the same boundaries, carry and per-window keys
fold_in(rng, i); same encoder features) while audio arrives in chunks:

- audio is accepted as log-mel feature frames (n, 4, 80), or as raw 16 kHz samples (n,), which are
  turned into feature frames incrementally with `vasa_jax.data.audio_features.log_mel` (a frame's
  rows need 176 samples past the frame's end, so frames lag the samples by one frame);
- window i (frames [iW, iW + W)) is emitted once feature frames up to iW + W + lookahead exist:
  the audio encoder's features for those frames are then final. They are computed on a buffer
  that starts before the window (see below), which gives the same numbers as encoding
  the whole sequence at once (the encoder's receptive field is bounded, see
  `models/audio_encoder.py`; the buffer starts receptive_past + lookahead frames early because the
  encoder's look-ahead shift drops the buffer's first `lookahead` frames);
- `flush()` ends the stream: the remaining frames are generated, the last window padded (audio
  masked) and trimmed, exactly as offline.

Latency: W + lookahead frames of audio (plus one frame for raw samples) and the sampling time.

`first_window=F` (1 <= F <= W; None = W, the offline windows above) is a latency lever: window 0
leaves as soon as F + lookahead frames exist. It is sampled like the last, partial window of a clip
(W frames, audio past F masked; training masks such tails too, `p_truncate_audio`) and only its
first F frames are emitted; later windows cover [F + (i - 1) W, F + i W) and are conditioned on the
last K frames actually emitted. Only the first frame gets earlier: window 1 still needs W more
frames of audio, so a player that must not stall still waits W - F frames once, after the first F.
The output then differs from offline generation (other window boundaries), not its shapes: every
window is sampled at W frames and every encoder buffer is padded to one length, so the lever
compiles nothing new.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax.constants import CFG_AUDIO, CFG_GAZE, N_MELS, ROWS_PER_FRAME, SAMPLES_PER_FRAME
from vasa_jax.data.audio_features import frames_for_audio, log_mel
from vasa_jax.diffusion import sampler as sampler_lib
from vasa_jax.models.motion_dit import make_apply_fns

# Rows of frame t are centred up to sample 640 t + 560 and span n_fft / 2 = 256 samples around it.
SAMPLE_LOOKAHEAD = 176


class MotionStream:
  """Incremental motion generator (see the module docstring).

  Args:
    sample_window_fn: from `sampler.make_sample_window` (the same one offline generation uses).
    params: model parameters.
    encode_fn: encode_fn(params, (1, T, 4, 80)) -> (1, T, Da).
    controls: from `sampler.make_controls` (batch 1).
    rng: the sequence seed.
    window: W.
    context: K.
    motion_dim: Dm.
    audio_dim: Da.
    receptive_past: past frames that influence one encoder output frame.
    lookahead: future frames that influence one encoder output frame.
    cfg_audio, cfg_gaze: guidance scales.
    first_window: frames emitted by the first window (None = W; see the module docstring).
  """

  def __init__(self, sample_window_fn: Callable, params, encode_fn: Callable, controls: dict,
               rng: jax.Array, *, window: int, context: int, motion_dim: int, audio_dim: int,
               receptive_past: int, lookahead: int = 0, cfg_audio: float = CFG_AUDIO,
               cfg_gaze: float = CFG_GAZE, first_window: int | None = None):
    self._loop = sampler_lib.WindowLoop(
        sample_window_fn, params, controls, rng, window=window, context=context,
        motion_dim=motion_dim, audio_dim=audio_dim, cfg_audio=cfg_audio, cfg_gaze=cfg_gaze,
        first_window=first_window)
    self._params = params
    self._encode = encode_fn
    self.window, self.context, self.first_window = window, context, self._loop.first_window
    self.receptive_past, self.lookahead = receptive_past, lookahead
    # The encoder shifts its input left by `lookahead` frames before its causal stack, so a
    # buffer needs receptive_past + lookahead frames before the first frame whose features it
    # must get right (the first `lookahead` buffer frames only reach outputs before the buffer).
    self._left = receptive_past + lookahead
    self._motion_dim = motion_dim
    self._feats = np.zeros((0, ROWS_PER_FRAME, N_MELS), np.float32)  # kept frames
    self._feat_start = 0  # absolute index of self._feats[0]
    self._samples = np.zeros((0,), np.float32)  # raw samples not yet all turned into frames
    self._sample_start = 0  # absolute sample index of self._samples[0]
    self._frames_from_samples = 0
    self._flushed = False

  @property
  def frames_received(self) -> int:
    """Feature frames received so far."""
    return self._feat_start + self._feats.shape[0]

  def push(self, audio) -> np.ndarray:
    """Adds audio and returns the motion frames that became available, (n, Dm), maybe n = 0.

    Args:
      audio: (n, 4, 80) log-mel feature frames or (n,) float32 16 kHz samples. Do not mix kinds.
    """
    if self._flushed:
      raise RuntimeError("MotionStream.push after flush(); start a new stream")
    audio = np.asarray(audio, np.float32)
    if audio.ndim == 1:
      self._add_samples(audio, final=False)
    elif audio.ndim == 3 and audio.shape[1:] == (ROWS_PER_FRAME, N_MELS):
      self._add_frames(audio)
    else:
      raise ValueError(f"push expects (n, {ROWS_PER_FRAME}, {N_MELS}) feature frames or (n,) "
                       f"samples, got {audio.shape}")
    out = []
    while self._loop.start + self._loop.length + self.lookahead <= self.frames_received:
      out.append(self._emit(final=False))
    return self._join(out)

  def flush(self) -> np.ndarray:
    """Ends the stream and returns all remaining motion frames, (n, Dm)."""
    if self._flushed:
      return self._join([])
    if self._samples.size or self._sample_start:
      self._add_samples(np.zeros((0,), np.float32), final=True)
    self._flushed = True
    out = []
    while self._loop.start < self.frames_received:
      out.append(self._emit(final=True))
    return self._join(out)  # an empty stream gives (0, Dm), as offline does

  # -- internals -----------------------------------------------------------------------------

  def _join(self, parts):
    return np.concatenate(parts, 0) if parts else np.zeros((0, self._motion_dim), np.float32)

  def _add_frames(self, frames: np.ndarray):
    self._feats = np.concatenate([self._feats, frames], 0)

  def _add_samples(self, samples: np.ndarray, final: bool):
    self._samples = np.concatenate([self._samples, samples])
    total = self._sample_start + self._samples.size
    if final:
      ready = frames_for_audio(total)
    else:
      ready = max(0, (total - SAMPLE_LOOKAHEAD) // SAMPLES_PER_FRAME)
    first = self._frames_from_samples
    if ready <= first:
      return
    # Start one frame early (or at 0, where offline zero-pads too) so row windows see real audio.
    lead = 1 if first > 0 else 0
    seg_start = (first - lead) * SAMPLES_PER_FRAME
    seg = self._samples[seg_start - self._sample_start:]
    if not final:
      seg = seg[:(ready * SAMPLES_PER_FRAME + SAMPLE_LOOKAHEAD) - seg_start]
    else:
      # Offline zero-pads beyond the end; the last frame's window may need samples past `total`.
      seg = seg[:max(0, total - seg_start)]
    feats = log_mel(seg, num_frames=ready - first + lead)[lead:]
    self._add_frames(feats)
    self._frames_from_samples = ready
    keep_from = max(0, (ready - 1) * SAMPLES_PER_FRAME)  # one frame of left context
    self._samples = self._samples[keep_from - self._sample_start:]
    self._sample_start = keep_from

  def _encoded_window(self, start: int, end: int, final: bool) -> jax.Array:
    """Encoded audio of frames [start, end), (end - start, Da), as offline encoding gives it."""
    enc_start = max(0, start - self._left)
    enc_end = self.frames_received if final else end + self.lookahead
    enc_end = min(enc_end, self.frames_received)
    buf = self._feats[enc_start - self._feat_start:enc_end - self._feat_start]  # (n, 4, 80)
    # Output frame t sees input frames up to t + lookahead, so once those exist for every frame
    # we keep, zeros after them change nothing we keep: pad every such buffer to the longest
    # one, so all windows (a short first one, the early ones that start before `_left`, a last
    # one without look-ahead) share one compiled encoder shape instead of one per clip length.
    # A last window with look-ahead lacks its frames' future, where offline sees zeros *after*
    # the encoder's input layer, so padding the input would leak in; it stays short.
    full = self._left + self.window + self.lookahead
    if enc_end >= end + self.lookahead and buf.shape[0] < full:
      buf = np.concatenate([buf, np.zeros((full - buf.shape[0],) + buf.shape[1:], buf.dtype)])
    feats = self._encode(self._params, jnp.asarray(buf)[None])[0]  # (n, Da)
    return feats[start - enc_start:end - enc_start]

  def _emit(self, final: bool) -> np.ndarray:
    start = self._loop.start
    end = min(start + self._loop.length, self.frames_received)
    motion = np.asarray(self._loop.step(self._encoded_window(start, end, final)))  # (m, Dm)
    # Keep only the feature frames later windows can still need.
    drop = max(0, end - self._left) - self._feat_start
    if drop > 0:
      self._feats = self._feats[drop:]
      self._feat_start += drop
    return motion


def make_stream(model, params, config, controls: dict, rng: jax.Array, *,
                steps: int | None = None, sampler: str | None = None,
                sample_window_fn: Callable | None = None,
                first_window: int | None = None) -> MotionStream:
  """A `MotionStream` for a `MotionModel` and its config (guidance scales from the config).

  Args:
    model: `vasa_jax.models.motion_dit.MotionModel` (e.g. `build_motion_model(config)`).
    params: its parameters (unboxed).
    config: the run's `configs/motion.py` config.
    controls: from `sampler.make_controls`.
    rng: the sequence seed.
    steps, sampler: override config.diffusion.sample_steps / sampler.
    sample_window_fn: reuse an existing jitted window sampler (avoids a recompile).
    first_window: frames emitted by the first window (None = W; see the module docstring).

  Returns:
    The stream.
  """
  denoise_fn, encode_fn = make_apply_fns(model)
  window_fn = sample_window_fn or sampler_lib.make_sample_window(denoise_fn, config, steps=steps,
                                                                 sampler=sampler)
  m = config.model
  return MotionStream(window_fn, params, jax.jit(encode_fn), controls, rng, window=m.window,
                      context=m.context, motion_dim=m.motion_dim, audio_dim=m.audio_width,
                      receptive_past=model.audio_encoder.receptive_past,
                      lookahead=model.audio_encoder.lookahead,
                      cfg_audio=config.diffusion.cfg_audio, cfg_gaze=config.diffusion.cfg_gaze,
                      first_window=first_window)
