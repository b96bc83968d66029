"""`vasa-jax reenact`: the source portrait's appearance and identity, the driver's motion.

This exercises stage 1 alone: if the latent space disentangles well, the output shows the
source person making the driver's head movements and expressions.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vasa_jax.constants import FPS, SAMPLE_RATE
from vasa_jax.data import face_crop, face_labels, media
from vasa_jax.image_ops import to_float_image, to_uint8_image
from vasa_jax.inference.extract_motion import load_face_model
from vasa_jax.inference.pipeline import broadcast_batch
from vasa_jax.inference.pipeline_io import DEFAULT_CHECKPOINT
from vasa_jax.models import layers, motion_labels as ml
from vasa_jax.models.face_model import FaceModel, encode_portrait


def reenact_frames(model, params, source_crop: np.ndarray, driver_crops: np.ndarray, *,
                   relative: bool = False, batch: int = 16, source_labels=None,
                   driver_labels=None) -> np.ndarray:
  """Renders (T, R, R, 3) uint8 frames of the source driven by `driver_crops` (T, R, R, 3).

  With `relative`, the driver's motion is applied as an offset from its first frame to the
  source's own pose and dynamics (keeps the source's framing and resting expression).
  `source_labels` ((1, 5), (1,)) and `driver_labels` ((T, 5), (T,)) are (labels, valid) of
  `motion_labels` for a model with `label_motion` (None: the encoder's own motion).
  """
  n_drv = driver_crops.shape[0]
  source_labels = ml.no_labels(1) if source_labels is None else source_labels
  driver_labels = ml.no_labels(n_drv) if driver_labels is None else driver_labels

  def encode_driver(params, imgs, labels, valid):
    z_pose, z_dyn = model.apply({"params": params}, to_float_image(imgs),
                                method=FaceModel.encode_motion)
    return ml.apply_motion_labels(z_pose, z_dyn, labels, valid)

  @jax.jit
  def drive(params, v_can, z_id, imgs, labels, valid, offset_pose, offset_dyn):
    z_pose, z_dyn = encode_driver(params, imgs, labels, valid)
    n = imgs.shape[0]
    out = model.apply({"params": params}, broadcast_batch(v_can, n),
                      broadcast_batch(z_id, n), z_pose + offset_pose,
                      z_dyn + offset_dyn, method=FaceModel.render)
    return to_uint8_image(out)

  # The source is encoded as `Pipeline.prepare_portrait` encodes a portrait.
  v_can, z_id, z_pose_s, z_dyn_s = jax.jit(functools.partial(encode_portrait, model))(
      params, source_crop[None], *source_labels)
  if relative:
    z_pose_d0, z_dyn_d0 = jax.jit(encode_driver)(params, driver_crops[:1], driver_labels[0][:1],
                                                 driver_labels[1][:1])
    off_pose, off_dyn = z_pose_s - z_pose_d0, z_dyn_s - z_dyn_d0
  else:
    off_pose, off_dyn = jnp.zeros_like(z_pose_s), jnp.zeros_like(z_dyn_s)
  n = driver_crops.shape[0]
  out = []
  for start in tqdm(range(0, n, batch), desc="reenact", unit="batch"):
    parts = [a[start:start + batch] for a in (driver_crops, *driver_labels)]
    m = parts[0].shape[0]
    if m < batch:  # one compiled shape
      parts = [np.concatenate([a, np.repeat(a[-1:], batch - m, 0)]) for a in parts]
    out.append(np.asarray(drive(params, v_can, z_id, *parts, off_pose, off_dyn))[:m])
  return np.concatenate(out)


def crop_source(path, resolution: int, face_cfg) -> tuple[np.ndarray, tuple]:
  """A portrait cropped as in training, (R, R, 3), and its motion labels ((1, 5), (1,)): the face
  mesh's pose and mouth (all invalid without `label_motion`)."""
  src = face_crop.crop_image(media.read_image(path), resolution, source=str(path))
  return src.image, face_labels.landmark_labels(src.landmarks[None], resolution, face_cfg)


def crop_driver(path, resolution: int, face_cfg, *, max_frames: int | None = None,
                progress: bool = False) -> tuple[media.Video, np.ndarray, tuple]:
  """A driving clip read at FPS and cropped as in training: (the video, crops (T, R, R, 3), their
  motion labels ((T, 5), (T,))), from its first `max_frames` frames (None: all)."""
  video = media.read_video(path, fps=float(FPS), max_side=640)
  drv = face_crop.crop_clip(video.frames[:max_frames], resolution, source=str(path),
                            progress=progress)
  return video, drv.frames, face_labels.landmark_labels(drv.landmarks, resolution, face_cfg)


def reenact(checkpoint, source, driving, out, *, relative: bool = False) -> str:
  """Reads the inputs, crops them as in training, renders and writes `out` with the driver's
  audio (when it has any).

  Args:
    checkpoint: a stage 1 training workdir, its export, or a pipeline directory (None: the
      bundled demo pipeline).
    source: the portrait; driving: the video whose motion drives it; out: the .mp4 to write.
    relative: apply the driver's motion as an offset from its first frame.
  """
  checkpoint = DEFAULT_CHECKPOINT if checkpoint is None else checkpoint

  config, model, params = load_face_model(checkpoint)
  r = int(config.model.resolution)
  face_cfg = layers.as_face_config(config.model)
  src, src_labels = crop_source(source, r, face_cfg)
  video, drv, drv_labels = crop_driver(driving, r, face_cfg, progress=True)
  frames = reenact_frames(model, params, src, drv, relative=relative,
                          source_labels=src_labels, driver_labels=drv_labels)
  media.write_video(out, frames, fps=float(FPS), audio=video.audio, sr=SAMPLE_RATE)
  print(f"Wrote {out}: {len(frames)} frames")
  return str(out)
