"""Stage-1 losses: zero where they should be, finite, ordered as expected; weight-file errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vasa_jax.errors import VasaInputError
from vasa_jax.train import latent_losses as L


def _img(seed, shape=(2, 32, 32, 3)):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1, maxval=1)


def test_identical_images_give_zero_reconstruction_losses():
  x = _img(0)
  assert float(L.l1_loss(x, x)) == 0.0
  assert float(L.pyramid_l1_loss(x, x)) == 0.0
  np.testing.assert_allclose(float(L.ssim_loss(x, x)), 0.0, atol=1e-5)
  np.testing.assert_allclose(L.ssim(x, x), [1.0, 1.0], atol=1e-5)
  assert float(L.psnr(x, x)[0]) >= 99.0


def test_reconstruction_losses_grow_with_noise():
  x = _img(0)
  small = x + 0.05 * jax.random.normal(jax.random.key(1), x.shape)
  big = x + 0.5 * jax.random.normal(jax.random.key(1), x.shape)
  for fn in (L.l1_loss, L.pyramid_l1_loss, L.ssim_loss):
    a, b = float(fn(x, small)), float(fn(x, big))
    assert 0 < a < b and np.isfinite(b)
  assert float(L.psnr(x, small).mean()) > float(L.psnr(x, big).mean())
  # Pyramid: a constant offset costs the same at every level (pooling keeps it).
  np.testing.assert_allclose(float(L.pyramid_l1_loss(x, x + 0.2)), 0.2, rtol=1e-5)


def test_hinge_and_feature_matching():
  pos, neg = jnp.full((2, 4, 4, 1), 2.0), jnp.full((2, 4, 4, 1), -2.0)
  feats = [jnp.ones((2, 4, 4, 8))]
  real, fake = [(pos, feats)], [(neg, feats)]
  assert float(L.hinge_discriminator_loss(real, fake)) == 0.0  # confident and right
  assert float(L.hinge_discriminator_loss(fake, real)) == 6.0  # relu(1+2) twice
  assert float(L.hinge_generator_loss(fake)) == 2.0
  assert float(L.feature_matching_loss(real, fake)) == 0.0
  fake2 = [(neg, [jnp.zeros((2, 4, 4, 8))])]
  assert float(L.feature_matching_loss(real, fake2)) == 1.0


def test_identity_and_contrastive_losses():
  z = jax.random.normal(jax.random.key(0), (4, 16))
  assert abs(float(L.identity_loss(z, z))) < 1e-6
  np.testing.assert_allclose(float(L.identity_loss(-z, z)), 2.0, atol=1e-6)
  # The source side is a stop-gradient target.
  g = jax.grad(lambda s: L.identity_loss(z * 2 + 1, s))(z)
  np.testing.assert_array_equal(g, 0.0)
  other = jax.random.normal(jax.random.key(1), (4, 16))
  good = L.contrastive_cosine_loss(z, z, other[:, None], s=5.0, m=0.2)
  bad = L.contrastive_cosine_loss(z, other, z[:, None], s=5.0, m=0.2)
  assert 0 < float(good) < float(bad)
  # Perfect positive, opposite negative: -log(e^4 / (e^4 + e^-6)).
  np.testing.assert_allclose(float(L.contrastive_cosine_loss(z, z, -z[:, None])),
                             np.log1p(np.exp(-10.0)), atol=1e-6)


def _loss_cfg(**kw):
  return ml_collections.ConfigDict(dict(dict(vgg=0.0, vgg_path="", arcface_path=""), **kw))


def test_external_losses_are_skipped_or_rejected(tmp_path):
  assert L.check_external_losses(_loss_cfg())["vgg"] is None
  assert L.check_external_losses(_loss_cfg(vgg_path="/nonexistent.npz"))["vgg"] is None
  with pytest.raises(VasaInputError, match="arcface"):
    L.check_external_losses(_loss_cfg(arcface_path=str(tmp_path / "arcface.onnx")))
  with pytest.raises(VasaInputError, match="vgg_path"):
    L.check_external_losses(_loss_cfg(vgg=1.0))
  with pytest.raises(VasaInputError, match="not found"):
    L.check_external_losses(_loss_cfg(vgg=1.0, vgg_path=str(tmp_path / "missing.npz")))
  bad = tmp_path / "bad.npz"
  np.savez(bad, **{"conv1_1/kernel": np.zeros((64, 3, 3, 3), np.float32)})
  with pytest.raises(VasaInputError, match="HWIO"):
    L.load_vgg19(str(bad))


def test_vgg19_npz_roundtrip_and_perceptual_loss(tmp_path):
  rng = np.random.default_rng(0)
  arrays, cin = {}, 3
  names = L.vgg19_layer_names()
  assert len(names) == 16 and names[-1] == "conv5_4"
  for name in names:
    cout = {"1": 64, "2": 128, "3": 256}.get(name[4], 512)
    arrays[f"{name}/kernel"] = (rng.standard_normal((3, 3, cin, cout)) *
                                np.sqrt(2 / (9 * cin))).astype(np.float32)
    arrays[f"{name}/bias"] = np.zeros((cout,), np.float32)
    cin = cout
  path = tmp_path / "vgg19.npz"
  np.savez(path, **arrays)
  params = L.check_external_losses(_loss_cfg(vgg=1.0, vgg_path=str(path)))["vgg"]
  x = _img(0, (1, 32, 32, 3))
  feats = L.VGG19Features().apply(params, x)
  assert [f.shape for f in feats] == [(1, 32, 32, 64), (1, 16, 16, 128), (1, 8, 8, 256),
                                      (1, 4, 4, 512), (1, 2, 2, 512)]
  assert float(L.vgg_perceptual_loss(params, x, x)) == 0.0
  assert float(L.vgg_perceptual_loss(params, x, _img(1, (1, 32, 32, 3)))) > 0


def test_region_l1_weighs_the_box_like_a_whole_image():
  x = jnp.zeros((2, 8, 8, 3))
  y = jnp.zeros((2, 8, 8, 3)).at[:, 2:4, 4:6].set(1.0)  # error only in a 2x2 patch
  boxes = jnp.asarray([[5 / 8, 3 / 8, 1 / 8, 1 / 8], [0.5, 0.5, 0.5, 0.5]])  # patch / whole
  mask = L.box_mask(boxes, 8)
  assert float(mask[0].sum()) == 4.0 and float(mask[1].sum()) == 64.0
  np.testing.assert_array_equal(mask[0, 2:4, 4:6, 0], 1.0)
  assert float(L.region_l1_loss(x, y, boxes, jnp.asarray([1.0, 0.0]))) == pytest.approx(1.0)
  assert float(L.region_l1_loss(x, y, boxes, jnp.asarray([0.0, 1.0]))) == pytest.approx(4 / 64)
  assert float(L.region_l1_loss(x, y, boxes, jnp.asarray([0.0, 0.0]))) == 0.0
