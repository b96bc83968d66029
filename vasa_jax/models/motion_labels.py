"""Explicit entries of the motion code, read from face-mesh labels.

With `config.model.label_motion`, five entries of [z_pose, z_dyn] are the preprocessing labels
(`vasa_jax.data.face_labels`) wherever a frame has them, instead of what the motion encoder
predicts: z_pose yaw, pitch, roll (radians) and log scale, and z_dyn[0], the mouth opening. The
encoder still learns to predict them (`label_loss`), for frames without labels.

Why: a small stage 1 trained for half an hour on a CPU otherwise leaves head pose collapsed into
the non-rigid flow and the lips barely encoded, so the distance and gaze controls have nothing to
act on and stage 2 has no mouth to learn from audio. With the entries pinned, the decoder learns
to render them from the first step, stage 2 learns them from clean targets (`extract-motion`
writes the labels too), and inference labels the portrait with the same face mesh that crops it.
VASA-1 and MegaPortraits learn all of it without labels from far more data and compute.

Label vector (L = 5): yaw, pitch, roll in the warp's convention, log face scale minus
`label_log_scale_mean`, mouth opening z-scored with `label_mouth_mean` / `label_mouth_std`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax.models.face_encoder import POSE_BOUNDS

LABEL_DIM = 5
# Preprocessing labels -> warp angles (`models.warping`). Both turn the nose right for yaw > 0;
# label pitch > 0 turns the nose down and label roll > 0 turns the face counter-clockwise in the
# image, the opposite of the warp's pitch and roll (with the nose on the volume's +z side, which
# the decoder learns).
POSE_SIGN = (1.0, -1.0, -1.0)
# z_pose entries the labels set: yaw, pitch, roll, log scale (tx, ty stay learned).
POSE_INDEX = (0, 1, 2, 5)
# The z_dyn entry the label sets: the mouth opening.
MOUTH_INDEX = 0
# Stay inside the encoder's tanh bounds (`face_encoder.POSE_BOUNDS`) so it can match the label.
_BOUNDS = np.asarray(POSE_BOUNDS, np.float32)[list(POSE_INDEX)] * 0.98


def motion_labels(head_pose, face_scale, mouth_open, cfg) -> tuple[np.ndarray, np.ndarray]:
  """Label vectors of T frames.

  Args:
    head_pose: (T, 3) yaw, pitch, roll (radians, `face_labels` convention).
    face_scale: (T,) face scale; mouth_open: (T,) mouth opening.
    cfg: a `layers.FaceConfig` / `config.model` with the label_* statistics.
  Returns:
    labels (T, 5) float32 and valid (T,) float32 (0 where a label is not finite; its row is 0).
  """
  pose = np.asarray(head_pose, np.float64).reshape(-1, 3) * np.asarray(POSE_SIGN)
  log_scale = np.log(np.maximum(np.asarray(face_scale, np.float64), 1e-6))
  log_scale = log_scale - float(cfg.label_log_scale_mean)
  mouth = (np.asarray(mouth_open, np.float64) - float(cfg.label_mouth_mean)) / max(
      float(cfg.label_mouth_std), 1e-6)
  labels = np.concatenate([pose, log_scale[:, None], mouth[:, None]], axis=1)  # (T, 5)
  valid = np.isfinite(labels).all(axis=1)
  labels = np.where(valid[:, None], labels, 0.0)
  labels[:, :4] = np.clip(labels[:, :4], -_BOUNDS, _BOUNDS)
  return labels.astype(np.float32), valid.astype(np.float32)


def no_labels(n: int) -> tuple[np.ndarray, np.ndarray]:
  """Zero label vectors (n, 5) marked invalid (n,): the encoder's own motion is kept."""
  return np.zeros((n, LABEL_DIM), np.float32), np.zeros((n,), np.float32)


def apply_motion_labels(z_pose: jax.Array, z_dyn: jax.Array, labels: jax.Array,
                        valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Replaces the labelled entries where `valid`.

  Args:
    z_pose: (B, 6); z_dyn: (B, Zd); labels: (B, 5); valid: (B,) (0 or 1).
  Returns:
    (z_pose, z_dyn) with the same shapes.
  """
  on = valid.astype(bool)[:, None]
  labels = labels.astype(z_pose.dtype)
  pose_idx = jnp.asarray(POSE_INDEX)
  z_pose = z_pose.at[:, pose_idx].set(jnp.where(on, labels[:, :4], z_pose[:, pose_idx]))
  z_dyn = z_dyn.at[:, MOUTH_INDEX].set(jnp.where(on[:, 0], labels[:, 4], z_dyn[:, MOUTH_INDEX]))
  return z_pose, z_dyn


def swap_unlabelled_dyn(z_dyn: jax.Array, z_dyn_other: jax.Array, take: jax.Array) -> jax.Array:
  """z_dyn with its unlabelled entries (all but the mouth, `MOUTH_INDEX`) taken from
  `z_dyn_other` where `take`.

  Stage-1 training renders the driver this way for part of the batch: the encoder's free
  entries also see the driver's mouth, and a decoder that reads the mouth from them ignores the
  labelled entry, which is the one stage 2 and the controls drive. With the free entries of
  another frame of the same clip, only the labelled entry tells where the mouth is.

  Args:
    z_dyn: (B, Zd); z_dyn_other: (B, Zd); take: (B,) bool.
  Returns:
    (B, Zd).
  """
  keep = jnp.arange(z_dyn.shape[-1]) == MOUTH_INDEX  # (Zd,)
  use_other = take.astype(bool)[:, None] & ~keep[None]
  return jnp.where(use_other, z_dyn_other.astype(z_dyn.dtype), z_dyn)


def label_loss(z_pose: jax.Array, z_dyn: jax.Array, labels: jax.Array,
               valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """L1 from the encoder's predictions to the labels, mean over labelled frames.

  Returns:
    (pose loss summed over yaw, pitch, roll, log scale; mouth loss), () float32 each.
  """
  valid = valid.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(valid), 1.0)
  pose_err = jnp.abs(z_pose[:, jnp.asarray(POSE_INDEX)] - labels[:, :4]).sum(-1)
  mouth_err = jnp.abs(z_dyn[:, MOUTH_INDEX] - labels[:, 4])
  return jnp.sum(pose_err * valid) / n, jnp.sum(mouth_err * valid) / n
