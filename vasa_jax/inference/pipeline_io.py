"""Pipeline directories: `save_pipeline` writes latent/, motion/ and pipeline.json (default
steps, guidance scales, mouth scale, motion statistics); `load_pipeline` reads one back (default:
the bundled demo checkpoint) into a `Pipeline`, with clear errors on a broken directory."""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from vasa_jax import params_io
from vasa_jax.errors import CheckpointError, VasaInputError
from vasa_jax.fileio import atomic_write_text
from vasa_jax.inference.controls import check_controls
from vasa_jax.inference.pipeline import Pipeline, check_mouth_scale

PIPELINE_FILE = "pipeline.json"
DEFAULT_CHECKPOINT = pathlib.Path(__file__).resolve().parent.parent / "assets" / "demo"


def save_pipeline(out_dir, latent_config, latent_params, motion_config, motion_params,
                  motion_stats, *, dtype: str = "bfloat16", steps: int | None = None,
                  cfg_audio: float | None = None, cfg_gaze: float | None = None,
                  mouth_scale: float | None = None):
  """Writes a self-describing pipeline directory (latent/, motion/, pipeline.json) with the
  default sampling steps and guidance scales (None: the motion config's) and mouth scale
  (None: 1)."""
  check_controls(steps=steps, cfg_audio=cfg_audio, cfg_gaze=cfg_gaze, mouth_scale=mouth_scale)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  params_io.export_params(latent_params, latent_config, out / "latent", dtype=dtype)
  params_io.export_params(motion_params, motion_config, out / "motion", dtype=dtype)
  meta = {"format": "vasa-jax-pipeline", "version": 1,
          "motion_stats": {"mean": [float(v) for v in motion_stats["mean"]],
                           "std": [float(v) for v in motion_stats["std"]]},
          "steps": int(steps or motion_config.diffusion.sample_steps),
          "cfg_audio": float(motion_config.diffusion.cfg_audio if cfg_audio is None
                             else cfg_audio),
          "cfg_gaze": float(motion_config.diffusion.cfg_gaze if cfg_gaze is None else cfg_gaze),
          "mouth_scale": check_mouth_scale(1.0 if mouth_scale is None else mouth_scale)}
  atomic_write_text(out / PIPELINE_FILE, json.dumps(meta, indent=1))
  return out


def load_pipeline(path: str | os.PathLike | None = None, **kwargs) -> Pipeline:
  """Loads a pipeline directory (default: the bundled demo checkpoint).

  Args:
    path: a directory written by `vasa-jax export` / `save_pipeline`.
    **kwargs: passed to `Pipeline` (steps, cfg_audio, cfg_gaze, mouth_scale, pose_mode,
      compute_dtype, render_batch); the first four default to the values stored with the
      pipeline.
  """
  p = pathlib.Path(path).expanduser() if path is not None else DEFAULT_CHECKPOINT
  meta_path = p / PIPELINE_FILE
  if not meta_path.is_file():
    hint = ("the bundled demo checkpoint is missing from this install; reinstall vasa-jax"
            if path is None else "pass a directory written by `vasa-jax export`")
    raise CheckpointError(f"No pipeline checkpoint at {p} ({PIPELINE_FILE} not found): {hint}.")
  meta = _read_pipeline_meta(meta_path)
  latent_config, latent_params = params_io.load_exported(p / "latent")
  motion_config, motion_params = params_io.load_exported(p / "motion")
  for k in ("steps", "cfg_audio", "cfg_gaze", "mouth_scale"):  # older directories lack some
    kwargs.setdefault(k, meta.get(k))
  try:
    return Pipeline(latent_config, latent_params, motion_config, motion_params,
                    meta["motion_stats"], **kwargs)
  except (KeyError, TypeError, AttributeError) as e:  # a config.json missing fields
    raise CheckpointError(f"{p} does not fit this version of vasa-jax: its config.json lacks or "
                          f"mistypes {e}. Re-export the checkpoint.") from None


def _read_pipeline_meta(meta_path: pathlib.Path) -> dict:
  """pipeline.json, checked: valid JSON, motion statistics of equal length, sane defaults."""
  fix = "Re-export the checkpoint (vasa-jax export) or restore the file."
  try:
    meta = json.loads(meta_path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{meta_path} is not valid JSON ({e}). {fix}") from None
  stats = meta.get("motion_stats") if isinstance(meta, dict) else None
  try:
    ok = (len(stats["mean"]) == len(stats["std"]) > 0
          and np.all(np.isfinite(np.asarray(stats["mean"] + stats["std"], np.float64)))
          and min(stats["std"]) > 0)
  except (TypeError, KeyError, ValueError):
    ok = False
  if not ok:
    raise CheckpointError(f"{meta_path} lacks valid motion_stats (mean and std lists of equal "
                          f"length, std > 0). {fix}")
  try:
    check_controls(steps=meta.get("steps"), cfg_audio=meta.get("cfg_audio"),
                   cfg_gaze=meta.get("cfg_gaze"), mouth_scale=meta.get("mouth_scale"))
  except VasaInputError as e:
    raise CheckpointError(f"{meta_path}: stored default {e} {fix}") from None
  return meta
