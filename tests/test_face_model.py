"""FaceModel / Discriminator: latent shapes, decode paths agree, logical names, sizes."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import latent
from configs.common import LOGICAL_AXIS_RULES
from vasa_jax.models import layers
from vasa_jax.models.discriminator import Discriminator
from vasa_jax.models.face_encoder import POSE_BOUNDS
from vasa_jax.models.face_model import FaceModel

B = 2


def _key(seed):
  # "rbg" keys: threefry-based init of ~200 tensors takes XLA:CPU a minute to compile.
  return jax.random.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def tiny():
  cfg = latent.get_config("tiny").model
  model = FaceModel(cfg)
  img = jax.random.uniform(jax.random.key(0), (B, 64, 64, 3), minval=-1, maxval=1)
  img2 = jnp.flip(img, axis=2)
  variables = jax.jit(model.init)(_key(1), img, img2)
  return cfg, model, variables, img, img2


def _all_boxes(tree):
  return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def test_tiny_latent_shapes(tiny):
  _, model, variables, img, _ = tiny
  lat = model.apply(variables, img, method=FaceModel.encode)
  assert lat["v_app"].shape == (B, 4, 16, 16, 8)
  assert lat["z_id"].shape == (B, 32)
  assert lat["z_pose"].shape == (B, 6)
  assert lat["z_dyn"].shape == (B, 16)
  # The pose head starts at zero: frontal, centred, unit scale.
  np.testing.assert_array_equal(lat["z_pose"], 0.0)


def test_decode_paths_agree_and_images_are_bounded(tiny):
  _, model, variables, img, img2 = tiny
  s = model.apply(variables, img, method=FaceModel.encode)
  d = model.apply(variables, img2, method=FaceModel.encode)
  full = model.apply(variables, s["v_app"], s["z_id"], s["z_pose"], s["z_dyn"], d["z_pose"],
                     d["z_dyn"], method=FaceModel.decode)
  v_can = model.apply(variables, s["v_app"], s["z_id"], s["z_pose"], s["z_dyn"],
                      method=FaceModel.canonicalize)
  assert v_can.shape[:4] == (B, 4, 16, 16)
  frame = model.apply(variables, v_can, s["z_id"], d["z_pose"], d["z_dyn"],
                      method=FaceModel.render)
  recon = model.apply(variables, img, img2, method=FaceModel.reconstruct)
  assert full.shape == (B, 64, 64, 3) and full.dtype == jnp.float32
  np.testing.assert_allclose(frame, full, atol=1e-5)
  np.testing.assert_allclose(recon, full, atol=1e-5)
  assert float(jnp.abs(full).max()) <= 1.0


def test_pose_is_bounded_for_any_weights(tiny):
  _, model, variables, img, _ = tiny
  big = jax.tree.map(lambda p: p * 0 + 50.0, nn.unbox(variables))
  z_pose, _ = model.apply(big, img, method=FaceModel.encode_motion)
  assert bool(jnp.all(jnp.abs(z_pose) <= jnp.asarray(POSE_BOUNDS) + 1e-6))
  assert math.isclose(POSE_BOUNDS[0], math.pi / 2)


def test_every_parameter_has_logical_names(tiny):
  cfg, _, variables, img, _ = tiny
  disc_vars = Discriminator(cfg).init(_key(2), img)
  rule_names = {r[0] for r in LOGICAL_AXIS_RULES}
  for tree in (variables, disc_vars):
    leaves = _all_boxes(tree)
    assert len(leaves) > 20
    for leaf in leaves:
      assert isinstance(leaf, nn.LogicallyPartitioned), leaf.shape
      assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= rule_names
  specs = nn.get_partition_spec(variables)
  assert jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def test_discriminator_scales_and_features(tiny):
  cfg, _, _, img, _ = tiny
  disc = Discriminator(cfg)
  out = disc.apply(disc.init(_key(3), img), img)
  assert len(out) == cfg.disc_scales
  assert out[0][0].shape == (B, 8, 8, 1) and out[1][0].shape == (B, 4, 4, 1)
  assert [f.shape[-1] for f in out[0][1]] == [16, 32, 64]


def test_bad_resolution_is_reported(tiny):
  _, model, variables, _, _ = tiny
  with pytest.raises(ValueError, match="resolution"):
    model.apply(variables, jnp.zeros((1, 32, 32, 3)), method=FaceModel.encode)
  with pytest.raises(ValueError, match="app_size"):
    layers.as_face_config(dict(resolution=64, app_size=64))


def test_bfloat16_compute_keeps_float32_params():
  cfg = latent.get_config("tiny").model
  model = FaceModel(cfg, dtype=jnp.bfloat16)
  x = jnp.zeros((1, 64, 64, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, x)
  assert {l.dtype for l in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(model.apply, shapes, x, x)
  assert out.shape == (1, 64, 64, 3) and out.dtype == jnp.float32


def _count(tree):
  return sum(int(np.prod(l.shape)) for l in jax.tree.leaves(tree))


def test_variant_sizes():
  counts = {}
  for variant in ("tiny", "demo", "base"):
    cfg = latent.get_config(variant).model
    r = cfg.resolution
    x = jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32)
    model = FaceModel(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, x)
    lat = jax.eval_shape(lambda v, i: model.apply(v, i, method=FaceModel.encode), shapes, x)
    assert lat["v_app"].shape == (1, cfg.app_depth, cfg.app_size, cfg.app_size,
                                  cfg.app_channels)
    counts[variant] = _count(shapes)
  assert counts["tiny"] < counts["demo"] < counts["base"]
  assert counts["tiny"] < 1e6 and counts["base"] > 2e7


@pytest.fixture(scope="module")
def tiny_source_warp():
  cfg = latent.get_config("tiny").model
  cfg.source_warp = True
  model = FaceModel(cfg)
  img = jax.random.uniform(jax.random.key(2), (B, 64, 64, 3), minval=-1, maxval=1)
  variables = jax.jit(model.init)(_key(3), img, jnp.flip(img, axis=2))
  return model, variables, img


def test_source_warp_starts_as_a_copy_of_the_source(tiny_source_warp):
  model, variables, img = tiny_source_warp
  # Zero flows and the source's own pose: the warp is the identity, so the output is the
  # source blended with 5% of G2D (mask bias sigmoid(3)).
  out = model.apply(variables, img, img, method=FaceModel.reconstruct)
  rgb_share = 1.0 - jax.nn.sigmoid(3.0)
  assert float(jnp.abs(out - img).max()) <= 2.0 * rgb_share + 1e-5
  assert float(jnp.abs(out - img).mean()) < float(jnp.abs(img).mean()) * 0.2


def test_source_warp_follows_the_pose_and_keeps_the_render_path(tiny_source_warp):
  model, variables, img = tiny_source_warp
  s = model.apply(variables, img, method=FaceModel.encode)
  v_can = model.apply(variables, s["v_app"], s["z_id"], s["z_pose"], s["z_dyn"], img,
                      method=FaceModel.canonicalize)
  assert set(v_can) == {"v", "coords", "image"}
  # Shift the target right by tx = 0.25 (normalised units = 1/8 of the image width).
  pose = s["z_pose"].at[:, 3].add(0.25)
  frame = model.apply(variables, v_can, s["z_id"], pose, s["z_dyn"], method=FaceModel.render)
  full = model.apply(variables, s["v_app"], s["z_id"], s["z_pose"], s["z_dyn"], pose,
                     s["z_dyn"], img, method=FaceModel.decode)
  np.testing.assert_allclose(frame, full, atol=1e-5)
  shifted = jnp.roll(img, 8, axis=2)
  inner = (slice(None), slice(8, -8), slice(16, -8))  # away from the zero-padded border
  err_shift = float(jnp.abs(frame[inner] - shifted[inner]).mean())
  err_still = float(jnp.abs(frame[inner] - img[inner]).mean())
  assert err_shift < 0.5 * err_still
  with pytest.raises(ValueError, match="src_img"):
    model.apply(variables, s["v_app"], s["z_id"], s["z_pose"], s["z_dyn"],
                method=FaceModel.canonicalize)
