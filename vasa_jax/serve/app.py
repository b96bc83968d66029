"""`vasa-jax serve`: a Gradio page for portrait + speech -> talking-face video.

One `Pipeline` serves every visitor. The queue runs one job at a time (concurrency 1): jitted
functions and the device are shared, and a second user's job waits with its place in the queue
shown instead of competing for memory. Each job writes its video to its own temporary file, so
results never mix. Bad input comes back as a message in the page (`status`), never a traceback.
"""
from __future__ import annotations

import html
import logging
import os
import pathlib
import tempfile
import time

import numpy as np

from vasa_jax.constants import SAMPLE_RATE
from vasa_jax.errors import VasaInputError
from vasa_jax.inference.pipeline import EMOTIONS

log = logging.getLogger(__name__)

NO_EMOTION = "(none)"
MAX_SIZE = 1024  # longest side of a pasted-back frame
QUEUE_ID = "generate"  # every generating event shares this one queue
KEEP_VIDEOS_S = 3600.0  # job outputs older than this are deleted when a new job starts


def paste_back_kwargs(paste_back: bool, max_size: int = MAX_SIZE) -> dict:
  """`Pipeline.generate` keyword arguments for the paste-back checkbox (the one place that names
  them). On: the face pasted back into the portrait, at most `max_size` pixels on its longest
  side. Off: the R x R face crop."""
  return {"paste_back": bool(paste_back), "max_size": int(max_size)}


def _controls(gaze_theta, gaze_phi, distance, emotion, steps, cfg_audio, cfg_gaze,
              mouth_scale, seed) -> dict:
  """Page values -> `Pipeline.generate` keyword arguments (numbers checked here, so a cleared
  field gives a message naming it)."""
  values = {"gaze theta": gaze_theta, "gaze phi": gaze_phi, "distance": distance,
            "steps": steps, "audio guidance": cfg_audio, "gaze guidance": cfg_gaze,
            "mouth scale": mouth_scale, "seed": seed}
  for name, v in values.items():
    if v is None or not np.isfinite(float(v)):
      raise VasaInputError(f"'{name}' is empty or not a number: enter a value.")
  if int(steps) < 1:
    raise VasaInputError(f"'steps' must be at least 1, got {steps}.")
  return dict(gaze=(float(gaze_theta), float(gaze_phi)), distance=float(distance),
              emotion=None if emotion in (None, "", NO_EMOTION) else emotion,
              steps=int(steps), cfg_audio=float(cfg_audio), cfg_gaze=float(cfg_gaze),
              mouth_scale=float(mouth_scale), seed=int(seed))


def error_markdown(message: str) -> str:
  """A message for the page's status field, shown as text (a portrait array is named
  "<array>" in pipeline errors, which Markdown would drop as an HTML tag)."""
  message = message.replace("<array>", "The portrait")
  return "**Error:** " + html.escape(message, quote=False)


def _clean_old(out_dir: pathlib.Path, keep_s: float = KEEP_VIDEOS_S):
  now = time.time()
  for p in out_dir.glob("*.mp4"):
    try:
      if now - p.stat().st_mtime > keep_s:
        p.unlink()
    except OSError:  # another job's file vanished first: nothing to do
      pass


