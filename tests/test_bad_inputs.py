"""Issue 22: bad input gives one clear line and exit 2 before any work (or a correct result),
never a wrong video, a destroyed input or a traceback.

Each row of the table runs `vasa-jax ...` in-process on the tiny random pipeline and checks: the
exit code, a phrase of the message (which names the argument or file), no output file, and the
input files byte for byte unchanged.
"""
import hashlib
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from vasa_jax import cli
from vasa_jax.errors import VasaInputError


def _png_header_only(path, width, height):
  """A PNG whose header claims width x height (its pixel data is absent): enough for PIL's
  open, which is where size limits must apply, at no memory cost."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  d = tmp_path_factory.mktemp("inputs")
  t = np.arange(16000) / 16000
  sf.write(d / "speech.wav", 0.3 * np.sin(2 * np.pi * 180 * t), 16000)
  Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(d / "face.png")
  _png_header_only(d / "huge.png", 20000, 12000)
  (d / "outdir").mkdir()
  return d


def _damaged(tiny_pipeline_dir, tmp_path, how):
  """A copy of the tiny pipeline with one kind of damage."""
  ckpt = tmp_path / "ckpt"
  shutil.copytree(tiny_pipeline_dir, ckpt)
  params = ckpt / "motion" / "params.msgpack"
  if how == "garbled":  # 4 KB overwritten inside a weight file
    data = bytearray(params.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = os.urandom(min(4096, len(data) // 2))
    params.write_bytes(bytes(data))
  elif how == "truncated-nosum":  # an older export (no checksum) cut short
    params.write_bytes(params.read_bytes()[:len(params.read_bytes()) // 3])
    (ckpt / "motion" / "params.sha256").unlink()
  elif how == "pipeline-json":
    (ckpt / "pipeline.json").write_text("{not json")
  elif how == "pipeline-stats":
    meta = json.loads((ckpt / "pipeline.json").read_text())
    del meta["motion_stats"]
    (ckpt / "pipeline.json").write_text(json.dumps(meta))
  elif how == "config-json":
    (ckpt / "latent" / "config.json").write_text("[1, 2")
  return ckpt


GEN = ["generate", "--audio", "{d}/speech.wav", "--image", "{d}/face.png"]
STREAM = ["stream", "--audio", "{d}/speech.wav", "--image", "{d}/face.png"]
EMOTION_NAN = ",".join(["nan"] * 8)

# (id, argv after the command's inputs, --out or None for {d}/o.mp4, checkpoint damage, phrase)
CASES = [
    ("cfg-audio-nan", GEN + ["--cfg-audio", "nan"], None, None, "cfg_audio (--cfg-audio)"),
    ("cfg-audio-inf", GEN + ["--cfg-audio", "inf"], None, None, "cfg_audio (--cfg-audio)"),
    ("cfg-gaze-nan", GEN + ["--cfg-gaze", "nan"], None, None, "cfg_gaze (--cfg-gaze)"),
    ("gaze-nan", GEN + ["--gaze", "nan,nan"], None, None, "gaze (--gaze)"),
    ("gaze-huge", GEN + ["--gaze", "1e9,1e9"], None, None, "gaze (--gaze)"),
    ("distance-nan", GEN + ["--distance", "nan"], None, None, "distance (--distance)"),
    ("distance-huge", GEN + ["--distance", "1e9"], None, None, "distance (--distance)"),
    ("emotion-nan", GEN + ["--emotion", EMOTION_NAN], None, None, "emotion (--emotion)"),
    ("mouth-scale-huge", GEN + ["--mouth-scale", "1e6"], None, None, "mouth_scale"),
    ("steps-0", GEN + ["--steps", "0"], None, None, "steps (--steps) must be an integer in [1"),
    ("steps-negative", GEN + ["--steps", "-1"], None, None, "steps (--steps)"),
    ("render-batch-negative", GEN + ["--render-batch", "-1"], None, None, "render_batch"),
    ("seed-huge", GEN + ["--seed", "99999999999999999999"], None, None, "seed (--seed)"),
    ("seed-negative", GEN + ["--seed", "-1"], None, None, "seed (--seed)"),
    ("stream-cfg-audio-nan", STREAM + ["--cfg-audio", "nan"], None, None, "cfg_audio"),
    ("stream-chunk-ms-nan", STREAM + ["--chunk-ms", "nan"], None, None, "chunk_ms (--chunk-ms)"),
    ("stream-chunk-ms-0", STREAM + ["--chunk-ms", "0"], None, None, "chunk_ms (--chunk-ms)"),
    ("out-is-image", GEN, "{d}/face.png", None, "is the input file"),
    ("out-is-audio", GEN, "{d}/speech.wav", None, "is the input file"),
    ("out-is-audio-via-dots", GEN, "{d}/outdir/../speech.wav", None, "is the input file"),
    ("out-is-directory", GEN, "{d}/outdir", None, "is a directory"),
    ("out-dir-missing", GEN, "{d}/nope/o.mp4", None, "does not exist"),
    ("audio-protocol-string", ["generate", "--audio", "concat:{d}/speech.wav|{d}/speech.wav"],
     None, None, "file not found"),
    ("image-missing", ["generate", "--image", "{d}/missing.png"], None, None, "file not found"),
    ("image-pixel-bomb", ["generate", "--image", "{d}/huge.png", "--audio", "{d}/speech.wav"],
     None, None, "MP limit"),
    ("weights-garbled", GEN, None, "garbled", "is damaged: its sha256"),
    ("weights-truncated", GEN, None, "truncated-nosum", "truncated or corrupt"),
    ("pipeline-json-bad", GEN, None, "pipeline-json", "pipeline.json is not valid JSON"),
    ("pipeline-json-no-stats", GEN, None, "pipeline-stats", "lacks valid motion_stats"),
    ("config-json-bad", GEN, None, "config-json", "config.json is not a valid config"),
    ("reenact-out-is-source", ["reenact", "--checkpoint", "{d}/never-loaded", "--source",
                               "{d}/face.png", "--driving", "{d}/face.png", "--out",
                               "{d}/face.png"], None, None, "is the input file"),
    ("override-type", ["train", "--config", "configs/toy.py", "--workdir", "{d}/run",
                       "--config.train.num_steps=ten"], None, None, "expected an integer"),
    ("override-unknown", ["train", "--config", "configs/toy.py", "--workdir", "{d}/run",
                          "--config.train.nope=1"], None, None, "unknown config key"),
    ("config-missing", ["train", "--config", "configs/nope.py", "--workdir", "{d}/run"],
     None, None, "not found"),
]


def _digest(directory):
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
          for p in directory.iterdir() if p.is_file()}


@pytest.mark.parametrize("name,argv,out,damage,phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(name, argv, out, damage, phrase, inputs, tiny_pipeline_dir,
                                      tmp_path, capsys):
  del name
  d = inputs
  out = (out or "{d}/o.mp4").format(d=d)
  argv = [a.format(d=d) for a in argv]
  if argv[0] in ("generate", "stream"):
    ckpt = _damaged(tiny_pipeline_dir, tmp_path, damage) if damage else tiny_pipeline_dir
    argv += ["--checkpoint", str(ckpt), "--out", out]
  before = _digest(d)
  capsys.readouterr()
  rc = cli.main(argv)
  err = capsys.readouterr().err.strip()
  assert rc == 2, err
  assert phrase in err, err
  assert len(err.splitlines()) == 1, err  # one line, no traceback
  assert _digest(d) == before  # inputs untouched
  assert not os.path.isfile(os.path.join(d, "o.mp4"))
  assert not [p for p in os.listdir(d) if ".tmp" in p]  # no temporary files left
  assert not (d / "run").exists()  # a training run that fails its config does no work


def test_read_only_output_folder_fails_before_work(inputs, tmp_path, capsys, monkeypatch):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  if os.geteuid() == 0:  # root writes into read-only folders: make the folder refuse as a mount
    from vasa_jax.data import media  # pylint: disable=import-outside-toplevel
    real_mkstemp = media.video_write.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):  # pylint: disable=redefined-builtin
      if dir is not None and os.path.samefile(dir, ro):
        raise PermissionError(13, "Permission denied")
      return real_mkstemp(*args, dir=dir, **kw)
    monkeypatch.setattr(media.video_write.tempfile, "mkstemp", mkstemp)
  try:
    rc = cli.main(["generate", "--audio", str(inputs / "speech.wav"), "--out", str(ro / "o.mp4"),
                   "--checkpoint", str(tmp_path / "never-loaded")])
  finally:
    ro.chmod(0o755)
  assert rc == 2 and "cannot write in" in capsys.readouterr().err


def test_python_api_gets_the_same_messages(tiny_pipeline_dir, inputs, capsys):
  """The web app calls Pipeline.generate/stream: the same check, the same words."""
  from vasa_jax.inference import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel
  pipe = pipeline_lib.load_pipeline(tiny_pipeline_dir)
  wav = np.zeros(16000, np.float32)
  for kw in (dict(cfg_audio=float("nan")), dict(steps=0), dict(gaze=(1e9, 0.0)),
             dict(seed=2**40), dict(emotion=[float("nan")] * 8), dict(distance=float("inf"))):
    key = next(iter(kw))
    with pytest.raises(VasaInputError) as api_error:
      pipe.generate(inputs / "face.png", wav, **kw)
    assert f"{key} (--{key.replace('_', '-')})" in str(api_error.value)
    with pytest.raises(VasaInputError) as stream_error:
      next(pipe.stream(inputs / "face.png", [wav], **kw))
    assert str(stream_error.value) == str(api_error.value)
    flag = {"gaze": "1e9,0", "emotion": EMOTION_NAN}.get(key, str(kw[key]))
    capsys.readouterr()
    option = f"--{key.replace('_', '-')}"
    assert cli.main(["generate", "--audio", str(inputs / "speech.wav"), option, flag,
                     "--out", str(inputs / "o.mp4")]) == 2
    assert f"{key} ({option}) must" in capsys.readouterr().err


def test_a_damaged_bundled_style_checkpoint_is_caught_by_its_checksum(tiny_pipeline_dir):
  """Every export writes params.sha256 (sha256sum format) and the bundled demo carries one."""
  from vasa_jax.inference import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel
  for part in ("latent", "motion"):
    for root in (tiny_pipeline_dir, pipeline_lib.DEFAULT_CHECKPOINT):
      line = (root / part / "params.sha256").read_text()
      digest = hashlib.sha256((root / part / "params.msgpack").read_bytes()).hexdigest()
      assert line == f"{digest}  params.msgpack\n"


_WRITER = """
import sys, numpy as np
from vasa_jax import cli
from vasa_jax.data import media
cli._exit_on_sigterm()
with media.VideoWriter(sys.argv[1], fps=25, audio=np.zeros(16000, np.float32)) as w:
  w.write(np.zeros((16, 16, 3), np.uint8))
  print("writing", flush=True)
  while True:
    w.write(np.zeros((16, 16, 3), np.uint8))
