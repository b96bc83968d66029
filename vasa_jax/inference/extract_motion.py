"""`vasa-jax extract-motion`: the stage 1 motion encoder over every frame -> motion shards.

The output directory has the layout of `vasa-jax preprocess` (index.json + shards/): each record
keeps the clip's audio, audio features and labels, drops the JPEG frames and adds `z_pose` (T, 6)
and `z_dyn` (T, Dz). `motion_stats.json` holds the per-dimension mean/std of
`concat([z_pose, z_dyn])` over all clips, which the stage 2 pipeline and the sampler use to
normalise motion (stored again inside the exported pipeline, so inference needs no data).
"""
from __future__ import annotations

import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from vasa_jax import fileio, params_io
from vasa_jax.data import records
from vasa_jax.errors import VasaInputError
from vasa_jax.image_ops import to_float_image
from vasa_jax.inference.pipeline_io import PIPELINE_FILE
from vasa_jax.models import motion_labels
from vasa_jax.models.face_model import FaceModel

STATS_NAME = "motion_stats.json"


def load_face_model(latent_checkpoint: str | os.PathLike):
  """Stage 1 model + params from a training workdir, an export directory or a pipeline
  directory (`vasa-jax export`; its `latent/` part).

  Returns:
    (config, model, params) with `model` a `FaceModel` in float32.
  """
  if (pathlib.Path(latent_checkpoint).expanduser() / PIPELINE_FILE).is_file():
    latent_checkpoint = pathlib.Path(latent_checkpoint).expanduser() / "latent"
  config, params = params_io.load_params(latent_checkpoint, ema=True)
  if config is None or config.get("stage") != "latent":
    raise VasaInputError(f"{latent_checkpoint} is not a stage 1 (latent) checkpoint; pass the "
                         "workdir of `vasa-jax train --config configs/latent.py:...`.")
  return config, FaceModel(config.model), generator_params(params)


def generator_params(params):
  """The FaceModel parameters of a stage 1 run (its state also holds the discriminator's)."""
  return params["gen"] if "gen" in params else params


def pin_labels(model_config, rec: dict, z_pose: np.ndarray, z_dyn: np.ndarray):
  """The motion stage 1 trained its decoder on: with `label_motion`, the labelled entries of
  (z_pose (T, 6), z_dyn (T, Zd)) come from the record's face-mesh labels where they exist."""
  z_pose, z_dyn = np.asarray(z_pose, np.float32), np.asarray(z_dyn, np.float32)
  if not model_config.get("label_motion", False) or "head_pose" not in rec:
    return z_pose, z_dyn
  labels, valid = motion_labels.motion_labels(rec["head_pose"], rec["face_scale"],
                                              rec["mouth_open"], model_config)
  z_pose, z_dyn = motion_labels.apply_motion_labels(
      *(jnp.asarray(a) for a in (z_pose, z_dyn, labels, valid)))
  return np.asarray(z_pose, np.float32), np.asarray(z_dyn, np.float32)


def make_motion_encoder(model, params, batch: int):
  """A jitted function (n, R, R, 3) uint8 -> (z_pose (n, 6), z_dyn (n, Dz)), in fixed batches."""
  @jax.jit
  def encode(params, frames):  # (batch, R, R, 3) uint8
    img = to_float_image(frames)
    return model.apply({"params": params}, img, method=FaceModel.encode_motion)

  def run(frames: np.ndarray):
    n = frames.shape[0]
    pad = (-n) % batch  # one compiled shape for every clip
    frames = np.concatenate([frames, np.repeat(frames[-1:], pad, 0)]) if pad else frames
    poses, dyns = [], []
    for i in range(0, frames.shape[0], batch):
      z_pose, z_dyn = encode(params, frames[i:i + batch])
      poses.append(np.asarray(z_pose))
      dyns.append(np.asarray(z_dyn))
    return np.concatenate(poses)[:n], np.concatenate(dyns)[:n]

  return run


def resize_frames(frames: np.ndarray, resolution: int) -> np.ndarray:
  """(T, H, H, 3) uint8 -> (T, R, R, 3), LANCZOS (returned as is at R)."""
  if frames.shape[1] == resolution:
    return frames
  return np.stack([np.asarray(Image.fromarray(f).resize((resolution, resolution),
                                                        Image.Resampling.LANCZOS))
                   for f in frames])


