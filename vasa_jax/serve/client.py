"""`vasa-jax live-client`: streams a speech file to a `vasa-jax live` server as a microphone
would (real-time-sized chunks, paced at real time) and measures what comes back.

Latency is reported two ways: from the first audio chunk sent (what a viewer waits), and from
the chunk that completed the audio the first frame needs (the server's `buffering_s`: the
first window plus the encoder's look-ahead), which is the server's own delay.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import time

import numpy as np

from vasa_jax.constants import FPS, SAMPLE_RATE
from vasa_jax.serve import protocol


@dataclasses.dataclass
class SessionResult:
  """What one streamed session returned and how fast."""
  frames: list  # (H, W, 3) uint8, in order
  audio: np.ndarray  # the float32 16 kHz samples sent
  first_frame_s: float  # first chunk sent -> first frame received
  server_latency_s: float  # chunk completing the first frame's audio -> first frame received
  fps: float  # frames per second received from the first frame to the last
  wall_s: float  # first chunk sent -> `done`


async def stream_session(url: str, portrait: bytes, audio: np.ndarray, *, chunk_ms: float = 40.0,
                         realtime: bool = True, fmt: str = "jpeg", pcm: str = "s16le",
                         timeout_s: float = 120.0, **controls) -> SessionResult:
  """One session: sends the portrait and `audio` (16 kHz float32) in chunks; collects frames.

  Args:
    url: ws://host:port of a `vasa-jax live` server.
    portrait: the image file's bytes.
    audio: (N,) float32 samples at 16 kHz.
    chunk_ms: chunk length; with `realtime`, chunk i leaves at i * chunk_ms.
    fmt: "jpeg" or "raw" frames.
    timeout_s: the most seconds to wait for any one server message.
    **controls: start-message keys (gaze, distance, emotion, steps, seed, first_window, ...).
  """
  from websockets.asyncio.client import connect  # pylint: disable=import-outside-toplevel

  chunk = max(1, int(round(SAMPLE_RATE * chunk_ms / 1000)))
  sent_at: list[tuple[int, float]] = []  # (samples sent so far, time)
  async with connect(url, max_size=None, open_timeout=timeout_s) as ws:
    await ws.send(json.dumps({"type": "start", "format": fmt, "pcm": pcm, **controls}))
    await ws.send(portrait)
    ready = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    if ready.get("type") != "ready":
      raise RuntimeError(f"live server refused the session: {ready.get('message', ready)}")

    async def send_audio():
      t0 = time.perf_counter()
      for i, start in enumerate(range(0, len(audio), chunk)):
        if realtime:
          await asyncio.sleep(max(0.0, t0 + i * chunk / SAMPLE_RATE - time.perf_counter()))
        await ws.send(protocol.float_to_pcm(audio[start:start + chunk], pcm))
        sent_at.append((min(start + chunk, len(audio)), time.perf_counter()))
      await ws.send(json.dumps({"type": "end"}))

    sender = asyncio.create_task(send_audio())
    frames, times = [], []
    try:
      while True:
        msg = await asyncio.wait_for(ws.recv(), timeout_s)
        if isinstance(msg, bytes):
          frames.append(protocol.decode_frame(msg)[1])
          times.append(time.perf_counter())
          continue
        msg = json.loads(msg)
        if msg.get("type") == "error":
          raise RuntimeError(f"live server error: {msg['message']}")
        if msg.get("type") == "done":
          break
    finally:
      sender.cancel()
  t_start = sent_at[0][1] if sent_at else time.perf_counter()
  need = int(ready["buffering_s"] * SAMPLE_RATE)
  t_need = next((t for n, t in sent_at if n >= min(need, len(audio))), t_start)
  first = times[0] if times else float("nan")
  fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
  return SessionResult(frames=frames, audio=np.asarray(audio, np.float32),
                       first_frame_s=first - t_start, server_latency_s=first - t_need, fps=fps,
                       wall_s=(times[-1] if times else time.perf_counter()) - t_start)


async def concurrent_sessions(n: int, *args, **kwargs) -> list[SessionResult]:
  """`n` sessions at once (each with its own connection), as `n` users would."""
  return list(await asyncio.gather(*(stream_session(*args, **kwargs) for _ in range(n))))


def run(url: str, image, audio, out, *, clients=(1,), **kwargs) -> dict:
  """`vasa-jax live-client`: streams with each number of concurrent `clients` in turn, writes
  the first session's frames to `out` (mp4 with the audio) and prints one line per session and
  a table per client count.

  Returns:
    {n clients: [SessionResult, ...]}.
  """
  # pylint: disable=import-outside-toplevel
  from websockets.exceptions import WebSocketException
  from vasa_jax.data import media
  from vasa_jax.errors import VasaInputError
  from vasa_jax.inference import generate_cli

  if image is None:
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(generate_cli.default_portrait()).save(buf, format="PNG")
    portrait = buf.getvalue()
  else:
    if not pathlib.Path(image).is_file():
      raise VasaInputError(f"--image {image}: file not found.")
    portrait = pathlib.Path(image).read_bytes()
  audio = audio or str(generate_cli.BUNDLED_SPEECH)
  wav = media.read_audio(audio, sr=SAMPLE_RATE)
  seconds = len(wav) / SAMPLE_RATE
  runs = {}
  for n in clients:
    try:
      results = asyncio.run(concurrent_sessions(int(n), url, portrait, wav, **kwargs))
    except (OSError, RuntimeError, asyncio.TimeoutError, WebSocketException) as e:
      raise VasaInputError(f"--url {url}: {e or type(e).__name__} (is `vasa-jax live` running "
                           "there?)") from None
    runs[int(n)] = results
    for i, r in enumerate(results):
      print(f"{n} clients, session {i}: {len(r.frames)} frames; first frame "
            f"{1000 * r.first_frame_s:.0f} ms after the first chunk "
            f"({1000 * r.server_latency_s:.0f} ms after its audio was sent); {r.fps:.1f} frames/s"
            f"; {r.wall_s:.1f} s for {seconds:.1f} s of audio")
  r0 = next(iter(runs.values()))[0]
  if out and r0.frames:
    media.write_video(out, np.stack(r0.frames), fps=FPS, audio=wav, sr=SAMPLE_RATE)
    print(f"Wrote {out} (first session).")
  print(summary_table(runs, seconds))
  return runs


def summary_table(runs: dict, seconds: float) -> str:
  """Markdown table: per client count, first-frame latency (mean over sessions, max) and frame
  rates (each session's, all sessions' together)."""
  rows = ["| clients | first frame after first chunk, ms (mean / max) | after its audio, ms "
          "(mean / max) | frames/s per session (mean) | frames/s all sessions | wall / audio |",
          "|---|---|---|---|---|---|"]
  for n, results in runs.items():
    first = np.array([r.first_frame_s for r in results]) * 1000
    own = np.array([r.server_latency_s for r in results]) * 1000
    fps = np.mean([r.fps for r in results])
    wall = max(r.wall_s for r in results)
    total = sum(len(r.frames) for r in results) / wall
    rows.append(f"| {n} | {first.mean():.0f} / {first.max():.0f} | {own.mean():.0f} / "
                f"{own.max():.0f} | {fps:.1f} | {total:.1f} | {wall / seconds:.2f} |")
  return "\n".join(rows)
