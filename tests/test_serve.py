"""The web app's job function and the live websocket server, on the tiny random pipeline.

Servers bind loopback on a free port, every wait is bounded, and each server stops when its
test's `async with` block ends."""
import asyncio
import inspect
import io
import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from vasa_jax import cli
from vasa_jax.data import media

gradio = pytest.importorskip("gradio")
websockets = pytest.importorskip("websockets")

from vasa_jax.serve import app, client, live, protocol  # noqa: E402  pylint: disable=wrong-import-position

SECONDS = 1.0


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
  from vasa_jax.inference import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel
  return pipeline_lib.load_pipeline(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def portrait_png():
  from skimage import data  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  Image.fromarray(data.astronaut()).save(buf, format="PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def wav():
  t = np.arange(int(SECONDS * 16000)) / 16000
  return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
          ).astype(np.float32)


@pytest.fixture(scope="module")
def server(pipe):
  srv = live.LiveServer(pipe, max_sessions=2, idle_timeout_s=20.0)
  srv.warm_up()
  return srv


# -- web app -----------------------------------------------------------------------------------


def _job_args(portrait, audio, **over):
  kw = dict(gaze_theta=0.0, gaze_phi=0.0, distance=0.0, emotion="neutral", steps=2,
            cfg_audio=0.5, cfg_gaze=1.0, mouth_scale=1.0, seed=0, paste_back=False)
  kw.update(over)
  return (portrait, audio, *kw.values())


def test_paste_back_kwargs_name_the_pipeline_arguments(pipe):
  names = set(inspect.signature(pipe.generate).parameters)
  for on in (False, True):
    kw = app.paste_back_kwargs(on)
    assert set(kw) <= names and kw["paste_back"] is on and kw["max_size"] == app.MAX_SIZE


def test_job_writes_one_video_per_job_and_reports_bad_input(pipe, wav, tmp_path):
  from skimage import data  # pylint: disable=import-outside-toplevel
  job = app.make_job(pipe, tmp_path / "out", max_seconds=5)
  speech = tmp_path / "speech.wav"
  media.write_wav(speech, wav)
  path1, status1 = job(*_job_args(data.astronaut(), str(speech)), progress=lambda *a, **k: None)
  path2, _ = job(*_job_args(data.astronaut(), str(speech), seed=1),
                 progress=lambda *a, **k: None)
  assert path1 != path2, status1
  video = media.read_video(path1, fps=None)
  assert video.frames.shape == (25, pipe.resolution, pipe.resolution, 3)
  assert f"25 frames (1.00 s) at {pipe.resolution}x{pipe.resolution}" in status1
  # Ticked (the page's default): the whole 512 x 512 photo with the face pasted back.
  path3, status3 = job(*_job_args(data.astronaut(), str(speech), paste_back=True),
                       progress=lambda *a, **k: None)
  assert media.read_video(path3, fps=None).frames.shape == (25, 512, 512, 3), status3

  empty = tmp_path / "empty.wav"
  sf.write(empty, np.zeros((0,), np.float32), 16000)
  garbage = tmp_path / "noise.wav"
  garbage.write_bytes(b"not audio at all")
  long = tmp_path / "long.wav"
  media.write_wav(long, np.zeros((16000 * 6,), np.float32))
  grey = np.full((256, 256, 3), 128, np.uint8)
  cases = {
      "no face": (_job_args(grey, str(speech)), "face"),
      "no portrait": (_job_args(None, str(speech)), "portrait"),
      "no speech": (_job_args(data.astronaut(), None), "speech"),
      "empty audio": (_job_args(data.astronaut(), str(empty)), "empty.wav"),
      "unreadable audio": (_job_args(data.astronaut(), str(garbage)), "noise.wav"),
      "too long": (_job_args(data.astronaut(), str(long)), "at most 5 s"),
      "cleared seed": (_job_args(data.astronaut(), str(speech), seed=None), "'seed'"),
      "bad mouth scale": (_job_args(data.astronaut(), str(speech), mouth_scale=-1), "mouth"),
  }
  for name, (args, expected) in cases.items():
    path, status = job(*args, progress=lambda *a, **k: None)
    assert path is None, name
    assert status.startswith("**Error:**") and expected in status, (name, status)
    assert "Traceback" not in status, name


def test_build_app_queues_one_job_at_a_time(pipe, tmp_path):
  demo = app.build_app(pipe, out_dir=tmp_path)
  assert {fn.concurrency_limit for fn in demo.fns.values()} == {1}
  assert {fn.concurrency_id for fn in demo.fns.values()} == {app.QUEUE_ID}


def test_cli_parses_the_serve_subcommands():
  parser = cli.build_parser()
  args = parser.parse_args(["serve", "--checkpoint", "d", "--host", "0.0.0.0", "--port", "0",
                            "--share"])
  assert (args.checkpoint, args.host, args.port, args.share) == ("d", "0.0.0.0", 0, True)
  args = parser.parse_args(["live", "--port", "9000", "--max-sessions", "2"])
  assert (args.port, args.max_sessions) == (9000, 2)
  args = parser.parse_args(["live-client", "--clients", "1,4", "--no-realtime"])
  assert (args.clients, args.realtime, args.url) == ([1, 4], False, "ws://127.0.0.1:8765")


# -- live server -------------------------------------------------------------------------------


def test_protocol_round_trips_frames_and_pcm():
  frame = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
  assert np.array_equal(protocol.decode_frame(protocol.encode_frame(7, frame,
                                                                     protocol.KIND_RAW))[1], frame)
  index, jpeg = protocol.decode_frame(protocol.encode_frame(3, frame, protocol.KIND_JPEG))
  assert index == 3 and jpeg.shape == frame.shape
  x = np.linspace(-1, 1, 101, dtype=np.float32)
  for pcm in protocol.PCM_DTYPES:
    np.testing.assert_allclose(protocol.pcm_to_float(protocol.float_to_pcm(x, pcm), pcm), x,
                               atol=1e-4)
  with pytest.raises(ValueError, match="whole number"):
    protocol.pcm_to_float(b"abc", "s16le")


def test_live_frames_are_the_pipelines_stream(pipe, server, portrait_png, wav):
  """Two sessions at once with different seeds: each gets exactly `Pipeline.stream`'s frames
  for its own seed (nothing mixed between sessions)."""
  async def main():
    async with server.listen("127.0.0.1", 0) as ws_server:
      url = f"ws://127.0.0.1:{ws_server.port}"
      return await asyncio.gather(*(
          client.stream_session(url, portrait_png, wav, chunk_ms=40, realtime=False, fmt="raw",
                                pcm="f32le", seed=seed, timeout_s=60) for seed in (3, 4)))

  results = asyncio.run(asyncio.wait_for(main(), 120))
  chunks = [wav[i:i + 640] for i in range(0, len(wav), 640)]
  image = np.asarray(Image.open(io.BytesIO(portrait_png)).convert("RGB"))
  for seed, result in zip((3, 4), results):
    expected = np.stack(list(pipe.stream(image, chunks, seed=seed)))
    assert len(result.frames) == len(expected) == 25
    np.testing.assert_array_equal(np.stack(result.frames), expected)
    assert result.first_frame_s > 0 and result.fps > 0
  assert not np.array_equal(results[0].frames[-1], results[1].frames[-1])
  assert server.active_sessions == 0


def test_live_disconnect_frees_the_session_and_others_go_on(server, portrait_png, wav):
  from websockets.asyncio.client import connect  # pylint: disable=import-outside-toplevel

  async def quitter(url):
    async with connect(url) as ws:
      await ws.send(json.dumps({"type": "start"}))
      await ws.send(portrait_png)
      assert json.loads(await ws.recv())["type"] == "ready"
      for i in range(0, 16000, 640):  # more than a window: frames are on their way
        await ws.send(protocol.float_to_pcm(wav[i:i + 640], "s16le"))
      frame = await asyncio.wait_for(ws.recv(), 60)
      assert isinstance(frame, bytes)
    # closed mid-stream without `end`

  async def main():
    async with server.listen("127.0.0.1", 0) as ws_server:
      url = f"ws://127.0.0.1:{ws_server.port}"
      finished = server.finished_sessions
      # One user streams at real time while another leaves mid-stream.
      stayer = asyncio.create_task(client.stream_session(url, portrait_png, wav, chunk_ms=40,
                                                         timeout_s=60))
      await quitter(url)
      for _ in range(600):  # the quitter's thread stops within one window
        if server.finished_sessions > finished:
          break
        await asyncio.sleep(0.1)
      assert server.finished_sessions == finished + 1
      assert server.active_sessions == 1  # the stayer's session only
      result = await stayer
      assert len(result.frames) == 25
      # The server still takes new clients.
      again = await client.stream_session(url, portrait_png, wav[:6400], realtime=False,
                                          timeout_s=60)
      assert len(again.frames) == 10
    return True

  assert asyncio.run(asyncio.wait_for(main(), 180))
  assert server.active_sessions == 0


def test_live_reports_bad_input_and_a_full_server(server, portrait_png, wav):
  from websockets.asyncio.client import connect  # pylint: disable=import-outside-toplevel

  async def refused(url, start, image):
    async with connect(url) as ws:
      await ws.send(json.dumps(start))
      if image is not None:
        await ws.send(image)
      msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
      assert msg["type"] == "error"
      return msg["message"]

  async def main():
    async with server.listen("127.0.0.1", 0) as ws_server:
      url = f"ws://127.0.0.1:{ws_server.port}"
      assert "not an image" in await refused(url, {"type": "start"}, b"\x00garbage")
      grey = io.BytesIO()
      Image.fromarray(np.full((128, 128, 3), 128, np.uint8)).save(grey, format="PNG")
      assert "face" in (await refused(url, {"type": "start"}, grey.getvalue())).lower()
      assert "first_window" in await refused(url, {"type": "start", "first_window": 999}, None)
      assert "JSON" in await refused(url, {"type": "hello"}, None)
      # Two sessions fill this server: a third is told so and the two finish.
      sessions = [asyncio.create_task(client.stream_session(url, portrait_png, wav,
                                                            timeout_s=60)) for _ in range(2)]
      for _ in range(1200):  # both sessions have started (bounded: 60 s)
        if server.active_sessions == 2:
          break
        await asyncio.sleep(0.05)
      assert "busy" in await refused(url, {"type": "start"}, portrait_png)
      return [len(r.frames) for r in await asyncio.gather(*sessions)]

  assert asyncio.run(asyncio.wait_for(main(), 180)) == [25, 25]


def test_cli_live_client_streams_saves_and_prints_a_table(server, wav, tmp_path, capsys):
  """`vasa-jax live-client` against a server running in its own thread and event loop."""
  import threading  # pylint: disable=import-outside-toplevel
  started, stop = threading.Event(), None
  ports, loops = [], []

  async def serve_until_stopped():
    nonlocal stop
    stop = asyncio.Event()
    async with server.listen("127.0.0.1", 0) as ws_server:
      ports.append(ws_server.port)
      loops.append(asyncio.get_running_loop())
      started.set()
      await asyncio.wait_for(stop.wait(), 120)

  thread = threading.Thread(target=asyncio.run, args=(serve_until_stopped(),), daemon=True)
  thread.start()
  assert started.wait(30)
  speech = tmp_path / "speech.wav"
  media.write_wav(speech, wav)
  out = tmp_path / "live.mp4"
  try:
    rc = cli.main(["live-client", "--url", f"ws://127.0.0.1:{ports[0]}", "--audio", str(speech),
                   "--out", str(out), "--clients", "1,2", "--no-realtime", "--chunk-ms", "20"])
  finally:
    loops[0].call_soon_threadsafe(stop.set)
    thread.join(30)
  assert rc == 0 and not thread.is_alive()
  text = capsys.readouterr().out
  assert text.count("25 frames; first frame") == 3
  table = [line for line in text.splitlines() if line.startswith("| ")]
  assert len(table) == 3 and table[1].startswith("| 1 |") and table[2].startswith("| 2 |")
  video = media.read_video(out, fps=None)
  assert video.frames.shape[0] == 25 and video.audio is not None


def test_two_users_at_once_get_their_own_videos(pipe, wav, tmp_path):
  """Two Gradio API clients submit at the same moment (different speech lengths and seeds):
  the queue runs them one after the other and each gets the video of its own input."""
  import socket  # pylint: disable=import-outside-toplevel
  from concurrent.futures import ThreadPoolExecutor  # pylint: disable=import-outside-toplevel
  from gradio_client import Client, handle_file  # pylint: disable=import-outside-toplevel
  from skimage import data  # pylint: disable=import-outside-toplevel

  portrait = tmp_path / "astronaut.png"
  Image.fromarray(data.astronaut()).save(portrait)
  lengths = {0: 1.0, 1: 0.6}
  speech = {}
  for k, sec in lengths.items():
    speech[k] = tmp_path / f"speech{k}.wav"
    media.write_wav(speech[k], wav[:int(sec * 16000)])
  demo = app.build_app(pipe, out_dir=tmp_path / "videos")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
  try:
    def submit(k):
      c = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False,
                 download_files=str(tmp_path / f"client{k}"))
      return c.predict(handle_file(str(portrait)), handle_file(str(speech[k])), 0.0, 0.0, 0.0,
                       "neutral", 2, 0.5, 1.0, 1.0, k, False, api_name="/job")

    with ThreadPoolExecutor(2) as pool:
      results = list(pool.map(submit, lengths))
  finally:
    demo.close()
  for k, (video, status) in enumerate(results):
    frames = media.read_video(video["video"] if isinstance(video, dict) else video,
                              fps=None).frames
    assert frames.shape[0] == round(lengths[k] * 25), (k, status)
  assert len(list((tmp_path / "videos").glob("*.mp4"))) == 2  # one file per job
