"""Reading video frames at a chosen frame rate (decoded in-process with PyAV, the rate
converted by libavfilter's `fps` filter) and resampling frame sequences.

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
                                         _nominal_rate, _reason, probe)
from vasa_jax.errors import VasaInputError

log = logging.getLogger(__name__)


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


def _scale_args(max_side: int | None) -> str | None:
  """`scale` filter arguments for downscaling to `max_side`, or None for no downscaling."""
  if not max_side:
    return None
  s = int(max_side)
  # Keep the aspect ratio; -2 keeps that side even. Never upscale.
  return (f"w='if(gte(iw,ih),min(iw,{s}),-2)':h='if(gte(iw,ih),-2,min(ih,{s}))'"
          f":flags=area")


def _rotation(display_matrix: bytes | None) -> list[tuple[str, str | None]]:
  """Filters that turn a frame upright for its display matrix, as ffmpeg's CLI autorotates.

  The same angle rounding and the same choice of `transpose`/`hflip`/`vflip` as fftools, so a
  phone clip comes out exactly as `ffmpeg -i clip.mp4` shows it.
  """
  if not display_matrix or len(display_matrix) < 36:
    return []
  m = np.frombuffer(display_matrix[:36], dtype="<i4").astype(np.float64)
  # av_display_rotation_get: the counter-clockwise angle from the 16.16 fixed-point matrix.
  sx, sy = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
  if sx == 0 or sy == 0:
    return []
  rot = -math.degrees(math.atan2(m[1] / sy, m[0] / sx))
  theta = -math.copysign(math.floor(abs(rot) + 0.5), rot)  # C's round(): halves away from 0
  theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
  if abs(theta - 90) < 1:
    return [("transpose", "cclock_flip" if m[3] > 0 else "clock")]
  if abs(theta - 180) < 1:
    return ([("hflip", None)] if m[0] < 0 else []) + ([("vflip", None)] if m[4] < 0 else [])
  if abs(theta - 270) < 1:
    return [("transpose", "clock_flip" if m[3] < 0 else "cclock")]
  if abs(theta) > 1:
    return [("rotate", f"{theta:f}*PI/180")]
  return [("vflip", None)] if m[4] < 0 else []


class _FrameFilter:
  """ffmpeg's filter chain for one video stream, run in-process with PyAV's libavfilter.

  buffer -> [autorotation] -> fps -> [scale, area] -> format=rgb24 -> buffersink, built from
  the first decoded frame the way the ffmpeg CLI builds it (same filters, same conversion
  flags, same timestamps), so frames are identical to `ffmpeg -vf fps=...,scale=...`.
  """

  def __init__(self, first, stream, rate: fractions.Fraction | None, max_side: int | None):
    import av  # pylint: disable=import-outside-toplevel
    self.graph = graph = av.filter.Graph()
    sar = stream.codec_context.sample_aspect_ratio or fractions.Fraction(0, 1)
    chain = [graph.add(
        "buffer", video_size=f"{first.width}x{first.height}", pix_fmt=str(first.format.name),
        time_base=str(stream.time_base), pixel_aspect=f"{sar.numerator}/{sar.denominator}",
        colorspace=str(first.colorspace), range=str(first.color_range))]
    side = first.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    for name, args in _rotation(bytes(side) if side is not None else None):
      chain.append(graph.add(name, args))
    if rate is not None:
      chain.append(graph.add("fps", f"{rate.numerator}/{rate.denominator}"))
    scale = _scale_args(max_side)
    # Without a resize, the CLI's own converter to rgb24 (its default flags are bicubic).
    chain.append(graph.add("scale", scale if scale else "flags=bicubic"))
    chain.append(graph.add("format", "rgb24"))
    chain.append(graph.add("buffersink"))
    graph.link_nodes(*chain)
    graph.configure()

  def filter(self, frame) -> Iterator[tuple[int, fractions.Fraction, int, np.ndarray]]:
    """Pushes `frame` (None: end of stream, flush) and yields (pts, time base, duration,
    (H, W, 3) uint8) of each frame the graph then has ready."""
    import av  # pylint: disable=import-outside-toplevel
    self.graph.vpush(frame)
    while True:
      try:
        out = self.graph.vpull()
      except (av.BlockingIOError, av.EOFError):
        return
      yield out.pts, out.time_base, out.duration, out.to_ndarray()


def _rescale(value: int, src: fractions.Fraction, dst: fractions.Fraction) -> int:
  """av_rescale_q: value * src / dst rounded to nearest, halves away from zero."""
  q = value * src / dst
  return int(math.copysign(math.floor(abs(q) + fractions.Fraction(1, 2)), q))


class _ConstantRate:
  """The ffmpeg CLI's constant-frame-rate output step (`-fps_mode cfr`, the default for a
  rawvideo pipe): frames are laid on the output grid by their timestamps, duplicated where
  the grid has a gap (e.g. the first frame of a stream that starts after 0) and dropped where
  two land on one slot. After an `fps` filter this only fills a late start.
  """

  def __init__(self, rate: fractions.Fraction):
    self.tb = 1 / rate
    self.next_pts = 0
    self.prev = None
    self.hist = [0, 0, 0]  # how often the previous frame was repeated, last three frames

  def _sync_pts(self, pts: int, tb: fractions.Fraction) -> float:
    # adjust_frame_pts_to_encoder_tb: a few extra bits of precision, exact midpoints avoided.
    extra = min(max(29 - (self.tb.denominator.bit_length() - 1), 0), 16)
    fine = _rescale(pts, tb, self.tb / (1 << extra)) / (1 << extra)
    if fine != round(fine):
      fine += math.copysign(1.0 / (1 << 17), fine)
    return fine

  def push(self, pts: int, tb: fractions.Fraction, duration: int,
           frame: np.ndarray) -> Iterator[np.ndarray]:
    if not duration:
      duration = _rescale(1, self.tb, tb)
    dur = float(duration * tb / self.tb)
    sync = self._sync_pts(pts, tb)
    delta0 = sync - self.next_pts
    delta = delta0 + dur
    if delta0 < 0 < delta:
      delta0 = 0.0
    n, n_prev = 1, 0
    if delta < -1.1:
      n = 0
    elif delta > 1.1:
      n = _lrint(delta)
      if delta0 > 1.1:
        n_prev = _lrint(delta0 - 0.6)
    self.hist = [n_prev] + self.hist[:2]
    if n > 3600 * 30:  # the CLI refuses such a jump and drops the frame
      n = 0
    for i in range(n):
      yield self.prev if (i < n_prev and self.prev is not None) else frame
      self.next_pts += 1
    self.prev = frame

  def flush(self) -> Iterator[np.ndarray]:
    n = sorted(self.hist)[1]
    if self.prev is not None:
      for _ in range(n):
        yield self.prev


def _lrint(x: float) -> int:
  """C's llrint/llrintf under the default rounding mode: halves to even."""
  return int(round(x))