def extract_motion(latent_checkpoint, shards, out, *, batch: int = 32,
                   progress: bool = True, shard_index: int = 0, num_shards: int = 1) -> dict:
  """Writes motion shards for every clip of `shards` (resumable: done clips are skipped).

  Args:
    latent_checkpoint: stage 1 workdir (or export directory).
    shards: the output directory of `vasa-jax preprocess`.
    out: output directory.
    batch: frames per encoder call.
    progress: show a progress bar.
    shard_index: this host's part of the clips (every num_shards-th clip of the index) ...
    num_shards: ... out of this many hosts; each writes its own `out`, and `merge_motion`
      joins them (one index, statistics over all clips).

  Returns:
    A summary dict: clips written now, total clips, frames, seconds, frames per second.
  """
  config, model, params = load_face_model(latent_checkpoint)
  resolution = int(config.model.resolution)
  src = records.ClipIndex.load(shards)
  out = pathlib.Path(out)
  (out / records.SHARD_DIR).mkdir(parents=True, exist_ok=True)
  dst = records.ClipIndex.load_or_new(out, resolution=src.resolution, fps=src.fps)
  dst.extra.update(source_shards=str(src.root), latent_checkpoint=str(latent_checkpoint),
                   z_pose_dim=int(config.model.z_pose_dim), z_dyn_dim=int(config.model.z_dyn_dim))
  done = dst.clip_names
  encode = make_motion_encoder(model, params, batch)
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise VasaInputError(f"Need 0 <= shard_index < num_shards, got {shard_index}/{num_shards}.")
  todo = [e for e in src.clips[shard_index::num_shards] if e["clip"] not in done]
  t0, frames_done = time.perf_counter(), 0
  bar = tqdm(todo, desc="extract-motion", unit="clip", disable=not progress)
  for entry in bar:
    rec = src.read(entry, decode_frames=True)
    frames = resize_frames(rec.pop("frames"), resolution)
    rec.pop("frames_jpeg", None)
    z_pose, z_dyn = encode(frames)
    rec["z_pose"], rec["z_dyn"] = pin_labels(config.model, rec, z_pose, z_dyn)
    name = f"motion-{len(dst.clips):05d}.array_record"
    records.write_shard(out / records.SHARD_DIR / name, [rec])
    dst.clips.append({k: v for k, v in entry.items() if k not in ("shard", "record")}
                     | {"shard": f"{records.SHARD_DIR}/{name}", "record": 0})
    dst.save()  # after the shard exists: a crash never leaves an entry without its data
    frames_done += frames.shape[0]
    bar.set_postfix(fps=f"{frames_done / max(time.perf_counter() - t0, 1e-9):.0f}")
  stats = motion_stats(dst)
  fileio.atomic_write_text(out / STATS_NAME, json.dumps(stats))
  seconds = time.perf_counter() - t0
  return {"written": len(todo), "total_clips": len(dst.clips), "frames": frames_done,
          "seconds": seconds, "frames_per_second": frames_done / max(seconds, 1e-9)}


def merge_motion(out_dirs, merged_out) -> records.ClipIndex:
  """One index over the motion of several hosts (`extract_motion(..., shard_index=i)`), with
  `motion_stats.json` computed over all their clips; shards stay where they are."""
  from vasa_jax.data import preprocess  # pylint: disable=import-outside-toplevel
  merged = preprocess.merge_indices(out_dirs, merged_out)
  merged.extra.update(records.ClipIndex.load(list(out_dirs)[0]).extra)
  merged.save()
  records.atomic_write_text(pathlib.Path(merged_out) / STATS_NAME,
                            json.dumps(motion_stats(merged)))
  return merged


def motion_stats(index: records.ClipIndex) -> dict:
  """Per-dimension mean/std of concat([z_pose, z_dyn]) over every frame of every clip."""
  total, s1, s2 = 0, None, None
  for entry in index.clips:
    rec = index.read(entry)
    m = np.concatenate([rec["z_pose"], rec["z_dyn"]], -1).astype(np.float64)  # (T, Dm)
    s1 = m.sum(0) if s1 is None else s1 + m.sum(0)
    s2 = (m ** 2).sum(0) if s2 is None else s2 + (m ** 2).sum(0)
    total += m.shape[0]
  if not total:
    raise VasaInputError(f"No clips in {index.root}; nothing to compute motion statistics on.")
  mean = s1 / total
  std = np.sqrt(np.maximum(s2 / total - mean ** 2, 0.0))
  return {"mean": mean.tolist(), "std": np.maximum(std, 1e-4).tolist(), "frames": int(total)}
