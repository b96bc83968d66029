"""Probing media files with PyAV (`av`: libavformat's own fields, no log text parsed), and
the `file:` paths and frame-rate helpers the other media modules share.

Conventions: see `vasa_jax.data.media`.
"""
from __future__ import annotations

import dataclasses
import fractions
import math
import os

from vasa_jax.errors import VasaInputError


@dataclasses.dataclass(frozen=True)
class MediaInfo:
  """A file's streams as libavformat reads them (first video and first audio stream only)."""
  path: str
  duration: float | None  # seconds, None when the container does not say
  has_video: bool
  has_audio: bool
  fps: float | None  # average frame rate of the video stream (ffmpeg's "fps"; falls back to tbr)
  width: int | None  # coded size, before any rotation
  height: int | None
  audio_sr: int | None
  audio_channels: int | None
  comment: str | None  # global `comment` metadata tag
  # ffmpeg's "tbr" (r_frame_rate): the rate at which ffmpeg lays out frames of a variable-frame-
  # rate stream (a 22.13 fps average phone clip is 30 tbr). Defaults keep old constructors valid.
  tbr: float | None = None

  @property
  def frame_rate(self) -> float | None:
    """The stream's nominal frame rate: tbr when plausible, else the average fps."""
    rate = _nominal_rate(self.fps, self.tbr)
    return None if rate is None else float(rate)


def _reason(e: Exception) -> str:
  """The first line of a libav error, for a one-line message."""
  text = str(e).strip()
  return text.splitlines()[0][:200] if text else type(e).__name__


def _check_exists(path, what: str) -> str:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise VasaInputError(f"{what} file not found: {path!r}. Check the path.")
  if os.path.isdir(path):
    raise VasaInputError(f"{what} path is a directory, not a file: {path!r}.")
  if not os.path.isfile(path):
    # A FIFO or a device would block or never end; only regular files (or links to them).
    raise VasaInputError(f"{what} path is not a regular file: {path!r}. Give a media file.")
  if os.path.getsize(path) == 0:
    raise VasaInputError(f"{what} file is empty (0 bytes): {path!r}. Re-export or re-download it.")
  return path


def _ffmpeg_input(path: str) -> str:
  """`file:` + absolute path: ffmpeg never reads a file name as a protocol (`concat:a|b`,
  `http:...`, `pipe:`), whatever characters it holds."""
  return "file:" + os.path.abspath(path)


def _exact_rate(rate: float) -> fractions.Fraction:
  """A printed frame rate as an exact fraction: 29.97 -> 30000/1001 (NTSC), 12.5 -> 25/2.

  ffmpeg prints rates rounded to 2 decimals ("23.98"), so the NTSC family (23.976, 29.97,
  59.94) is recovered from its 1001 denominator; anything else is taken at face value.
  """
  if rate <= 0 or not math.isfinite(rate):
    raise ValueError(f"frame rates must be positive, got {rate}")
  ntsc = round(rate * 1.001)
  if abs(rate - ntsc) > 1e-6 and abs(rate * 1.001 - ntsc) < 6e-3:
    return fractions.Fraction(ntsc * 1000, 1001)
  return fractions.Fraction(rate).limit_denominator(1000)


def _nominal_rate(avg_fps: float | None, tbr: float | None) -> fractions.Fraction | None:
  """The rate ffmpeg's frame grid uses for a stream: tbr, unless it is a timebase artefact.

  For variable-frame-rate files the average fps (e.g. 22.13) is not a rate any frame grid
  has; tbr (e.g. 30) is, and it is what ffmpeg itself outputs for rawvideo. Some containers
  (webm/mkv, flv) print a timebase such as "1k tbr" instead: then the average fps is used.
  """
  if tbr and tbr <= 240 and (not avg_fps or tbr <= 4 * avg_fps):
    return _exact_rate(tbr)
  if avg_fps:
    return _exact_rate(avg_fps)
  return _exact_rate(tbr) if tbr else None


def probe(path) -> MediaInfo:
  """Reads stream information with PyAV (libavformat's own fields; no log text is parsed).

  Args:
    path: a media file.

  Returns:
    A `MediaInfo`.

  Raises:
    VasaInputError: the file is missing or libavformat cannot open it.
  """
  import av  # pylint: disable=import-outside-toplevel

  path = _check_exists(path, "Media")
  try:
    # `file:` keeps a name such as `concat:a|b` a file name (see `_ffmpeg_input`).
    with av.open(_ffmpeg_input(path), metadata_errors="ignore") as container:
      return _media_info(path, container)
  except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
    raise VasaInputError(f"Cannot read media file {path!r}: it is corrupt or not a media file "
                         f"({_reason(e)}). Re-export it as mp4/wav.") from None


def _rate(value) -> float | None:
  return float(value) if value else None


def _media_info(path: str, container) -> MediaInfo:
  """`MediaInfo` from an open PyAV container: the first video and first audio stream."""
  import av  # pylint: disable=import-outside-toplevel

  attached = av.stream.Disposition.attached_pic  # cover art in audio files is a "video" stream
  video = [v for v in container.streams.video if not v.disposition & attached]
  audio = list(container.streams.audio)
  fps = tbr = width = height = audio_sr = audio_channels = None
  if video:
    v = video[0]
    # As ffmpeg prints them: "fps" is the average rate, "tbr" the stream's r_frame_rate.
    fps, tbr = _rate(v.average_rate), _rate(v.base_rate)
    width, height = (v.codec_context.width or None), (v.codec_context.height or None)
  if audio:
    a = audio[0].codec_context
    audio_sr = int(a.sample_rate) or None
    audio_channels = int(a.channels) or None
  duration = container.duration / 1e6 if container.duration is not None else None  # AV_TIME_BASE
  comment = {k.lower(): v for k, v in container.metadata.items()}.get("comment")
  return MediaInfo(path=path, duration=duration, has_video=bool(video), has_audio=bool(audio),
                   fps=fps, width=width, height=height, audio_sr=audio_sr,
                   audio_channels=audio_channels, comment=comment, tbr=tbr)


def read_metadata_comment(path) -> str | None:
  """Returns the global `comment` metadata tag of a media file (None when absent).

  Args:
    path: a media file, e.g. one written by `write_video`.

  Returns:
    The tag text, or None.
  """
  return probe(path).comment
