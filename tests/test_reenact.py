"""`vasa-jax reenact`: a portrait driven by a video's motion, with the driver's audio."""
import numpy as np
import pytest

from vasa_jax import cli
from vasa_jax.data import media


@pytest.fixture(scope="module")
def latent_export(tmp_path_factory):
  from vasa_jax.config_utils import load_config
  from vasa_jax.inference.pipeline import init_random_params
  from vasa_jax import params_io as checkpoint
  latent = load_config("configs/latent.py:tiny")
  params, _ = init_random_params(latent, load_config("configs/motion.py:tiny"))
  out = tmp_path_factory.mktemp("latent")
  checkpoint.export_params(params, latent, out, dtype="float32")
  return out


def _driving_video(path, frames=20):
  from skimage import data
  img = data.astronaut()
  clip = np.stack([np.roll(img, 2 * t, axis=1) for t in range(frames)])
  t = np.arange(frames * 640) / 16000
  media.write_video(path, clip, fps=25, audio=(0.2 * np.sin(2 * np.pi * 220 * t)).astype(
      np.float32), sr=16000)


@pytest.mark.parametrize("relative", [False, True])
def test_reenact_writes_driver_length_with_audio(latent_export, tmp_path, relative):
  from skimage import data
  from PIL import Image
  driving = tmp_path / "drv.mp4"
  _driving_video(driving)
  source = tmp_path / "src.png"
  Image.fromarray(data.astronaut()[::2, ::2]).save(source)
  out = tmp_path / "out.mp4"
  argv = ["reenact", "--checkpoint", str(latent_export), "--source", str(source),
          "--driving", str(driving), "--out", str(out)] + (["--relative"] if relative else [])
  assert cli.main(argv) == 0
  video = media.read_video(out, fps=None)
  assert abs(video.frames.shape[0] - 20) <= 1
  assert video.audio is not None and abs(len(video.audio) - 20 * 640) <= 640


def test_reenact_missing_checkpoint(tmp_path, capsys):
  rc = cli.main(["reenact", "--checkpoint", str(tmp_path / "nope"), "--source", "a.png",
                 "--driving", "b.mp4", "--out", str(tmp_path / "o.mp4")])
  assert rc == 2
  assert "nope" in capsys.readouterr().err


def test_reenact_accepts_a_pipeline_directory(tiny_pipeline_dir, tmp_path):
  from skimage import data
  from PIL import Image
  driving = tmp_path / "drv.mp4"
  _driving_video(driving, frames=8)
  source = tmp_path / "src.png"
  Image.fromarray(data.astronaut()[::2, ::2]).save(source)
  out = tmp_path / "out.mp4"
  assert cli.main(["reenact", "--checkpoint", str(tiny_pipeline_dir), "--source", str(source),
                   "--driving", str(driving), "--out", str(out)]) == 0
  assert abs(media.read_video(out, fps=None).frames.shape[0] - 8) <= 1


def test_reenact_wrong_path_does_not_advise_training_into_it(tmp_path, capsys):
  missing = tmp_path / "typo"
  cli.main(["reenact", "--checkpoint", str(missing), "--source", "a.png", "--driving", "b.mp4",
            "--out", str(tmp_path / "o.mp4")])
  err = capsys.readouterr().err
  assert "typo" in err and "Check the checkpoint path" in err
  assert f"--workdir {missing}" not in err