class _Timestamps:
  """Frame timestamps and durations as ffmpeg's CLI hands them to its filters.

  pts: the decoder's best-effort timestamp (reordered pts, or dts where pts are missing or
  out of order), shifted so the file starts at 0 (the CLI subtracts the container's start
  time), extrapolated when missing. duration: the CLI's estimate, which sets where the stream
  ends for the `fps` filter, and so how many frames the end of the clip gives.
  """

  def __init__(self, container, stream):
    self.tb = stream.time_base
    start = container.start_time  # AV_TIME_BASE units, the earliest of all streams
    self.offset = 0 if start is None else -_rescale(start, fractions.Fraction(1, 1_000_000),
                                                    self.tb)
    self.codec_rate = stream.codec_context.framerate
    self.avg_rate = stream.average_rate
    self.last_pts = None
    self.last_duration = 0
    # guess_correct_pts state (libavcodec's best_effort_timestamp)
    self.faulty_pts = self.faulty_dts = 0
    self.prev_pts = self.prev_dts = -(1 << 63)

  def _best_effort(self, pts: int | None, dts: int | None) -> int | None:
    if dts is not None:
      self.faulty_dts += dts <= self.prev_dts
      self.prev_dts = dts
    elif pts is not None:
      self.prev_dts = pts
    if pts is not None:
      self.faulty_pts += pts <= self.prev_pts
      self.prev_pts = pts
    elif dts is not None:
      self.prev_pts = dts
    if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None):
      return pts
    return dts

  def apply(self, frame) -> None:
    pts = self._best_effort(frame.pts, frame.dts)
    if pts is None:
      pts = 0 if self.last_pts is None else self.last_pts + self.last_duration
    else:
      pts += self.offset
    frame.pts = pts
    ts_diff = pts - self.last_pts if self.last_pts is not None else -1
    duration = frame.duration or 0
    if duration > 0 and not (duration == 1 and ts_diff > 2):
      est = duration
    elif ts_diff > 0:
      est = ts_diff
    elif duration > 0:
      est = duration
    elif self.codec_rate:
      est = _rescale(1, 1 / self.codec_rate, self.tb)
    elif self.avg_rate:
      est = _rescale(1, 1 / self.avg_rate, self.tb)
    else:
      est = 0
    est = est if est > 0 else max(self.last_duration, 1)
    frame.duration = est
    self.last_pts, self.last_duration = pts, est


