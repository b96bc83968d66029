"""Motion entries pinned to face-mesh labels: conversion, replacement, extract-motion."""
import jax.numpy as jnp
import numpy as np
import pytest

from configs import latent
from vasa_jax.inference.extract_motion import pin_labels
from vasa_jax.models import layers
from vasa_jax.models import motion_labels as ml


@pytest.fixture
def cfg():
  return layers.as_face_config(latent.get_config("demo").model)


def test_labels_follow_the_warp_convention_and_the_data_statistics(cfg):
  pose = np.array([[0.2, 0.1, -0.05], [0.0, 0.0, 0.0]], np.float32)
  scale = np.exp([cfg.label_log_scale_mean + 0.1, np.nan]).astype(np.float32)
  mouth = np.array([cfg.label_mouth_mean + 2 * cfg.label_mouth_std, 0.1], np.float32)
  labels, valid = ml.motion_labels(pose, scale, mouth, cfg)
  # Nose right stays yaw > 0; nose down / counter-clockwise flip to the warp's pitch / roll.
  np.testing.assert_allclose(labels[0], [0.2, -0.1, 0.05, 0.1, 2.0], atol=1e-5)
  np.testing.assert_array_equal(valid, [1.0, 0.0])
  np.testing.assert_array_equal(labels[1], 0.0)  # a missing face scale voids the row


def test_labels_stay_inside_the_encoder_bounds(cfg):
  labels, _ = ml.motion_labels(np.array([[3.0, -3.0, 3.0]]), np.array([10.0]), np.array([0.1]),
                               cfg)
  assert np.all(np.abs(labels[0, :3]) < np.array([np.pi / 2, np.pi / 3, np.pi / 3]))
  assert abs(labels[0, 3]) < 0.5


def test_apply_replaces_only_labelled_rows_and_entries():
  z_pose = jnp.arange(12, dtype=jnp.float32).reshape(2, 6)
  z_dyn = jnp.full((2, 4), 7.0)
  labels = jnp.asarray([[1.0, 2.0, 3.0, 4.0, 5.0], [9.0] * 5])
  zp, zd = ml.apply_motion_labels(z_pose, z_dyn, labels, jnp.asarray([1.0, 0.0]))
  np.testing.assert_array_equal(zp[0], [1.0, 2.0, 3.0, 3.0, 4.0, 4.0])  # tx, ty kept
  np.testing.assert_array_equal(zd[0], [5.0, 7.0, 7.0, 7.0])
  np.testing.assert_array_equal(zp[1], z_pose[1])
  np.testing.assert_array_equal(zd[1], z_dyn[1])
  pose_loss, mouth_loss = ml.label_loss(z_pose, z_dyn, labels, jnp.asarray([1.0, 0.0]))
  assert float(pose_loss) == pytest.approx(1 + 1 + 1 + 1)  # |0-1|+|1-2|+|2-3|+|5-4|
  assert float(mouth_loss) == pytest.approx(2.0)


def test_swap_keeps_the_mouth_entry_and_takes_the_rest_where_asked():
  z_dyn = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  other = jnp.asarray([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
  out = ml.swap_unlabelled_dyn(z_dyn, other, jnp.asarray([True, False]))
  np.testing.assert_array_equal(out, [[1.0, -2.0, -3.0], [4.0, 5.0, 6.0]])


def test_extract_motion_pins_the_same_entries_as_training(cfg):
  rec = {"head_pose": np.array([[0.1, 0.2, 0.3], [np.nan, 0, 0]], np.float32),
         "face_scale": np.array([0.27, 0.27], np.float32),
         "mouth_open": np.array([0.2, 0.2], np.float32)}
  z_pose, z_dyn = np.zeros((2, 6), np.float32), np.ones((2, cfg.z_dyn_dim), np.float32)
  zp, zd = pin_labels(latent.get_config("demo").model, rec, z_pose, z_dyn)
  labels, valid = ml.motion_labels(rec["head_pose"], rec["face_scale"], rec["mouth_open"], cfg)
  want_p, want_d = ml.apply_motion_labels(jnp.asarray(z_pose), jnp.asarray(z_dyn),
                                          jnp.asarray(labels), jnp.asarray(valid))
  np.testing.assert_allclose(zp, want_p, atol=1e-6)
  np.testing.assert_allclose(zd, want_d, atol=1e-6)
  assert zd[1, 0] == 1.0  # the unlabelled frame keeps the encoder's value
