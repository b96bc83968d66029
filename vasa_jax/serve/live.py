"""`vasa-jax live`: a websocket server that turns live speech into talking-face frames.

The wire format is in `protocol`. Each session prepares its portrait once, then runs
`Pipeline.stream` in its own thread: audio chunks go in through a bounded queue (a client that
sends faster than the model consumes is slowed down by the socket, not buffered without limit)
and every frame is sent the moment the decoder has it. A session ends when the client sends
`end` (the last frames are flushed), disconnects, or stays silent for `idle_timeout_s`; then its
thread stops within one window and its memory is released while other sessions go on.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import threading

import numpy as np

from vasa_jax.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from vasa_jax.errors import VasaInputError
from vasa_jax.inference import paste_back
from vasa_jax.serve import protocol

log = logging.getLogger(__name__)

AUDIO_QUEUE_CHUNKS = 64  # chunks buffered per session before the client is slowed down
MAX_MESSAGE_BYTES = 32 * 2**20  # a portrait file or an audio chunk
_END, _CANCEL = object(), object()


class _Cancelled(Exception):
  """The session ended early (disconnect, timeout): stop generating."""


class LiveServer:
  """Serves `pipe` to at most `max_sessions` websocket clients at once.

  Args:
    pipe: a loaded `Pipeline`.
    max_sessions: clients beyond this get an error message ("busy") and are closed.
    idle_timeout_s: a session that sends nothing for this long is closed.
    max_seconds: the most audio one session may send.
  """

  def __init__(self, pipe, *, max_sessions: int = 4, idle_timeout_s: float = 30.0,
               max_seconds: float = 600.0):
    self.pipe = pipe
    self.max_sessions = int(max_sessions)
    self.idle_timeout_s = float(idle_timeout_s)
    self.max_seconds = float(max_seconds)
    self.active_sessions = 0  # sessions whose generation thread is still alive
    self.finished_sessions = 0

  def warm_up(self, first_window: int | None = None, steps: int | None = None):
    """Compiles every shape a session uses (on the bundled astronaut and silence), so the first
    client's latency is the model's, not the compiler's."""
    from vasa_jax.inference.generate_cli import default_portrait  # pylint: disable=import-outside-toplevel
    portrait = self.pipe.prepare_portrait(default_portrait())
    silence = np.zeros(((2 * self.pipe.window + 1) * SAMPLES_PER_FRAME,), np.float32)
    for _ in self.pipe.stream(portrait, [silence], first_window=first_window, steps=steps):
      pass

  @contextlib.asynccontextmanager
  async def listen(self, host: str = "127.0.0.1", port: int = 8765):
    """Serves while the context is open; yields the websockets server (its `port`)."""
    from websockets.asyncio.server import serve  # pylint: disable=import-outside-toplevel
    async with serve(self.session, host, port, max_size=MAX_MESSAGE_BYTES) as server:
      server.port = server.sockets[0].getsockname()[1]
      yield server

  # -- one session -----------------------------------------------------------------------------

  async def session(self, ws):
    """One client, from its `start` message to `done` (or its disconnect)."""
    if self.active_sessions >= self.max_sessions:
      await _send_error(ws, f"Server busy: {self.max_sessions} sessions already running; try "
                        "again later.")
      return
    self.active_sessions += 1
    cancel = threading.Event()
    audio_q: queue.Queue = queue.Queue(maxsize=AUDIO_QUEUE_CHUNKS)
    worker_done = receiver = sender = None
    try:
      try:
        start, portrait = await self._open(ws)
      except (VasaInputError, ValueError) as e:
        await _send_error(ws, str(e))
        return
      loop = asyncio.get_running_loop()
      frames_q: asyncio.Queue = asyncio.Queue()
      worker_done = loop.create_future()
      threading.Thread(target=self._generate, name="vasa-live-session", daemon=True,
                       args=(portrait, start, audio_q, cancel, loop, frames_q, worker_done)
                       ).start()
      receiver = asyncio.create_task(self._receive(ws, start["pcm"], audio_q))
      sender = asyncio.create_task(_send_frames(ws, frames_q))
      await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
      if receiver.done() and receiver.exception() is None:
        await sender  # `end` arrived: send the last frames
      elif sender.done() and sender.exception() is None:
        receiver.cancel()  # generation stopped on an error already reported
      else:
        for task in (receiver, sender):
          error = task.exception() if task.done() else None
          if isinstance(error, (VasaInputError, ValueError)):  # e.g. odd PCM, too much audio
            await _send_error(ws, str(error))
          elif error is not None:
            log.info("live session ended early: %r", error)
    except Exception as e:  # pylint: disable=broad-exception-caught
      log.warning("live session ended early: %r", e)
    finally:
      cancel.set()
      _drain(audio_q)
      audio_q.put_nowait(_CANCEL)
      for task in (receiver, sender):
        if task is not None:
          task.cancel()
      if worker_done is not None:
        with contextlib.suppress(asyncio.TimeoutError):
          await asyncio.wait_for(asyncio.shield(worker_done), 120)
      self.active_sessions -= 1
      self.finished_sessions += 1

  async def _open(self, ws):
    """The `start` message and the portrait -> (checked start, encoded portrait); sends
    `ready`."""
    start = await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
    try:
      start = json.loads(start)
    except (TypeError, ValueError):
      start = None
    if not isinstance(start, dict) or start.get("type") != "start":
      raise VasaInputError('The first message must be a JSON text {"type": "start", ...}.')
    start.setdefault("format", "jpeg")
    start.setdefault("pcm", "s16le")
    if start["format"] not in protocol.FORMATS:
      raise VasaInputError(f"format {start['format']!r}: use one of {sorted(protocol.FORMATS)}.")
    if start["pcm"] not in protocol.PCM_DTYPES:
      raise VasaInputError(f"pcm {start['pcm']!r}: use one of {sorted(protocol.PCM_DTYPES)}.")
    fw = start.get("first_window")
    if fw is not None and not 1 <= int(fw) <= self.pipe.window:
      raise VasaInputError(f"first_window {fw}: use 1..{self.pipe.window} (this checkpoint's "
                           "window W).")
    self.pipe.controls(start.get("gaze"), start.get("distance"), start.get("emotion"))  # checks
    start["paste_back"] = bool(start.get("paste_back", True))
    start["max_size"] = start.get("max_size", paste_back.DEFAULT_MAX_SIZE)
    if not (isinstance(start["max_size"], int) and 16 <= start["max_size"] <= 4096):
      raise VasaInputError(f"max_size {start['max_size']!r}: give a whole number of pixels in "
                           "16..4096 (the long side of a pasted-back frame).")
    image = await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
    if not isinstance(image, bytes):
      raise VasaInputError("The second message must be the portrait image file (binary).")
    portrait = await asyncio.to_thread(self._prepare, image)
    h, w = (paste_back.output_size(*portrait.photo.shape[:2], start["max_size"])
            if start["paste_back"] else portrait.crop.shape[:2])
    await ws.send(json.dumps({
        "type": "ready", "fps": FPS, "sample_rate": SAMPLE_RATE, "width": w, "height": h,
        "buffering_s": self.pipe.stream_buffering_s(fw)}))
    return start, portrait

  def _prepare(self, image_bytes: bytes):
    # Through a file so `media.read_image` applies its checks, EXIF rotation and mode handling.
    import tempfile  # pylint: disable=import-outside-toplevel
    from vasa_jax.data import media  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory(prefix="vasa-live-") as tmp:
      path = os.path.join(tmp, "portrait")
      with open(path, "wb") as f:
        f.write(image_bytes)
      try:
        image = media.read_image(path)
      except VasaInputError as e:
        raise VasaInputError(f"The uploaded portrait ({len(image_bytes)} bytes) is not an image "
                             f"PIL can read: send a PNG or JPEG file. ({e})") from None
    return self.pipe.prepare_portrait(image, source="the uploaded portrait")

  async def _receive(self, ws, pcm: str, audio_q: queue.Queue):
    """Client messages -> the audio queue, until `end`."""
    received = 0
    while True:
      msg = await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
      if isinstance(msg, str):
        if json.loads(msg).get("type") == "end":
          await _put(audio_q, _END)
          return
        continue
      samples = protocol.pcm_to_float(msg, pcm)
      received += samples.size
      if received > self.max_seconds * SAMPLE_RATE:
        raise VasaInputError(f"More than {self.max_seconds:g} s of audio in one session.")
      await _put(audio_q, samples)

  def _generate(self, portrait, start, audio_q, cancel, loop, frames_q, worker_done):
    """The session's thread: `Pipeline.stream` over the queued audio -> encoded frames."""
    kind = protocol.FORMATS[start["format"]]
    quality = int(start.get("quality", 85))

    def post(item):
      with contextlib.suppress(RuntimeError):  # the event loop is gone: nobody to tell
        loop.call_soon_threadsafe(frames_q.put_nowait, item)

    def chunks():
      while True:
        item = audio_q.get()
        if item is _END:
          return
        if item is _CANCEL or cancel.is_set():
          raise _Cancelled
        yield item

    n = 0
    try:
      kw = {k: start[k] for k in ("gaze", "distance", "emotion", "cfg_audio", "cfg_gaze",
                                  "steps", "mouth_scale", "seed", "first_window",
                                  "paste_back", "max_size")
            if start.get(k) is not None}
      for frame in self.pipe.stream(portrait, chunks(), **kw):
        if cancel.is_set():
          raise _Cancelled
        post(protocol.encode_frame(n, frame, kind, quality))
        n += 1
      post({"type": "done", "frames": n})
    except _Cancelled:
      pass
    except (VasaInputError, ValueError) as e:
      post({"type": "error", "message": str(e)})
    except Exception as e:  # pylint: disable=broad-exception-caught
      log.exception("live generation failed")
      post({"type": "error", "message": f"generation failed ({type(e).__name__}: {e})"})
    finally:
      with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_set_done, worker_done)


