"""Stage-1 task: trains the face latent space (FaceModel) against a multi-scale PatchGAN.

One `train_step` = generator update, then discriminator update. Per step the generator renders
(one batched decoder call):
  recon   source appearance, driver motion          -> L1, pyramid L1, SSIM, VGG, GAN, FM
  cross   source appearance, `other` person's motion -> identity (z_id) and contrastive losses
  cons_a  driver2 appearance, pose of driver + dynamics of driver2 } VASA-1 transfer
  cons_b  driver appearance,  pose of driver + dynamics of driver2 } consistency: a == b
The GAN terms switch on at `loss.gan_start_step` through a multiplier / `jnp.where`, so the step
is traced once. Batches hold uint8 images {source, driver, driver2, other} (B, R, R, 3).
"""
from __future__ import annotations

from typing import Any

from jax.experimental import multihost_utils
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vasa_jax.data import input_pipeline
from vasa_jax.errors import VasaInputError
from vasa_jax.image_ops import to_float_image, to_uint8_image
from vasa_jax.models import layers
from vasa_jax.models import motion_labels
from vasa_jax.models.discriminator import Discriminator
from vasa_jax.models.face_model import FaceModel
from vasa_jax.train import latent_losses as L
from vasa_jax.train import optim
from vasa_jax.train.state import TrainState

IMAGE_KEYS = ("source", "driver", "driver2", "other")
_WEIGHTS = ("l1", "pyramid", "ssim", "vgg", "adversarial", "feature_matching", "consistency",
            "cross_id", "contrastive", "pose_label", "mouth_label", "mouth_l1") + L.FACE_LOSSES
# Label vectors of source, driver, driver2 (`vasa_jax.data.input_pipeline`); optional in a batch.
LABEL_KEYS = ("motion_labels", "labels_valid")
MOUTH_BOX = "mouth_box"  # (B, 3, 4) of source, driver, driver2 (`face_labels.mouth_box`)


def _split_disc(outs, n: int):
  """Splits each scale's (logits, features) along the batch into n equal parts."""
  parts = [[] for _ in range(n)]
  for logits, feats in outs:
    ls = jnp.split(logits, n, axis=0)
    fs = [jnp.split(f, n, axis=0) for f in feats]
    for k in range(n):
      parts[k].append((ls[k], [f[k] for f in fs]))
  return parts


def _where_tree(pred: jax.Array, new: Any, old: Any) -> Any:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


