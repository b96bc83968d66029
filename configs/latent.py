"""Stage 1: the face latent space (appearance volume, identity, pose, dynamics; warp + render).

Run:  vasa-jax train --config configs/latent.py:tiny --workdir workdirs/latent_tiny
      vasa-jax train --config configs/latent.py:demo --workdir workdirs/latent_demo \
          --config.data.shards=data/shards
Variants: tiny (tests, seconds on CPU, synthetic data by default), demo (128x128, trainable on a
2-core CPU in about an hour), base (paper scale: 512x512, V_app 96x16x64x64), large (VASA-1's ~200 M
parameter face latent model).
"""
import ml_collections

from configs import common

# variant -> (resolution, V_app C, D, H=W, encoder width, z_id, z_dyn, decoder 2D width,
#             disc width, disc scales, batch)
_SIZES = {
    "tiny": dict(resolution=64, app_channels=8, app_depth=4, app_size=16, enc_width=16,
                 z_id_dim=32, z_dyn_dim=16, dec_width=32, g2d_blocks=1, disc_width=16,
                 disc_scales=2, batch_size=4),
    # demo: a 16x16 volume grid keeps the 3D part cheap on a CPU (docs/training.md).
    "demo": dict(resolution=128, app_channels=16, app_depth=8, app_size=16, enc_width=16,
                 z_id_dim=64, z_dyn_dim=32, dec_width=64, g2d_blocks=1, disc_width=32,
                 disc_scales=2, batch_size=8),
    "base": dict(resolution=512, app_channels=96, app_depth=16, app_size=64, enc_width=64,
                 z_id_dim=512, z_dyn_dim=128, dec_width=256, g2d_blocks=8, disc_width=64,
                 disc_scales=3, batch_size=16),
    # large: sized like VASA-1's face latent model (~200 M generator parameters; the paper's
    # V_app stays 96x16x64x64): wider encoders and 2D generator, twice its residual blocks.
    "large": dict(resolution=512, app_channels=96, app_depth=16, app_size=64, enc_width=160,
                  z_id_dim=512, z_dyn_dim=128, dec_width=640, g2d_blocks=16, disc_width=64,
                  disc_scales=3, batch_size=16),
}


