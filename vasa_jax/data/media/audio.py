"""Reading audio (soundfile, or PyAV for other containers) as float32 mono at 16 kHz
(soxr resampling), and writing wav.

Conventions: see `vasa_jax.data.media`.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import soundfile
import soxr

from vasa_jax.constants import SAMPLE_RATE
from vasa_jax.data.media.probing import _check_exists, _ffmpeg_input, _reason, probe
from vasa_jax.errors import VasaInputError
from vasa_jax.fileio import atomic_path

log = logging.getLogger(__name__)

# Containers that libsndfile decodes directly; everything else goes through PyAV (libavcodec).
_SOUNDFILE_EXTS = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")


_WARN_PEAK = 1.5
# Averaging channels keeps at least this share of their mean energy unless they cancel.
_MIX_KEEP = 0.25


def to_mono(x: np.ndarray) -> np.ndarray:
  """(N, C) float samples -> (N,) mono without cancellation.

  The rule: the mean of the channels, unless that mean keeps less than a quarter of the
  channels' average energy (anti-phase or near anti-phase channels, where it would be close to
  silence); then the loudest channel alone. Correlated channels keep ~all their energy when
  averaged, two independent ones half, so ordinary stereo is averaged as before.
  """
  x = np.asarray(x, np.float32)
  if x.shape[1] == 1:
    return x[:, 0]
  mean = x.mean(axis=1)
  energy = np.mean(np.square(x, dtype=np.float64), axis=0)  # (C,)
  if np.mean(np.square(mean, dtype=np.float64)) >= _MIX_KEEP * energy.mean():
    return mean
  log.warning("The audio channels cancel when averaged (anti-phase stereo); using channel %d, "
              "the loudest, alone.", int(np.argmax(energy)))
  return x[:, int(np.argmax(energy))]


def _finish_audio(x: np.ndarray, orig_sr: int, sr: int, name: str) -> np.ndarray:
  """(N,) or (N, C) samples -> (N',) float32 mono at `sr`, with checks on emptiness and NaN.

  Float samples beyond [-1, 1] (a float wav written without scaling) are peak-normalised to
  +-1 with a warning instead of being clipped into a square wave when written.
  """
  x = np.asarray(x)
  if np.issubdtype(x.dtype, np.integer):
    x = x.astype(np.float32) / float(np.iinfo(x.dtype).max)
  x = x.astype(np.float32, copy=False)
  if x.ndim not in (1, 2):
    raise VasaInputError(f"{name}: expected audio shaped (N,) or (N, channels), got {x.shape}.")
  if x.size == 0:
    raise VasaInputError(f"{name}: the audio is empty (0 samples). Use a file with speech in it.")
  if not np.all(np.isfinite(x)):
    raise VasaInputError(f"{name}: the audio contains NaN or infinite samples. Re-export it.")
  if x.ndim == 2:
    x = to_mono(x)
  peak = float(np.max(np.abs(x)))
  if peak > 1.0:
    # Decoded mp3/aac overshoots 1 a little as a matter of course; only an unscaled file is
    # worth a warning.
    (log.warning if peak > _WARN_PEAK else log.debug)(
        "%s: samples reach %.4g, beyond [-1, 1]; peak-normalised to 1.", name, peak)
    x = x / peak
  if orig_sr != sr:
    x = soxr.resample(x, orig_sr, sr, quality="HQ").astype(np.float32)
  return np.ascontiguousarray(x)


def _decode_audio_av(path: str) -> tuple[np.ndarray, int]:
  """First audio stream -> (N, C) float32 at the source rate, decoded in-process with PyAV.

  The channels come out as they are and are mixed by `to_mono` (as on the soundfile path). The
  samples are those `ffmpeg -i path -f f32le` gives: the decoder drops the encoder's priming
  samples, and for mp4/mov the end is cut where the edit list ends the stream (AAC's last
  frame is padded to 1024 samples).
  """
  import av  # pylint: disable=import-outside-toplevel
  try:
    container = av.open(_ffmpeg_input(path), metadata_errors="ignore")
  except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
    raise VasaInputError(f"Cannot decode the audio of {path!r}: {_reason(e)}. "
                         f"Re-export it.") from None
  with container:
    stream = container.streams.audio[0]
    end = None  # where the stream ends, in seconds, for trimming the last frame
    chunks = []  # (start time in seconds or None, (n, C) float32)
    resampler = None
    sr = channels = layout = None
    errors = []
    try:
      for packet in container.demux(stream):
        if packet.pts is not None and packet.duration:
          pkt_end = (packet.pts + packet.duration) * packet.time_base
          end = pkt_end if end is None else max(end, pkt_end)
        try:
          frames = packet.decode()
        except av.InvalidDataError as e:  # the CLI skips a bad packet too
          errors.append(e)
          continue
        for frame in frames:
          if sr is None:
            sr, channels, layout = frame.sample_rate, len(frame.layout.channels), frame.layout.name
          start = frame.pts * frame.time_base if frame.pts is not None else None
          if (frame.format.name not in ("flt", "fltp") or frame.sample_rate != sr
              or len(frame.layout.channels) != channels):
            if resampler is None:  # as -ar/-ac do: to the first frame's rate and layout
              resampler = av.AudioResampler(format="fltp", layout=layout, rate=sr)
            chunks.extend((start, _samples(f)) for f in resampler.resample(frame))
          else:
            chunks.append((start, _samples(frame)))
      if resampler is not None:
        chunks.extend((None, _samples(f)) for f in resampler.resample(None))
    except av.FFmpegError as e:
      raise VasaInputError(f"Cannot decode the audio of {path!r}: {_reason(e)}. "
                           f"Re-export it.") from None
    if "mov" not in container.format.name:
      end = None  # only mp4/mov edit lists cut the decoded end
    elif stream.duration is not None:
      stream_end = ((stream.start_time or 0) + stream.duration) * stream.time_base
      end = stream_end if end is None else min(end, stream_end)
  if not chunks:
    reason = f" ({_reason(errors[-1])})" if errors else ""
    raise VasaInputError(f"Cannot decode the audio of {path!r}: no decodable audio{reason}. "
                         f"Re-export it.")
  if end is not None:
    chunks = [(t, x[:max(int(round((end - t) * sr)), 0)] if t is not None else x)
              for t, x in chunks]
  return np.concatenate([x for _, x in chunks], axis=0), int(sr)


def _samples(frame) -> np.ndarray:
  """(n, C) float32 from a float audio frame, planar or packed."""
  x = frame.to_ndarray()
  if frame.format.is_planar:
    return np.ascontiguousarray(x.T, dtype=np.float32)
  return x.reshape(-1, len(frame.layout.channels)).astype(np.float32, copy=False)


def read_audio(path_or_array, sr: int = SAMPLE_RATE, orig_sr: int | None = None) -> np.ndarray:
  """Reads audio as mono float32 at `sr`.

  wav/flac/ogg are read with soundfile; mp3/m4a/aac and video files (mp4/mov/mpg/avi/webm/flv/
  mkv) are decoded in-process by PyAV's libavcodec. Channels are mixed by `to_mono` (averaged unless they
  cancel), float samples beyond +-1 are peak-normalised, and the rate is converted with soxr.

  Args:
    path_or_array: a file, or an array (N,) / (N, channels) of samples (then `orig_sr` is needed).
    sr: output sample rate.
    orig_sr: sample rate of an array input.

  Returns:
    (N,) float32.

  Raises:
    VasaInputError: missing, unreadable or corrupt file, no audio stream, empty audio, NaN/inf.
  """
  if isinstance(path_or_array, np.ndarray):
    if orig_sr is None:
      raise VasaInputError("Audio array given without its sample rate: pass orig_sr=...")
    return _finish_audio(path_or_array, int(orig_sr), sr, "audio array")
  path = _check_exists(path_or_array, "Audio")
  if path.lower().endswith(_SOUNDFILE_EXTS):
    try:
      data, file_sr = soundfile.read(path, dtype="float32", always_2d=True)
      return _finish_audio(data, int(file_sr), sr, repr(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
      pass  # e.g. an odd codec inside a wav: let libavcodec try before giving up
  info = probe(path)
  if not info.has_audio:
    raise VasaInputError(f"{path!r} has no audio stream. Give a separate audio file (wav/mp3) or "
                         f"a video with sound.")
  data, file_sr = _decode_audio_av(path)
  return _finish_audio(data, file_sr, sr, repr(path))


def write_wav(path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
  """Writes (N,) float32 audio as a 16-bit wav, atomically.

  Args:
    path: output file.
    audio: (N,) float samples in [-1, 1] (clipped).
    sr: sample rate.
  """
  path = os.fspath(path)
  audio = np.clip(np.asarray(audio, np.float32).reshape(-1), -1.0, 1.0)
  with atomic_path(path) as tmp:
    soundfile.write(tmp, audio, sr, subtype="PCM_16", format="WAV")
