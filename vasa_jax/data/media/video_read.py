"""Reading video frames at a chosen frame rate (ffmpeg's `fps` filter through the binary
`imageio_ffmpeg` ships) and resampling frame sequences.

Conventions: see `vasa_jax.data.media`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fractions
import logging
import math
from typing import Iterator

import numpy as np

from vasa_jax.constants import FPS, SAMPLE_RATE
from vasa_jax.data.media.audio import read_audio
from vasa_jax.data.media.probing import (MediaInfo, _check_exists, _exact_rate, _ffmpeg_input,
                                         _nominal_rate, _tail, probe)
from vasa_jax.errors import VasaInputError


@dataclasses.dataclass(frozen=True, eq=False)
class Video:
  """A decoded clip.

  Attributes:
    frames: (T, H, W, 3) uint8 at `fps`.
    fps: frame rate of `frames` (after rate conversion).
    src_fps: nominal frame rate of the file (ffmpeg's tbr; for a variable-frame-rate file this
      is the frame grid, e.g. 30, not the average rate, e.g. 22.13).
    audio: (N,) float32 mono at 16 kHz, or None when the file has no audio stream.
    path: the file it came from.
  """
  frames: np.ndarray
  fps: float
  src_fps: float
  audio: np.ndarray | None
  path: str

  @property
  def num_frames(self) -> int:
    return int(self.frames.shape[0])

  @property
  def duration(self) -> float:
    return self.num_frames / self.fps


def _rate_ratio(src_fps: float, dst_fps: float) -> tuple[int, int]:
  """dst / src as a reduced integer fraction (p, r), so frame grids are compared exactly."""
  q = _exact_rate(float(dst_fps)) / _exact_rate(float(src_fps))
  return q.numerator, q.denominator


def resample_indices(num_frames: int, src_fps: float, dst_fps: float) -> np.ndarray:
  """Source frame index for each output frame, exactly as ffmpeg's `fps` filter picks them.

  `read_video(path, fps=...)` lets ffmpeg's `fps` filter convert the rate (it follows the real
  timestamps, which matters for variable-frame-rate files); for a constant-rate source this
  function gives the same frames. Source frame j sits on output slot round(j * dst / src)
  (halves up); output frame i takes the last source frame on a slot <= i, i.e. the last one
  before time (i + 0.5) / dst_fps. The output lasts as long as the source: round(T * dst / src)
  frames, the last source frame repeated if needed. Rates such as 29.97 are read as 30000/1001.

  Args:
    num_frames: source length T.
    src_fps: source frame rate.
    dst_fps: target frame rate.

  Returns:
    (round(T * dst / src),) int64 indices into the source frames.
  """
  if not (src_fps > 0 and dst_fps > 0):
    raise ValueError(f"frame rates must be positive, got {src_fps} -> {dst_fps}")
  p, r = _rate_ratio(src_fps, dst_fps)  # dst / src = p / r
  n_out = (2 * int(num_frames) * p + r) // (2 * r)  # floor(T * p / r + 1/2)
  i = np.arange(n_out, dtype=np.int64)
  # Largest j with j * p / r < i + 1/2, i.e. ceil((2i + 1) r / 2p) - 1, in integers.
  idx = -((-(2 * i + 1) * r) // (2 * p)) - 1
  return np.clip(idx, 0, max(int(num_frames) - 1, 0))


def resample_frames(frames: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
  """Changes the frame rate by frame selection (no blending), like ffmpeg's `fps` filter.

  Args:
    frames: (T, ...) array.
    src_fps: its frame rate.
    dst_fps: wanted frame rate.

  Returns:
    (round(T * dst_fps / src_fps), ...) array; see `resample_indices` for which frames.
  """
  frames = np.asarray(frames)
  if abs(src_fps - dst_fps) < 1e-6:
    return frames
  return frames[resample_indices(frames.shape[0], src_fps, dst_fps)]


def _video_filters(rate: fractions.Fraction | None, max_side: int | None) -> list[str]:
  """ffmpeg output options: `fps` (frame-rate conversion by timestamp), then downscaling.

  The rate is converted by ffmpeg's `fps` filter rather than by counting decoded frames: in a
  variable-frame-rate file (phone recordings, screen captures) frames are not evenly spaced, so
  only their timestamps say which frame belongs at which output time. With an explicit rate the
  rawvideo pipe also never depends on the rate ffmpeg would pick on its own.
  """
  filters = []
  if rate is not None:
    filters.append(f"fps={rate.numerator}/{rate.denominator}")
  if max_side:
    s = int(max_side)
    # Keep the aspect ratio; -2 keeps that side even. Never upscale.
    filters.append(f"scale='if(gte(iw,ih),min(iw,{s}),-2)':'if(gte(iw,ih),-2,min(ih,{s}))'"
                   f":flags=area")
  return ["-vf", ",".join(filters)] if filters else []


class _DropSizeWarning(logging.Filter):
  """imageio_ffmpeg warns whenever output and source sizes differ, i.e. on every downscale."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "is different from the source frame size" not in record.getMessage()


