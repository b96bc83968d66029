"""Stage-1 losses: reconstruction (L1, pyramid L1, SSIM, optional VGG19), GAN (hinge, feature
matching), VASA-1 transfer consistency and cross-identity, MegaPortraits contrastive cosine loss.
(The label losses of the pinned motion entries are in `vasa_jax.models.motion_labels`.)

All losses take images as float NHWC in [-1, 1] and return float32 scalars. None needs downloaded
weights except the optional VGG19 perceptual loss (`load_vgg19`), whose weights the user converts
once from torchvision (see `load_vgg19`).

Pretrained face networks (`vasa_jax.facenets`, fetched once with `vasa-jax fetch-face-nets`):
`face_network_losses` (identity, face-perceptual, landmark) and `foreground` (masks), switched on
by `config.loss.face_*` / `config.loss.foreground_mask`.

External identity network (`config.loss.arcface_path`): not supported. The `cross_id` loss
uses this model's own identity encoder (z_id, with frozen encoder parameters on the rendered side
and a stop-gradient on the source side). `check_external_losses` raises `VasaInputError` when a
path is given so that a configured ArcFace file is never silently ignored.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax.errors import VasaInputError
from vasa_jax.image_ops import psnr, ssim  # noqa: F401  (metrics beside the losses)
from vasa_jax.models import layers
from vasa_jax.models.layers import cosine_similarity
from vasa_jax.models.discriminator import hinge_loss

# ----------------------------------------------------------------------------- reconstruction


def l1_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean absolute error. Args: x, y same shape. Returns () float32."""
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


def box_mask(boxes: jax.Array, size: int) -> jax.Array:
  """Rectangles (cx, cy, half w, half h in shares of the side) -> (B, size, size, 1) 0/1 masks."""
  c = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size  # pixel centres
  bx = boxes.astype(jnp.float32)[:, None, :]  # (B, 1, 4)
  in_x = jnp.abs(c[None] - bx[..., 0]) <= bx[..., 2]  # (B, W)
  in_y = jnp.abs(c[None] - bx[..., 1]) <= bx[..., 3]  # (B, H)
  return (in_y[:, :, None] & in_x[:, None, :])[..., None].astype(jnp.float32)