class LatentTask:
  """The stage-1 Task (see `vasa_jax.train.tasks`).

  Args:
    config: a `configs/latent.py` config.
  Raises:
    VasaInputError: unusable external-loss weight files (`loss.vgg_path`, `loss.arcface_path`).
  """

  def __init__(self, config):
    self.config = config
    self.compute_dtype = jnp.dtype(config.train.get("compute_dtype", "float32"))
    self.face_cfg = layers.as_face_config(config.model)
    self.model = FaceModel(self.face_cfg, dtype=self.compute_dtype)
    self.disc = Discriminator(self.face_cfg, dtype=self.compute_dtype)
    self.w = {k: float(config.loss.get(k, 0.0)) for k in _WEIGHTS}
    self.gan_start = int(config.loss.get("gan_start_step", 0))
    self.use_gan = self.w["adversarial"] > 0 or self.w["feature_matching"] > 0
    self.contrastive_s = float(config.loss.get("contrastive_s", 5.0))
    self.contrastive_m = float(config.loss.get("contrastive_m", 0.2))
    self.dyn_swap = float(config.loss.get("dyn_swap", 0.0))
    self.vgg_params = L.check_external_losses(config.loss)["vgg"]
    # Frozen face networks (constants of the step, not in the train state); missing ones fail
    # here, at once, naming `vasa-jax fetch-face-nets`.
    face_names = L.face_nets_needed(config.loss)
    self.face_nets = None
    if face_names:
      from vasa_jax.facenets import nets as facenets
      self.face_nets = facenets.FaceNets.load(
          face_names, why="config.loss.face_id/face_perceptual/face_landmark/foreground_mask")
    self.foreground_mask = bool(config.loss.get("foreground_mask", False))
    self.ema_decay = float(config.optim.get("ema_decay", 0.0))
    self.gen_tx = optim.make_optimizer(config.optim, config.train.num_steps)
    self.disc_tx = optim.make_optimizer(config.optim, config.train.num_steps)
    self._sample_fn = jax.jit(self._render_samples)

  # ------------------------------------------------------------------------------ init

  def init(self, rng: jax.Array, batch: dict) -> TrainState:
    """Boxed parameters {"gen", "disc"}, their optimizer states and the optional EMA copy.

    Args:
      rng: PRNG key.
      batch: example batch (only the image shapes are used).
    Returns:
      TrainState with step 0.
    """
    r = self.face_cfg.resolution
    shape = tuple(batch["source"].shape[1:])
    if shape != (r, r, 3):
      raise VasaInputError(f"Batch images are {shape} but config.model.resolution={r}; "
                           f"preprocess the data at {r}px or set --config.model.resolution="
                           f"{shape[0]} (with matching model sizes)")
    x = jnp.zeros((1, r, r, 3), jnp.float32)
    g_rng, d_rng = jax.random.split(layers.fast_init_key(rng))
    gen = self.model.init(g_rng, x, x)["params"]
    disc = self.disc.init(d_rng, x)["params"]
    params = {"gen": gen, "disc": disc}
    opt_state = {"gen": self.gen_tx.init(gen), "disc": self.disc_tx.init(disc)}
    ema = params if self.ema_decay > 0 else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      ema_params=ema)

  # ------------------------------------------------------------------------------ losses

  def _gen(self, params, *args, method):
    return self.model.apply({"params": params}, *args, method=method)

  def generator_loss(self, gen_params, disc_params, imgs: dict, gan_on: jax.Array,
                     rng: jax.Array | None = None):
    """Weighted generator loss.

    Args:
      gen_params, disc_params: parameters.
      imgs: float images in [-1, 1], keys `IMAGE_KEYS`, each (B, R, R, 3), plus
        `motion_labels` (B, 3, 5), `labels_valid` (B, 3) and `mouth_box` (B, 3, 4) when the
        batch has them.
      gan_on: () float32, 1 once the GAN terms are active.
      rng: draws which rows render the driver with the source's unlabelled dynamics
        (`loss.dyn_swap`); None: no swap.
    Returns:
      (loss, (metrics, fakes)) with fakes (recon, cross), each (B, R, R, 3).
    """
    w = self.w
    src, drv, drv2, oth = (imgs[k] for k in IMAGE_KEYS)
    b = src.shape[0]
    cons = w["consistency"] > 0
    cat = lambda xs: jnp.concatenate(xs, axis=0)  # noqa: E731

    v_app, z_id = self._gen(gen_params, cat([src, drv, drv2] if cons else [src]),
                            method=FaceModel.encode_appearance)
    z_pose, z_dyn = self._gen(gen_params, cat([src, drv, oth] + ([drv2] if cons else [])),
                              method=FaceModel.encode_motion)
    split = lambda x: jnp.split(x, x.shape[0] // b, axis=0)  # noqa: E731
    v, zi, zp, zd = split(v_app), split(z_id), split(z_pose), split(z_dyn)
    m = {}
    labelled = all(k in imgs for k in LABEL_KEYS)
    if labelled:
      zp, zd, m["pose_label"], m["mouth_label"] = self._labelled_motion(
          zp, zd, imgs["motion_labels"], imgs["labels_valid"])
    zd_recon = zd[1]
    if labelled and self.face_cfg.label_motion and self.dyn_swap > 0 and rng is not None:
      # Only rows whose driver mouth is labelled: elsewhere entry 0 carries no mouth.
      take = jax.random.bernoulli(rng, self.dyn_swap, (b,)) & (imgs["labels_valid"][:, 1] > 0)
      zd_recon = motion_labels.swap_unlabelled_dyn(zd[1], zd[0], take)
      m["dyn_swap_frac"] = take.mean()
    # (v_app, z_id, pose_src, dyn_src, pose_tgt, dyn_tgt) per rendering; i = driver, j = driver2.
    # The last column is the image the appearance came from (the decoder's source warp).
    rows = [(v[0], zi[0], zp[0], zd[0], zp[1], zd_recon, src),  # recon
            (v[0], zi[0], zp[0], zd[0], zp[2], zd[2], src)]  # cross
    if cons:
      rows += [(v[2], zi[2], zp[3], zd[3], zp[1], zd[3], drv2),  # cons_a: appearance of j
               (v[1], zi[1], zp[1], zd[1], zp[1], zd[3], drv)]  # cons_b: appearance of i
    out = self._gen(gen_params, *[cat(list(col)) for col in zip(*rows)],
                    method=FaceModel.decode)
    outs = split(out)
    recon, cross = outs[0], outs[1]

    rec = recon
    if self.foreground_mask:
      # MegaPortraits: the reconstruction losses see the person only (background = target).
      fg = L.foreground(self.face_nets, drv)
      rec = recon * fg + jax.lax.stop_gradient(drv) * (1 - fg)
      m["foreground_frac"] = fg.mean()
    m["l1"] = L.l1_loss(rec, drv)
    m["pyramid"] = L.pyramid_l1_loss(rec, drv)
    m["ssim"] = L.ssim_loss(rec, drv)
    if labelled and MOUTH_BOX in imgs and w["mouth_l1"] > 0:
      m["mouth_l1"] = L.region_l1_loss(recon, drv, imgs[MOUTH_BOX][:, 1],
                                       imgs["labels_valid"][:, 1])
    if self.vgg_params is not None and w["vgg"] > 0:
      m["vgg"] = L.vgg_perceptual_loss(self.vgg_params, recon, drv)
    if cons:
      m["consistency"] = L.l1_loss(outs[2], outs[3])
    if any(w[k] > 0 for k in L.FACE_LOSSES):
      m.update(L.face_network_losses(self.face_nets, recon, cross, drv, src))
    if w["cross_id"] > 0:
      # Frozen encoder on the rendered side: only the decoder is pushed to keep the identity,
      # the encoder cannot satisfy the loss by making z_id constant.
      z_id_cross = self._gen(jax.lax.stop_gradient(gen_params), cross,
                             method=FaceModel.encode_identity)
      m["cross_id"] = L.identity_loss(z_id_cross, zi[0])
    if w["contrastive"] > 0:
      # MegaPortraits: the motion of each rendering matches its driver, not the other driver.
      _, zd_out = self._gen(gen_params, cat([recon, cross]), method=FaceModel.encode_motion)
      pos = cat([zd[1], zd[2]])  # (2B, Dz): driver for recon, other for cross
      neg = cat([zd[2], zd[1]])[:, None]  # (2B, 1, Dz)
      m["contrastive"] = L.contrastive_cosine_loss(zd_out, pos, neg, self.contrastive_s,
                                                   self.contrastive_m)
    if self.use_gan:
      d_out = self.disc.apply({"params": disc_params}, cat([drv, recon, cross]))
      real, fake_recon, fake_cross = _split_disc(d_out, 3)
      fake = [(jnp.concatenate([a[0], c[0]]), None) for a, c in zip(fake_recon, fake_cross)]
      m["adversarial"] = L.hinge_generator_loss(fake) * gan_on
      m["feature_matching"] = L.feature_matching_loss(real, fake_recon) * gan_on
    loss = sum(w[k] * m[k] for k in m if k in w)
    m = {f"g_{k}": val for k, val in m.items()}
    m["loss"] = loss
    return loss, (m, (recon, cross))

  def _labelled_motion(self, zp: list, zd: list, labels: jax.Array, valid: jax.Array):
    """Label losses of the encoder's predictions, then (with `model.label_motion`) the labelled
    entries of source, driver and driver2 (zp/zd parts 0, 1, 3) set to the labels.

    Args:
      zp, zd: per-role lists of (B, 6) / (B, Zd) (source, driver, other[, driver2]).
      labels: (B, 3, 5) of source, driver, driver2; valid: (B, 3).
    Returns:
      (zp, zd, pose loss, mouth loss).
    """
    roles = [0, 1] + ([3] if len(zp) > 3 else [])  # parts holding source, driver, driver2
    cat = lambda xs: jnp.concatenate(xs, axis=0)  # noqa: E731
    lab = cat([labels[:, i] for i in range(len(roles))])  # (nB, 5)
    ok = cat([valid[:, i] for i in range(len(roles))])  # (nB,)
    pose_loss, mouth_loss = motion_labels.label_loss(cat([zp[r] for r in roles]),
                                                     cat([zd[r] for r in roles]), lab, ok)
    if self.face_cfg.label_motion:
      zp, zd = list(zp), list(zd)
      for i, r in enumerate(roles):
        zp[r], zd[r] = motion_labels.apply_motion_labels(zp[r], zd[r], labels[:, i],
                                                         valid[:, i])
    return zp, zd, pose_loss, mouth_loss

  def discriminator_loss(self, disc_params, imgs: dict, fakes) -> jax.Array:
    """Hinge loss of D on reals (driver, other) vs fakes (recon, cross, gradients stopped)."""
    real = [imgs["driver"], imgs["other"]]
    fake = [jax.lax.stop_gradient(f) for f in fakes]
    out = self.disc.apply({"params": disc_params}, jnp.concatenate(real + fake, axis=0))
    d_real, d_fake = _split_disc(out, 2)
    return L.hinge_discriminator_loss(d_real, d_fake)

  # ------------------------------------------------------------------------------ step

  def train_step(self, state: TrainState, batch: dict, rng: jax.Array):
    """Generator update then discriminator update (pure; jit it with donation).

    Args:
      state: TrainState with params/opt_state {"gen", "disc"}.
      batch: uint8 images `IMAGE_KEYS` (B, R, R, 3).
      rng: per-step key (the `loss.dyn_swap` draw; augmentation happens in the pipeline).
    Returns:
      (new state, flat dict of scalar metrics including "loss").
    """
    imgs = {k: to_float_image(batch[k]) for k in IMAGE_KEYS}
    imgs.update({k: jnp.asarray(batch[k], jnp.float32) for k in LABEL_KEYS + (MOUTH_BOX,)
                 if k in batch})
    params, opt = state.params, state.opt_state
    gan_on = (state.step >= self.gan_start).astype(jnp.float32)

    grad_fn = jax.value_and_grad(self.generator_loss, has_aux=True)
    (_, (metrics, fakes)), g_grads = grad_fn(params["gen"], params["disc"], imgs, gan_on, rng)
    g_updates, g_opt = self.gen_tx.update(g_grads, opt["gen"], params["gen"])
    gen = optax.apply_updates(params["gen"], g_updates)
    metrics["g_grad_norm"] = optax.tree.norm(g_grads)

    disc, d_opt = params["disc"], opt["disc"]
    if self.use_gan:
      d_loss, d_grads = jax.value_and_grad(self.discriminator_loss)(disc, imgs, fakes)
      d_updates, d_opt_new = self.disc_tx.update(d_grads, d_opt, disc)
      disc_new = optax.apply_updates(disc, d_updates)
      # Before gan_start_step the discriminator (and its Adam moments) stay untouched.
      on = gan_on > 0
      disc, d_opt = _where_tree(on, disc_new, disc), _where_tree(on, d_opt_new, d_opt)
      metrics["d_loss"] = d_loss * gan_on
      metrics["gan_on"] = gan_on

    new_params = {"gen": gen, "disc": disc}
    ema = state.ema_params
    if ema is not None:
      ema = {"gen": optim.ema_update(ema["gen"], gen, self.ema_decay), "disc": disc}
    new_state = state.replace(step=state.step + 1, params=new_params,
                              opt_state={"gen": g_opt, "disc": d_opt}, ema_params=ema)
    return new_state, metrics

  # ------------------------------------------------------------------------------ eval / samples

  def _eval_params(self, state: TrainState):
    params = state.ema_params if state.ema_params is not None else state.params
    return params["gen"]

  def eval_step(self, state: TrainState, batch: dict) -> dict:
    """Self-reconstruction quality (source appearance, driver motion; EMA params if any).

    Returns:
      {"psnr" (dB), "ssim", "l1"} scalars.
    """
    src, drv = to_float_image(batch["source"]), to_float_image(batch["driver"])
    recon = self._gen(self._eval_params(state), src, drv, method=FaceModel.reconstruct)
    return {"psnr": jnp.mean(L.psnr(recon, drv)), "ssim": jnp.mean(L.ssim(recon, drv)),
            "l1": L.l1_loss(recon, drv)}

  def _render_samples(self, gen_params, src, drv, oth):
    src, drv, oth = (to_float_image(x) for x in (src, drv, oth))
    out = self._gen(gen_params, jnp.concatenate([src, src]), jnp.concatenate([drv, oth]),
                    method=FaceModel.reconstruct)
    return jnp.split(out, 2, axis=0)  # recon, cross

  def sample_images(self, state: TrainState, batch: dict, max_examples: int = 4) -> np.ndarray:
    """A PNG grid: rows source | driver | reconstruction | other | cross-identity transfer.

    Columns are the first `max_examples` batch elements. Uses the EMA parameters if any.

    Returns:
      uint8 (5 R, n R, 3).
    """
    n = min(int(batch["source"].shape[0]), max_examples)
    src, drv, oth = (batch[k][:n] for k in ("source", "driver", "other"))
    recon, cross = self._sample_fn(self._eval_params(state), src, drv, oth)
    rows = [_host(src), _host(drv), _host(recon), _host(oth), _host(cross)]
    rows = [r if r.dtype == np.uint8 else np.asarray(to_uint8_image(r)) for r in rows]
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)

  # ------------------------------------------------------------------------------ data

  def make_dataset(self, split: str, process_index: int, process_count: int):
    """Host-local batches {source, driver, driver2, other} from `vasa_jax.data.input_pipeline`."""
    return input_pipeline.make_dataset(self.config, split, process_index, process_count)


def _host(x) -> np.ndarray:
  """Array (possibly sharded over hosts) -> numpy on this host."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