def _set_done(future):
  if not future.done():
    future.set_result(None)


def _drain(q: queue.Queue):
  with contextlib.suppress(queue.Empty):
    while True:
      q.get_nowait()


async def _put(q: queue.Queue, item):
  """Puts into a bounded thread queue without blocking the event loop."""
  while True:
    try:
      q.put_nowait(item)
      return
    except queue.Full:
      await asyncio.sleep(0.005)


async def _send_frames(ws, frames_q: asyncio.Queue):
  """Frames and the final `done`/`error` message -> the client."""
  while True:
    item = await frames_q.get()
    if isinstance(item, bytes):
      await ws.send(item)
      continue
    await ws.send(json.dumps(item))
    return


async def _send_error(ws, message: str, linger_s: float = 5.0):
  """Sends an error and lets the client close: closing with its messages unread would reset the
  connection, and the client could lose the error."""
  with contextlib.suppress(Exception):
    await ws.send(json.dumps({"type": "error", "message": message}))
    async with asyncio.timeout(linger_s):
      async for _ in ws:
        pass


def serve(checkpoint=None, *, host: str = "127.0.0.1", port: int = 8765, max_sessions: int = 4,
          idle_timeout_s: float = 30.0, first_window: int | None = None, steps=None):
  """Loads the pipeline, compiles it, and serves until Ctrl-C."""
  from vasa_jax.inference import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel

  pipe = pipeline_lib.load_pipeline(checkpoint, **({} if steps is None else {"steps": steps}))
  server = LiveServer(pipe, max_sessions=max_sessions, idle_timeout_s=idle_timeout_s)
  print("vasa-jax live: compiling ...", flush=True)
  server.warm_up(first_window=first_window)

  async def main():
    async with server.listen(host, port) as ws_server:
      print(f"vasa-jax live: serving ws://{host}:{ws_server.port} (at most {max_sessions} "
            "sessions; Ctrl-C stops)", flush=True)
      await asyncio.Future()

  with contextlib.suppress(KeyboardInterrupt):
    asyncio.run(main())
