"""`vasa-jax reenact`: the source portrait's appearance and identity, the driver's motion.

This exercises stage 1 alone: if the latent space disentangles well, the output shows the
source person making the driver's head movements and expressions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm


def reenact_frames(model, params, source_crop: np.ndarray, driver_crops: np.ndarray, *,
                   relative: bool = False, batch: int = 16) -> np.ndarray:
  """Renders (T, R, R, 3) uint8 frames of the source driven by `driver_crops` (T, R, R, 3).

  With `relative`, the driver's motion is applied as an offset from its first frame to the
  source's own pose and dynamics (keeps the source's framing and resting expression).
  """
  from vasa_jax.models.face_model import FaceModel  # pylint: disable=import-outside-toplevel

  to_float = lambda x: x.astype(jnp.float32) / 127.5 - 1.0

  @jax.jit
  def encode_source(params, img):
    lat = model.apply({"params": params}, to_float(img), method=FaceModel.encode)
    v_can = model.apply({"params": params}, lat["v_app"], lat["z_id"], lat["z_pose"],
                        lat["z_dyn"], method=FaceModel.canonicalize)
    return v_can, lat["z_id"], lat["z_pose"], lat["z_dyn"]

  @jax.jit
  def drive(params, v_can, z_id, imgs, offset_pose, offset_dyn):
    z_pose, z_dyn = model.apply({"params": params}, to_float(imgs),
                                method=FaceModel.encode_motion)
    n = imgs.shape[0]
    out = model.apply({"params": params}, jnp.broadcast_to(v_can, (n,) + v_can.shape[1:]),
                      jnp.broadcast_to(z_id, (n,) + z_id.shape[1:]), z_pose + offset_pose,
                      z_dyn + offset_dyn, method=FaceModel.render)
    return jnp.clip(jnp.round((out + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

  v_can, z_id, z_pose_s, z_dyn_s = encode_source(params, source_crop[None])
  if relative:
    z_pose_d0, z_dyn_d0 = jax.jit(lambda p, x: model.apply(
        {"params": p}, to_float(x), method=FaceModel.encode_motion))(params, driver_crops[:1])
    off_pose, off_dyn = z_pose_s - z_pose_d0, z_dyn_s - z_dyn_d0
  else:
    off_pose, off_dyn = jnp.zeros_like(z_pose_s), jnp.zeros_like(z_dyn_s)
  n = driver_crops.shape[0]
  out = []
  for start in tqdm(range(0, n, batch), desc="reenact", unit="batch"):
    chunk = driver_crops[start:start + batch]
    m = chunk.shape[0]
    if m < batch:  # one compiled shape
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - m, 0)])
    out.append(np.asarray(drive(params, v_can, z_id, chunk, off_pose, off_dyn))[:m])
  return np.concatenate(out)


def reenact(checkpoint, source, driving, out, *, relative: bool = False) -> str:
  """Reads the inputs, crops them as in training, renders and writes `out` with the driver's
  audio (when it has any)."""
  # pylint: disable=import-outside-toplevel
  from vasa_jax.data import face_crop, media
  from vasa_jax.data.extract_motion import load_face_model

  config, model, params = load_face_model(checkpoint)
  r = int(config.model.resolution)
  src = face_crop.crop_image(media.read_image(source), r, source=str(source)).image
  video = media.read_video(driving, fps=25.0, max_side=640)
  drv = face_crop.crop_clip(video.frames, r, source=str(driving), progress=True).frames
  frames = reenact_frames(model, params, src, drv, relative=relative)
  media.write_video(out, frames, fps=25.0, audio=video.audio, sr=16000)
  print(f"Wrote {out}: {len(frames)} frames")
  return str(out)