def _open_video(path: str):
  """(container, first video stream that is not cover art), or VasaInputError."""
  import av  # pylint: disable=import-outside-toplevel
  try:
    container = av.open(_ffmpeg_input(path), metadata_errors="ignore")
  except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
    raise VasaInputError(f"Cannot decode video {path!r}: {_reason(e)}. Re-export it.") from None
  attached = av.stream.Disposition.attached_pic
  streams = [v for v in container.streams.video if not v.disposition & attached]
  if not streams:
    container.close()
    raise VasaInputError(f"{path!r} has no video stream. Give a video file (mp4/mov/webm/...).")
  stream = streams[0]
  stream.thread_type = "AUTO"
  return container, stream


def _decoded(container, stream, errors: list) -> Iterator:
  """Decoded frames of `stream`; a packet that fails to decode is skipped and a read error
  ends the stream, as in the ffmpeg CLI. Both are recorded in `errors`."""
  import av  # pylint: disable=import-outside-toplevel
  try:
    for packet in container.demux(stream):
      try:
        yield from packet.decode()
      except av.InvalidDataError as e:
        errors.append(e)
  except av.FFmpegError as e:
    errors.append(e)
    with contextlib.suppress(av.FFmpegError):
      yield from stream.codec_context.decode(None)


def _raw_frames(path: str, rate: fractions.Fraction | None,
                max_side: int | None) -> Iterator[np.ndarray]:
  """Yields (H, W, 3) uint8 frames at `rate` (rotation metadata applied), decoded in-process.

  The frames are those `ffmpeg -i path -vf fps=rate,scale=... -pix_fmt rgb24 -f rawvideo`
  writes, bit for bit. Consecutive frames may be one array (a repeated frame): copy before
  writing into one. The file is closed when the generator ends or is closed.
  """
  import av  # pylint: disable=import-outside-toplevel
  container, stream = _open_video(path)
  errors = []
  frames = _decoded(container, stream, errors)
  try:
    stamps = _Timestamps(container, stream)
    cfr = _ConstantRate(rate or stream.guessed_rate or fractions.Fraction(FPS))
    filt = None
    try:
      for frame in frames:
        stamps.apply(frame)
        if filt is None:
          filt = _FrameFilter(frame, stream, rate, max_side)
        for out in filt.filter(frame):
          yield from cfr.push(*out)
      if filt is not None:
        for out in filt.filter(None):
          yield from cfr.push(*out)
        yield from cfr.flush()
    except (av.FFmpegError, ValueError) as e:
      raise VasaInputError(f"Cannot decode video {path!r}: {_reason(e)}. Re-export it.") from e
    if filt is None:
      if errors:
        raise VasaInputError(f"{path!r} has a video stream but no decodable frames: it is "
                             f"truncated or corrupt ({_reason(errors[-1])}). Re-export the "
                             f"video.")
      raise VasaInputError(f"{path!r} has a video stream but no decodable frames (truncated "
                           f"or empty). Re-export the video.")
    if errors:
      log.warning("%s: skipped %d undecodable packet(s) (%s); the video may be damaged.",
                  path, len(errors), _reason(errors[-1]))
  finally:
    frames.close()
    container.close()  # also when the caller stops early


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
