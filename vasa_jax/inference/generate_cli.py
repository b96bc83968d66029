"""`vasa-jax generate` and `vasa-jax stream`: defaults, input checks, writing the mp4."""
from __future__ import annotations

import os
import pathlib
import sys
import time

import numpy as np

from vasa_jax.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

BUNDLED_SPEECH = pathlib.Path(__file__).resolve().parent.parent / "assets" / "speech_en.wav"


def default_portrait() -> np.ndarray:
  """The astronaut portrait scikit-image ships (public domain, NASA)."""
  from skimage import data  # pylint: disable=import-outside-toplevel
  return data.astronaut()


def resolve_inputs(args):
  """(image, image_name, audio) with the bundled defaults filled in, after every check that
  needs no model: the controls, the input files and the output path (`args.out` becomes the
  file actually written, a symlink's target), so bad input fails before any slow work."""
  # pylint: disable=import-outside-toplevel
  from vasa_jax.data import media
  from vasa_jax.errors import VasaInputError
  from vasa_jax.inference.controls import check_controls

  check_controls(gaze=args.gaze, distance=args.distance, emotion=args.emotion,
                 cfg_audio=args.cfg_audio, cfg_gaze=args.cfg_gaze, steps=args.steps,
                 mouth_scale=args.mouth_scale, seed=args.seed, render_batch=args.render_batch,
                 chunk_ms=getattr(args, "chunk_ms", None))
  image, image_name = (args.image, args.image) if args.image else (
      default_portrait(), "skimage.data.astronaut()")
  audio = args.audio or str(BUNDLED_SPEECH)
  for path, what in ((args.image, "--image"), (args.audio, "--audio")):
    if path and not os.path.isfile(path):
      raise VasaInputError(f"{what} {path}: file not found.")
  args.out = media.check_output_path(args.out, inputs=[p for p in (args.image, args.audio) if p],
                                     what="--out")
  return image, image_name, audio


def run(args) -> int:
  # pylint: disable=import-outside-toplevel
  from vasa_jax.data import media
  from vasa_jax.inference import pipeline as pipeline_lib

  image, image_name, audio = resolve_inputs(args)
  # Read and check the audio before the (slow) model load, so bad input fails fast.
  wav = media.read_audio(audio, sr=SAMPLE_RATE)
  pipe = pipeline_lib.load_pipeline(args.checkpoint, compute_dtype=args.dtype,
                                   render_batch=args.render_batch)
  portrait = media.read_image(image)
  kw = dict(gaze=args.gaze, distance=args.distance, emotion=args.emotion,
            cfg_audio=args.cfg_audio, cfg_gaze=args.cfg_gaze, steps=args.steps,
            mouth_scale=args.mouth_scale, seed=args.seed, paste_back=not args.crop_only,
            max_size=args.max_size)
  if args.command == "generate":
    # Frames go to the encoder as they are made: memory stays flat in the clip's length.
    result = pipe.generate_video(args.out, portrait, wav, progress=True,
                                 watermark=args.watermark, face_index=args.face_index, **kw)
    t = result.timings
    n = len(result.motion)
    print(f"Wrote {args.out}: {n} frames ({n / result.fps:.2f} s) from {image_name} + {audio}; "
          f"{t['fps']:.1f} frames/s after {t['prepare_s']:.1f} s of portrait preparation.")
    return 0
  return _stream(pipe, portrait, wav, args, kw)


def _stream(pipe, portrait, wav, args, kw) -> int:
  """Feeds the audio in chunks as a live source would; reports latency and frame rate."""
  # pylint: disable=import-outside-toplevel
  from vasa_jax.data import media
  from vasa_jax.errors import VasaInputError

  chunk = max(1, int(SAMPLE_RATE * args.chunk_ms / 1000))
  first_window = args.first_window
  if first_window is not None and not 1 <= first_window <= pipe.window:
    raise VasaInputError(f"--first-window {first_window}: use 1..{pipe.window} (this "
                         "checkpoint's window W).")
  kw = dict(kw, first_window=first_window)
  # Warm-up on a little silence compiles every shape the stream uses (first window, later
  # windows, the decoder), so the latency printed below is what a live session sees.
  t_warm = time.perf_counter()
  portrait = pipe.prepare_portrait(portrait, face_index=args.face_index)  # before the audio
  silence = np.zeros(((2 * pipe.window + 1) * SAMPLES_PER_FRAME,), np.float32)
  for _ in pipe.stream(portrait, [silence], **kw):
    pass
  warm_s = time.perf_counter() - t_warm
  chunks = (wav[i:i + chunk] for i in range(0, len(wav), chunk))
  first = None
  n = 0
  with media.VideoWriter(args.out, fps=FPS, audio=wav, sr=SAMPLE_RATE,
                         watermark=args.watermark) as w:
    t0 = time.perf_counter()
    for frame in pipe.stream(portrait, chunks, **kw):
      if first is None:
        first = time.perf_counter() - t0
      w.write(frame)
      n += 1
    total = time.perf_counter() - t0
  buffer_ms = 1000 * pipe.stream_buffering_s(first_window, chunk)
  what = "first window" if first_window else "window"
  print(f"Wrote {args.out}: {n} frames. First frame after {1000 * (first or 0):.0f} ms of compute "
        f"+ {buffer_ms:.0f} ms of audio buffering ({what} + look-ahead, in whole "
        f"{args.chunk_ms:g} ms chunks); sustained "
        f"{n / max(total, 1e-9):.1f} frames/s (compilation and warm-up before: {warm_s:.1f} s).",
        file=sys.stdout)
  return 0