@contextlib.contextmanager
def _quiet_imageio_ffmpeg():
  logger = logging.getLogger("imageio_ffmpeg")
  flt = _DropSizeWarning()
  logger.addFilter(flt)
  try:
    yield
  finally:
    logger.removeFilter(flt)


def _raw_frames(path: str, rate: fractions.Fraction | None,
                max_side: int | None) -> Iterator[np.ndarray]:
  """Yields read-only (H, W, 3) uint8 views at `rate` (rotation metadata applied)."""
  import imageio_ffmpeg  # pylint: disable=import-outside-toplevel
  gen = imageio_ffmpeg.read_frames(_ffmpeg_input(path), pix_fmt="rgb24",
                                   input_params=["-nostdin"],
                                   output_params=_video_filters(rate, max_side))
  try:
    try:
      with _quiet_imageio_ffmpeg():
        meta = next(gen)
    except (IOError, RuntimeError, IndexError, AttributeError, StopIteration) as e:
      if "received no packets" in str(e):
        raise VasaInputError(f"{path!r} has a video stream but no decodable frames (truncated "
                             f"or empty). Re-export the video.") from e
      raise VasaInputError(f"Cannot decode video {path!r}: {_tail(str(e))}. Re-export it.") from e
    w, h = meta["size"]
    while True:
      try:
        buf = next(gen)
      except StopIteration:
        return
      except RuntimeError as e:
        raise VasaInputError(f"Video {path!r} is truncated or corrupt: {_tail(str(e))}. "
                             f"Re-export it.") from e
      yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
  finally:
    gen.close()  # stops ffmpeg when the caller stops early


def _video_info(path) -> MediaInfo:
  path = _check_exists(path, "Video")
  info = probe(path)
  if not info.has_video:
    raise VasaInputError(f"{path!r} has no video stream. Give a video file (mp4/mov/webm/...).")
  return info


def _decode_rates(info: MediaInfo, fps: float | None) -> tuple[float, fractions.Fraction | None]:
  """(source rate, rate to ask ffmpeg for) for reading at `fps` (None: the source rate)."""
  src = _nominal_rate(info.fps, info.tbr)
  if fps:
    return (float(src) if src else float(fps)), _exact_rate(float(fps))
  if src is None:
    return float(FPS), None  # no rate printed at all: take ffmpeg's frames as they come
  return float(src), src


def iter_video_frames(path, fps: float | None = None,
                      max_side: int | None = None) -> Iterator[np.ndarray]:
  """Yields the frames of a video one at a time (bounded memory, for long clips).

  Args:
    path: a video file.
    fps: output frame rate, converted by ffmpeg from the frame timestamps (so variable-frame-
      rate files keep their real duration); None keeps the source rate (tbr, see `MediaInfo`).
    max_side: if set, downscale (never upscale) so the longer side is at most this.

  Yields:
    (H, W, 3) uint8 frames (writable copies).

  Raises:
    VasaInputError: missing or unreadable file, or no video stream.
  """
  info = _video_info(path)
  _, rate = _decode_rates(info, fps)
  for frame in _raw_frames(info.path, rate, max_side):
    yield frame.copy()


def read_video(path, fps: float | None = float(FPS), with_audio: bool = True,
               max_side: int | None = None) -> Video:
  """Decodes a whole video, resampled to `fps`, and its audio as 16 kHz mono.

  Args:
    path: a video file (mp4/mov/webm/flv/avi/mkv/...).
    fps: output frame rate, converted by ffmpeg from the frame timestamps (so variable-frame-
      rate files keep their real duration and audio sync); None keeps the source rate (tbr).
    with_audio: also decode the first audio stream (audio is None when the file has none).
    max_side: if set, downscale (never upscale) so the longer side is at most this; saves memory
      on 1080p sources (a 10 s 1080x1920 clip is 1.5 GB of frames at full size).

  Returns:
    A `Video`.

  Raises:
    VasaInputError: missing or unreadable file, no video stream, or zero decoded frames.
  """
  info = _video_info(path)
  src_fps, rate = _decode_rates(info, fps)
  out_fps = float(fps) if fps else src_fps
  # Preallocate from the container duration so frames are copied once; grow if it was short.
  buf = None
  n = 0
  for frame in _raw_frames(info.path, rate, max_side):
    if buf is None:
      est = int(math.ceil((info.duration or 1.0) * out_fps)) + 2
      buf = np.empty((max(est, 1),) + frame.shape, np.uint8)
    if n == buf.shape[0]:
      buf = np.concatenate([buf, np.empty_like(buf[: max(n // 4, 8)])], axis=0)
    buf[n] = frame
    n += 1
  if n == 0:
    raise VasaInputError(f"{info.path!r} has a video stream but no decodable frames. "
                         f"Re-export the video.")
  frames = buf[:n] if n > buf.shape[0] * 0.9 else buf[:n].copy()
  audio = None
  if with_audio and info.has_audio:
    audio = read_audio(info.path, sr=SAMPLE_RATE)
  return Video(frames=frames, fps=out_fps, src_fps=float(src_fps), audio=audio, path=info.path)
