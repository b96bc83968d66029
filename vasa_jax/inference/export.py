"""`vasa-jax export`: stage 1 + stage 2 training runs -> one pipeline directory."""
from __future__ import annotations

import json
import pathlib

import numpy as np

from vasa_jax import params_io
from vasa_jax.data import synthetic
from vasa_jax.errors import CheckpointError
from vasa_jax.inference import pipeline
from vasa_jax.inference.extract_motion import generator_params


def motion_stats_for(motion_config) -> dict:
  """The normalisation statistics the stage 2 run trained with."""
  root = motion_config.data.get("motion", "")
  if root and not motion_config.data.get("synthetic", False):
    path = pathlib.Path(root) / "motion_stats.json"
    if not path.is_file():
      raise CheckpointError(f"{path} not found: the stage 2 run's motion directory must still "
                            "exist (written by `vasa-jax extract-motion`).")
    return json.loads(path.read_text())
  # Synthetic training data: its own statistics.
  clips = synthetic.SyntheticMotion(int(motion_config.data.synthetic_clips),
                                    int(motion_config.data.synthetic_frames),
                                    int(motion_config.model.z_pose_dim),
                                    int(motion_config.model.z_dyn_dim), seed=int(motion_config.seed))
  return {k: np.asarray(v).tolist() for k, v in clips.stats.items()}


def export_pipeline(latent_workdir, motion_workdir, out, *, dtype: str = "bfloat16",
                    steps: int | None = None, cfg_audio: float | None = None,
                    cfg_gaze: float | None = None, mouth_scale: float | None = None):
  """Loads both runs (EMA parameters where kept) and writes a pipeline directory with default
  sampling steps and guidance scales (None: the motion config's) and mouth scale (None: 1)."""
  latent_config, latent_params = params_io.load_params(latent_workdir, ema=True)
  motion_config, motion_params = params_io.load_params(motion_workdir, ema=True)
  for cfg, name, want in ((latent_config, latent_workdir, "latent"),
                          (motion_config, motion_workdir, "motion")):
    if cfg is None or cfg.get("stage") != want:
      raise CheckpointError(f"{name} is not a {want} run (its config says stage "
                            f"{None if cfg is None else cfg.get('stage')!r}).")
  latent_params = generator_params(latent_params)  # the discriminator is not needed to generate
  stats = motion_stats_for(motion_config)
  out = pipeline.save_pipeline(out, latent_config, latent_params, motion_config, motion_params,
                               stats, dtype=dtype, steps=steps, cfg_audio=cfg_audio,
                               cfg_gaze=cfg_gaze, mouth_scale=mouth_scale)
  print(f"Wrote pipeline checkpoint to {out}")
  return out