def model_config(variant):
  common.check_variant(variant)
  s = _SIZES[variant]
  m = ml_collections.ConfigDict()
  m.resolution = s["resolution"]
  m.app_channels = s["app_channels"]  # C of V_app (C x D x H x W)
  m.app_depth = s["app_depth"]  # D
  m.app_size = s["app_size"]  # H = W
  m.enc_width = s["enc_width"]
  m.z_id_dim = s["z_id_dim"]
  m.z_pose_dim = common.Z_POSE_DIM
  m.z_dyn_dim = s["z_dyn_dim"]
  m.dec_width = s["dec_width"]
  m.g2d_blocks = s["g2d_blocks"]
  m.disc_width = s["disc_width"]
  m.disc_scales = s["disc_scales"]
  m.disc_layers = 3
  m.groups = 4 if variant == "tiny" else 8  # GroupNorm groups
  m.weight_std = False  # weight standardisation in the generator convs (MegaPortraits)
  # Warp the source image in 2D besides the volume (see `FaceDecoder`): sharp output after a
  # short CPU run. The paper-scale `base` keeps MegaPortraits' pure volume rendering.
  m.source_warp = variant == "demo"
  # Five motion entries pinned to face-mesh labels (see vasa_jax/models/motion_labels.py), centred
  # with statistics of ../shared/data's 32k preprocessed frames (`input_pipeline.label_stats` gives
  # them for other data; MediaPipe's ratios vary little between talking-face sets).
  m.label_motion = True
  m.label_log_scale_mean = -1.323
  m.label_mouth_mean = 0.0892
  m.label_mouth_std = 0.0632
  return m


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="tiny", synthetic=False, runlocal=False)
  variant = arg.variant
  s = _SIZES[variant] if variant in _SIZES else common.check_variant(variant)
  config = ml_collections.ConfigDict()
  config.stage = "latent"
  config.variant = variant
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.shards = ""  # directory written by `vasa-jax preprocess`
  # With no shards (or synthetic=True) the pipeline serves synthetic elements with the real spec.
  config.data.synthetic = bool(arg.synthetic or variant == "tiny")
  config.data.synthetic_clips = 8
  config.data.synthetic_frames = 16
  # Persons held out of training (validation). The demo keeps three people of ../shared/data
  # out (their clips have clean lip sync), so quality is measured on unseen identities.
  config.data.val_persons = list(common.DEMO_VAL_PERSONS) if variant == "demo" else []
  config.data.val_fraction_persons = 0.0  # or a share of persons, chosen deterministically
  config.data.worker_count = 0
  config.data.shuffle_seed = 0
  config.data.augment = variant != "tiny"  # driver colour jitter / crop jitter

  config.model = model_config(variant)

  config.loss = ml_collections.ConfigDict()
  config.loss.l1 = 1.0
  config.loss.pyramid = 1.0  # multi-scale L1 (no downloaded weights)
  config.loss.ssim = 1.0
  config.loss.vgg = 0.0  # VGG19 perceptual, needs loss.vgg_path (paper: 20)
  config.loss.vgg_path = ""
  config.loss.adversarial = 0.1 if variant != "tiny" else 0.0
  config.loss.feature_matching = 1.0 if variant != "tiny" else 0.0
  config.loss.consistency = 1.0  # VASA-1 pose/dynamics transfer consistency
  config.loss.cross_id = 1.0  # identity kept under cross-identity transfer
  config.loss.arcface_path = ""  # optional external identity network
  # Pretrained face networks (`vasa-jax fetch-face-nets`; training fails at once without them):
  # MobileFaceNet identity (VASA-1's cross-identity + self-reconstruction), its stage features
  # (MegaPortraits' L_face role), face-mesh landmarks weighted to lips and eyes, and selfie
  # segmentation masks so reconstruction losses ignore the background. Off in tiny (tests), and
  # in configs/demo_recipe.py's legs of the bundled checkpoint, trained before they existed.
  face = variant != "tiny"
  config.loss.face_id = 1.0 if face else 0.0
  config.loss.face_perceptual = 1.0 if face else 0.0
  config.loss.face_landmark = 10.0 if face else 0.0
  config.loss.foreground_mask = face
  config.loss.contrastive = 0.5  # MegaPortraits cosine loss on motion descriptors
  config.loss.contrastive_s = 5.0
  config.loss.contrastive_m = 0.2
  # The motion encoder's prediction of the labelled entries (model.label_motion), for frames
  # without labels.
  config.loss.pose_label = 1.0
  config.loss.mouth_label = 1.0
  # L1 inside the driver's mouth box, normalised by its area (`latent_losses.region_l1_loss`).
  config.loss.mouth_l1 = 1.0
  # Share of rows whose driver is rendered with the source's unlabelled dynamics and only its
  # own labelled mouth entry (`motion_labels.swap_unlabelled_dyn`): makes the decoder follow the
  # entry that stage 2 and the controls drive.
  config.loss.dyn_swap = 0.5
  config.loss.gan_start_step = 0 if variant == "tiny" else 500

  config.optim = common.optim_config(lr=2e-4, min_lr=1e-6, b1=0.5, b2=0.999, weight_decay=1e-2,
                                     warmup=10 if variant == "tiny" else 200)
  steps = {"tiny": 30, "demo": 1200, "base": 300_000, "large": 300_000}[variant]
  config.train = common.train_config(
      num_steps=steps, batch_size=s["batch_size"], log_every=5 if variant == "tiny" else 50,
      ckpt_every=10 if variant == "tiny" else 200, sample_every=10 if variant == "tiny" else 200)
  config.mesh = common.mesh_config()
  config.audio = common.audio_config()
  return config