def region_l1_loss(x: jax.Array, y: jax.Array, boxes: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean absolute error inside one box per image (the mouth), averaged over valid images.

  Each image's error is normalised by its box's area, so a small region weighs as much as the
  whole image does in `l1_loss`: the lips are ~5% of a face crop, and a plain L1 lets a
  decoder ignore them.

  Args:
    x, y: (B, H, W, C).
    boxes: (B, 4) (cx, cy, half w, half h) in shares of the side.
    valid: (B,) 1 where the box is known.
  Returns:
    () float32; 0 when no image is valid.
  """
  mask = box_mask(boxes, x.shape[1])  # (B, H, W, 1)
  err = jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)) * mask
  per_image = err.sum((1, 2, 3)) / (jnp.maximum(mask.sum((1, 2, 3)), 1.0) * x.shape[-1])
  valid = valid.astype(jnp.float32)
  return (per_image * valid).sum() / jnp.maximum(valid.sum(), 1.0)


def _avg_pool2(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), (2, 2))


def pyramid_l1_loss(x: jax.Array, y: jax.Array, levels: int = 4) -> jax.Array:
  """L1 averaged over an image pyramid (full, 1/2, 1/4, ...; stops at 8 pixels).

  Coarse levels weigh low frequencies (overall shape, colour) more than a plain L1 does.

  Args:
    x, y: (B, H, W, C).
    levels: number of pyramid levels.
  Returns:
    () float32.
  """
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  losses = []
  for i in range(levels):
    if i and min(x.shape[1:3]) >= 16:
      x, y = _avg_pool2(x), _avg_pool2(y)
    elif i:
      break
    losses.append(l1_loss(x, y))
  return sum(losses) / len(losses)


def ssim_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """1 - mean SSIM; 0 for identical images. Returns () float32."""
  return 1.0 - jnp.mean(ssim(x, y))


# ----------------------------------------------------------------------------- GAN

DiscOutput = Sequence[tuple[jax.Array, Sequence[jax.Array]]]  # per scale: (logits, features)


def hinge_generator_loss(fake: DiscOutput) -> jax.Array:
  """Generator hinge loss: -mean(D(fake)), averaged over scales. Returns () float32."""
  return sum(-jnp.mean(logits.astype(jnp.float32)) for logits, _ in fake) / len(fake)


def hinge_discriminator_loss(real: DiscOutput, fake: DiscOutput) -> jax.Array:
  """Discriminator hinge loss averaged over scales. Returns () float32."""
  total = sum(hinge_loss(r, True) + hinge_loss(f, False) for (r, _), (f, _) in zip(real, fake))
  return total / len(real)


def feature_matching_loss(real: DiscOutput, fake: DiscOutput) -> jax.Array:
  """L1 between discriminator features of real (stop-gradient) and fake images, averaged over
  scales and layers. `real` and `fake` must come from paired images (driver and its
  reconstruction). Returns () float32."""
  terms = [l1_loss(jax.lax.stop_gradient(fr), ff)
           for (_, feats_r), (_, feats_f) in zip(real, fake) for fr, ff in zip(feats_r, feats_f)]
  return sum(terms) / len(terms)


# ----------------------------------------------------------------------------- latent losses


def identity_loss(z_id_rendered: jax.Array, z_id_source: jax.Array) -> jax.Array:
  """VASA-1 cross-identity loss: 1 - cos(z_id(render), sg(z_id(source))), batch mean.

  Args:
    z_id_rendered: (B, Zi) identity code of the cross-identity rendering.
    z_id_source: (B, Zi) identity code of the source (the target; gradients stopped).
  Returns:
    () float32 in [0, 2].
  """
  return jnp.mean(1.0 - cosine_similarity(z_id_rendered, jax.lax.stop_gradient(z_id_source)))


def contrastive_cosine_loss(anchors: jax.Array, positives: jax.Array, negatives: jax.Array,
                            s: float = 5.0, m: float = 0.2) -> jax.Array:
  """MegaPortraits cosine contrastive loss on motion descriptors.

  With `d(a, b) = s * (cos(a, b) - m)`, each anchor `a_n` with its positive `p_n` and negatives
  `q_nk`: `-log(exp d(a_n, p_n) / (exp d(a_n, p_n) + sum_k exp d(a_n, q_nk)))`, averaged over n.

  Args:
    anchors: (N, Dz); positives: (N, Dz); negatives: (N, K, Dz).
    s, m: scale and margin (config loss.contrastive_s / contrastive_m).
  Returns:
    () float32 (>= 0; small when each anchor is closer to its positive than to its negatives).
  """
  pos = s * (cosine_similarity(anchors, positives) - m)  # (N,)
  neg = s * (cosine_similarity(anchors[:, None], negatives) - m)  # (N, K)
  logits = jnp.concatenate([pos[:, None], neg], axis=1)  # (N, 1+K)
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos)


# ----------------------------------------------------------------------------- VGG19 perceptual

_VGG19_BLOCKS = ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512),
                 (512, 512, 512, 512))
# Conv layers after which features are taken (relu1_1 .. relu5_1) and their loss weights
# (pix2pixHD / MegaPortraits style: deeper layers count more).
VGG19_FEATURE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
VGG19_FEATURE_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def vgg19_layer_names() -> list[str]:
  """['conv1_1', 'conv1_2', 'conv2_1', ..., 'conv5_4'] in torchvision's order (16 convs)."""
  return [f"conv{b + 1}_{i + 1}" for b, block in enumerate(_VGG19_BLOCKS)
          for i in range(len(block))]


class VGG19Features(nn.Module):
  """VGG19 conv trunk (up to relu5_1) returning the relu features of `VGG19_FEATURE_LAYERS`.

  Input: images (B, H, W, 3) in [-1, 1]; ImageNet normalisation is applied inside.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, img: jax.Array) -> list[jax.Array]:
    x = ((img.astype(jnp.float32) + 1) * 0.5 - _IMAGENET_MEAN) / _IMAGENET_STD
    x = x.astype(self.dtype)
    feats = []
    last = VGG19_FEATURE_LAYERS[-1]
    for b, block in enumerate(_VGG19_BLOCKS):
      if b:
        x = nn.max_pool(x, (2, 2), (2, 2))
      for i, ch in enumerate(block):
        name = f"conv{b + 1}_{i + 1}"
        x = nn.relu(layers.Conv(ch, (3, 3), name=name, dtype=self.dtype)(x))
        if name in VGG19_FEATURE_LAYERS:
          feats.append(x)
        if name == last:
          return feats
    return feats


def load_vgg19(path: str) -> dict[str, Any]:
  """Loads VGG19 conv weights from an .npz into `VGG19Features` params.

  The .npz holds `conv{b}_{i}/kernel` (3, 3, Cin, Cout) float32 (HWIO) and `conv{b}_{i}/bias`
  (Cout,) for the 16 convs. Convert torchvision's ImageNet weights once (needs torch and
  torchvision, on any machine):

      import numpy as np, torchvision
      from vasa_jax.train.latent_losses import vgg19_layer_names
      sd = torchvision.models.vgg19(weights="IMAGENET1K_V1").features.state_dict()
      convs = sorted({int(k.split(".")[0]) for k in sd}, key=int)  # 0, 2, 5, 7, 10, ...
      out = {}
      for name, idx in zip(vgg19_layer_names(), convs):
        out[f"{name}/kernel"] = sd[f"{idx}.weight"].numpy().transpose(2, 3, 1, 0)  # OIHW->HWIO
        out[f"{name}/bias"] = sd[f"{idx}.bias"].numpy()
      np.savez("vgg19.npz", **out)

  then set `--config.loss.vgg=20 --config.loss.vgg_path=vgg19.npz`.

  Args:
    path: the .npz file.
  Returns:
    {"params": {...}} for `VGG19Features().apply`.
  Raises:
    VasaInputError: missing file, missing keys or wrong shapes.
  """
  if not os.path.isfile(path):
    raise VasaInputError(f"VGG19 weights {path!r} not found; convert them as described in "
                         f"vasa_jax.train.latent_losses.load_vgg19 or set config.loss.vgg=0")
  try:
    data = np.load(path)
  except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
    raise VasaInputError(f"VGG19 weights {path!r} are not a readable .npz ({e}); convert them "
                         f"as described in vasa_jax.train.latent_losses.load_vgg19") from e
  params, cin = {}, 3
  for b, block in enumerate(_VGG19_BLOCKS):
    for i, ch in enumerate(block):
      name = f"conv{b + 1}_{i + 1}"
      want = {"kernel": (3, 3, cin, ch), "bias": (ch,)}
      entry = {}
      for leaf, shape in want.items():
        key = f"{name}/{leaf}"
        if key not in data:
          raise VasaInputError(f"VGG19 weights {path!r} lack {key!r}; expected keys "
                               f"'convB_I/kernel' (HWIO) and 'convB_I/bias' for all 16 convs "
                               f"(see load_vgg19's docstring)")
        if tuple(data[key].shape) != shape:
          raise VasaInputError(f"VGG19 weights {path!r}: {key} has shape {data[key].shape}, "
                               f"expected {shape} (kernels must be HWIO: transpose(2, 3, 1, 0))")
        entry[leaf] = jnp.asarray(data[key], jnp.float32)
      params[name] = entry
      cin = ch
  return {"params": params}


def vgg_perceptual_loss(vgg_params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  """Weighted L1 between VGG19 features of x and y (y's features get no gradient).

  Args:
    vgg_params: from `load_vgg19`.
    x, y: (B, H, W, 3) in [-1, 1].
  Returns:
    () float32.
  """
  net = VGG19Features()
  both = net.apply(vgg_params, jnp.concatenate([x, y], axis=0))
  total = 0.0
  for w, f in zip(VGG19_FEATURE_WEIGHTS, both):
    fx, fy = jnp.split(f, 2, axis=0)
    total = total + w * l1_loss(fx, jax.lax.stop_gradient(fy))
  return total


# ----------------------------------------------------------------- pretrained face networks
# (vasa_jax.facenets, frozen; `vasa-jax fetch-face-nets`)

FACE_LOSSES = ("face_id", "face_perceptual", "face_landmark")
# Landmark weight of the lips and eyes relative to the rest of the mesh: mouth shape and blinks
# are what the driver must pass on; the face outline follows the pose anyway.
LANDMARK_FOCUS = 10.0


def face_nets_needed(loss_cfg: Any) -> tuple[str, ...]:
  """The face networks the configured losses use (empty when all face losses are off)."""
  names = []
  if any(loss_cfg.get(k, 0.0) > 0 for k in FACE_LOSSES):
    names += ["mobilefacenet", "facemesh"]
  if loss_cfg.get("foreground_mask", False):
    names.append("selfie")
  return tuple(names)


def landmark_weights() -> np.ndarray:
  """(468,) per-landmark weights, summing to 1: lips and eyes LANDMARK_FOCUS times the rest."""
  from vasa_jax.facenets import nets
  w = np.ones(nets.NUM_MESH, np.float32)
  w[list(nets.LIPS + nets.EYES)] = LANDMARK_FOCUS
  return w / w.sum()


def face_network_losses(face_nets: Any, recon: jax.Array, cross: jax.Array, driver: jax.Array,
                        source: jax.Array) -> dict[str, jax.Array]:
  """Stage 1 losses with the pretrained face networks (targets under stop-gradient).

    face_id          VASA-1's cross-identity loss with the recognition embedding (the
                     cross-reenactment keeps the source's identity) plus the same term on the
                     self-reconstruction (keeps the driver's): 1 - CSIM, averaged.
    face_perceptual  MegaPortraits' L_face role: L1 between MobileFaceNet's stage features of
                     the reconstruction and of the driver (both aligned on the driver's mesh).
    face_landmark    face mesh of the reconstruction vs the driver's, L1 in shares of the side,
                     weighted toward lips and eyes (`landmark_weights`).

  Args:
    face_nets: `facenets.nets.FaceNets` with mobilefacenet and facemesh.
    recon, cross, driver, source: (B, R, R, 3) in [-1, 1].
  Returns:
    {name: () float32} for the three losses.
  """
  from vasa_jax.facenets import nets
  b = recon.shape[0]
  images = jnp.concatenate([recon, cross, driver, source]).astype(jnp.float32)  # (4B, R, R, 3)
  mesh, _ = nets.face_mesh(face_nets, images)  # (4B, 468, 3)
  m_recon, m_cross, m_drv, _ = jnp.split(mesh, 4)
  # The reconstruction is aligned like its driver, so the features compare the same places.
  align = jnp.concatenate([m_drv, m_cross, m_drv, mesh[3 * b:]])
  emb, feats = nets.identity_embedding(face_nets, images, features=True, mesh=align)
  e_recon, e_cross, e_drv, e_src = jnp.split(emb, 4)
  sg = jax.lax.stop_gradient
  ident = 0.5 * (jnp.mean(1.0 - nets.identity_cosine(e_cross, sg(e_src)))
                 + jnp.mean(1.0 - nets.identity_cosine(e_recon, sg(e_drv))))
  perceptual = sum(l1_loss(f[:b], sg(f[2 * b:3 * b])) for f in feats) / len(feats)
  err = jnp.abs(m_recon[..., :2] - sg(m_drv[..., :2])).sum(-1)  # (B, 468)
  landmark = jnp.mean(err @ jnp.asarray(landmark_weights()))
  return {"face_id": ident, "face_perceptual": perceptual, "face_landmark": landmark}


def foreground(face_nets: Any, images: jax.Array) -> jax.Array:
  """(B, R, R, 1) stop-gradient person mask (selfie segmentation) of [-1, 1] images."""
  from vasa_jax.facenets import nets
  return jax.lax.stop_gradient(nets.foreground_mask(face_nets, images))


def check_external_losses(loss_cfg: Any) -> dict[str, Any]:
  """Loads the weight files of the optional external losses.

  Args:
    loss_cfg: `config.loss`.
  Returns:
    {"vgg": params or None}; VGG19 is loaded only when `loss.vgg > 0` and `loss.vgg_path` is set.
  Raises:
    VasaInputError: `loss.vgg > 0` without a path, an unusable VGG file, or any
      `loss.arcface_path` (external identity networks are not supported yet).
  """
  out = {"vgg": None}
  if loss_cfg.get("arcface_path", ""):
    raise VasaInputError(
        f"config.loss.arcface_path={loss_cfg.arcface_path!r}: an external ArcFace identity "
        f"network is not supported yet (no weight format is implemented). Remove the path; the "
        f"cross-identity loss (config.loss.cross_id) uses the model's own z_id encoder.")
  if loss_cfg.get("vgg", 0.0) > 0:
    if not loss_cfg.get("vgg_path", ""):
      raise VasaInputError("config.loss.vgg > 0 needs config.loss.vgg_path (an .npz of VGG19 "
                           "weights, see vasa_jax.train.latent_losses.load_vgg19) or set "
                           "config.loss.vgg=0")
    out["vgg"] = load_vgg19(loss_cfg.vgg_path)
  return out