"""


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGKILL"])
def test_killed_writer_leaves_nothing_the_next_run_keeps(signum, tmp_path):
  """SIGTERM cleans up on the way out; after SIGKILL the next run's output check does."""
  import signal  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from vasa_jax.data import media  # pylint: disable=import-outside-toplevel
  out = tmp_path / "o.mp4"
  proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out)], stdout=subprocess.PIPE,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.stdout.readline().strip() == b"writing"
  proc.send_signal(getattr(signal, signum))
  proc.wait(timeout=60)
  temps = [p for p in os.listdir(tmp_path) if ".tmp" in p]
  if signum == "SIGTERM":
    assert proc.returncode == 128 + signal.SIGTERM and not temps
  else:
    assert temps  # what a killed run leaves ...
    media.check_output_path(out, what="--out")
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]  # ... the next run removes
  assert not out.exists()


def test_ordinary_and_boundary_controls_pass():
  from vasa_jax.inference.controls import check_controls  # pylint: disable=import-outside-toplevel
  check_controls(cfg_audio=0.5, cfg_gaze=10, gaze=(0.3, -np.pi / 2), distance=np.array([-5.0]),
                 emotion="happy", mouth_scale=0, steps=25.0, seed=np.uint32(2**32 - 1),
                 render_batch=0, chunk_ms=0.5)
  check_controls(emotion=",".join(["0"] * 7 + ["2"]))  # an offset vector at the range's edge
  check_controls()  # every default