def make_job(pipe, out_dir, *, max_seconds: float = 60.0):
  """The page's generate function: (portrait, audio path, controls...) -> (video path, status).

  Args:
    pipe: a loaded `Pipeline`.
    out_dir: where each job writes its own mp4.
    max_seconds: the longest speech accepted (longer uploads get a message, not a long job).
  """
  import gradio as gr  # pylint: disable=import-outside-toplevel
  from vasa_jax.data import media  # pylint: disable=import-outside-toplevel

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)

  def job(portrait, audio, gaze_theta, gaze_phi, distance, emotion, steps, cfg_audio, cfg_gaze,
          mouth_scale, seed, paste_back, progress=gr.Progress(track_tqdm=True)):
    t0 = time.perf_counter()
    try:
      if portrait is None:
        raise VasaInputError("No portrait: upload a photo or take one with the webcam.")
      if not audio:
        raise VasaInputError("No speech: upload an audio file or record one.")
      kw = _controls(gaze_theta, gaze_phi, distance, emotion, steps, cfg_audio, cfg_gaze,
                     mouth_scale, seed)
      kw.update(paste_back_kwargs(paste_back))
      progress(0.0, desc="reading the speech")
      wav = media.read_audio(audio, sr=SAMPLE_RATE)
      if wav.size == 0:
        raise VasaInputError(f"The speech file {os.path.basename(audio)} holds no audio.")
      if wav.size > max_seconds * SAMPLE_RATE:
        raise VasaInputError(f"The speech is {wav.size / SAMPLE_RATE:.1f} s long; this server "
                             f"takes at most {max_seconds:g} s: trim it.")
      progress(0.05, desc="finding the face")
      result = pipe.generate(portrait, wav, progress=True, **kw)
      progress(0.95, desc="writing the video")
      _clean_old(out_dir)
      fd, path = tempfile.mkstemp(suffix=".mp4", prefix="vasa-", dir=out_dir)
      os.close(fd)
      media.write_video(path, result.frames, fps=result.fps, audio=result.audio,
                        sr=result.sample_rate)
    except (VasaInputError, ValueError) as e:  # bad input: the message is the answer
      return None, error_markdown(str(e))
    except Exception as e:  # pylint: disable=broad-exception-caught
      log.exception("generation failed")  # the traceback stays in the server log
      return None, error_markdown(f"generation failed ({type(e).__name__}: {e}). See the server "
                                  "log.")
    n, (h, w) = len(result.frames), result.frames.shape[1:3]
    return path, (f"{n} frames ({n / result.fps:.2f} s) at {w}x{h}, "
                  f"{time.perf_counter() - t0:.1f} s.")

  return job


def build_app(pipe, *, out_dir=None, max_seconds: float = 60.0):
  """The Gradio Blocks page for `pipe` (queued, one job at a time)."""
  import gradio as gr  # pylint: disable=import-outside-toplevel

  out_dir = out_dir or tempfile.mkdtemp(prefix="vasa-serve-")
  job = make_job(pipe, out_dir, max_seconds=max_seconds)
  with gr.Blocks(title="vasa-jax", delete_cache=(3600, 3600), analytics_enabled=False) as demo:
    gr.Markdown("# vasa-jax\nA portrait and speech in, a talking face out (VASA-1 in JAX). "
                "Research use only; every video carries the comment `generated by vasa-jax`.")
    with gr.Row():
      with gr.Column():
        portrait = gr.Image(sources=["upload", "webcam"], type="numpy", label="portrait",
                            height=320, elem_id="portrait")
        audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="speech",
                         elem_id="speech")
        with gr.Accordion("controls", open=False):
          with gr.Row():
            theta = gr.Slider(-0.6, 0.6, 0.0, step=0.05, label="gaze theta (rad)")
            phi = gr.Slider(-0.6, 0.6, 0.0, step=0.05, label="gaze phi (rad)")
          distance = gr.Slider(-2.0, 2.0, 0.0, step=0.1, label="distance (0 = average)")
          emotion = gr.Dropdown([NO_EMOTION, *EMOTIONS], value="neutral", label="emotion")
          steps = gr.Slider(1, 50, pipe.steps, step=1, label="sampling steps")
          with gr.Row():
            cfg_audio = gr.Slider(0.0, 4.0, pipe.cfg_audio, step=0.1, label="audio guidance")
            cfg_gaze = gr.Slider(0.0, 4.0, pipe.cfg_gaze, step=0.1, label="gaze guidance")
          mouth = gr.Slider(0.0, 8.0, pipe.mouth_scale, step=0.25, label="mouth scale")
          seed = gr.Number(0, precision=0, label="seed")
          paste_back = gr.Checkbox(True, label="paste back into the portrait")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
      with gr.Column():
        video = gr.Video(label="video", format="mp4", height=420, buttons=["download"],
                         elem_id="video")
        status = gr.Markdown(elem_id="status")
    button.click(job, [portrait, audio, theta, phi, distance, emotion, steps, cfg_audio,
                       cfg_gaze, mouth, seed, paste_back], [video, status],
                 concurrency_limit=1, concurrency_id=QUEUE_ID)
  return demo.queue(default_concurrency_limit=1)


def serve(checkpoint=None, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          max_seconds: float = 60.0, steps: int | None = None):
  """Loads the pipeline (bundled demo checkpoint by default) and serves the page until Ctrl-C."""
  from vasa_jax.inference import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel

  pipe = pipeline_lib.load_pipeline(checkpoint, **({} if steps is None else {"steps": steps}))
  demo = build_app(pipe, max_seconds=max_seconds)
  demo.launch(server_name=host, server_port=port, share=share)
