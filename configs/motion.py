"""Stage 2: the motion diffusion transformer (audio + controls -> [z_pose, z_dyn] windows).

Run:  vasa-jax train --config configs/motion.py:tiny --workdir workdirs/motion_tiny
      vasa-jax train --config configs/motion.py:demo --workdir workdirs/motion_demo \
          --config.data.motion=data/motion
Variants: tiny (tests), demo (CPU / one GPU), base (paper: 8 layers, width 512, 8 heads),
large (a ~29 M parameter DiT, VASA-1's size; pairs with latent.py:large).
The motion size must match the stage 1 model that extracted the motion (`latent_variant`).
"""
import ml_collections

from configs import common
from configs import latent

_SIZES = {
    "tiny": dict(layers=2, width=64, heads=4, audio_width=64, audio_layers=1, window=16,
                 context=4, batch_size=8),
    # demo batch 64: more mouth motion than 16 at about the same sync (docs/training.md).
    "demo": dict(layers=4, width=256, heads=4, audio_width=128, audio_layers=2, window=50,
                 context=10, batch_size=64),
    "base": dict(layers=8, width=512, heads=8, audio_width=512, audio_layers=4, window=50,
                 context=10, batch_size=64),
    # large: a DiT of ~29 M parameters like VASA-1's (9 layers of width 512: our condition
    # embeddings are lighter than the paper's, so one layer more reaches its size).
    "large": dict(layers=9, width=512, heads=8, audio_width=512, audio_layers=4, window=50,
                  context=10, batch_size=64),
}


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="tiny", synthetic=False, latent_variant="")
  variant = arg.variant
  common.check_variant(variant)
  s = _SIZES[variant]
  latent_model = latent.model_config(arg.latent_variant or variant)
  config = ml_collections.ConfigDict()
  config.stage = "motion"
  config.variant = variant
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.motion = ""  # directory written by `vasa-jax extract-motion`
  config.data.synthetic = bool(arg.synthetic or variant == "tiny")
  config.data.synthetic_clips = 8
  config.data.synthetic_frames = 64
  config.data.val_persons = list(common.DEMO_VAL_PERSONS) if variant == "demo" else []
  config.data.worker_count = 0
  config.data.shuffle_seed = 0
  # W frames generated per window and K previous frames conditioning it: one value each, shared
  # by the data pipeline and the model (`--config.data.window=32` changes both, and so what the
  # exported pipeline samples).
  window = ml_collections.FieldReference(s["window"])
  context = ml_collections.FieldReference(s["context"])
  config.data.window = window
  config.data.context = context
  # Random recording-channel changes of the training audio (`augment.augment_log_mel`): the
  # demo's stage 2 otherwise learns its few hundred clips by heart.
  config.data.audio_augment = variant != "tiny"
  config.data.audio_gain = 1.5  # +-1.5 nats of power, about +-6.5 dB
  config.data.audio_tilt = 1.0  # +-1 nat from the lowest to the highest mel band
  config.data.audio_freq_mask = 10  # mel bands
  # The emotion control of clips whose file name names no emotion: the emotion network's
  # per-frame probabilities stored by preprocess (`vasa_jax/data/emotion_labels.py`), averaged
  # over the window. File-name labels (MEAD, CREMA-D) still win where they exist.
  config.data.network_emotions = True

  config.model = ml_collections.ConfigDict()
  config.model.z_pose_dim = latent_model.z_pose_dim
  config.model.z_dyn_dim = latent_model.z_dyn_dim
  config.model.motion_dim = latent_model.z_pose_dim + latent_model.z_dyn_dim
  config.model.layers = s["layers"]
  config.model.width = s["width"]
  config.model.heads = s["heads"]
  config.model.mlp_ratio = 4
  config.model.scan_layers = variant in ("base", "large")
  config.model.remat_policy = "none"  # none | full | dots
  config.model.audio_encoder = "mel"  # mel | wav2vec2
  config.model.wav2vec2_path = ""  # local Hugging Face checkpoint directory
  config.model.audio_width = s["audio_width"]
  config.model.audio_layers = s["audio_layers"]
  # Mel encoder receptive field (frames): each attention layer sees `audio_attn_past` past frames;
  # `audio_lookahead` future frames (0 = causal; streaming latency grows by this much). Lips
  # move ahead of the sound they make: the demo uses 2 frames (80 ms; docs/training.md), `base`
  # keeps 0 for the lowest streaming latency (docs/benchmarks.md).
  config.model.audio_attn_past = 4
  config.model.audio_lookahead = 2 if variant == "demo" else 0
  config.model.emotion_dim = 8
  config.model.window = window
  config.model.context = context

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.train_steps = 1000
  config.diffusion.schedule = "cosine"
  config.diffusion.sampler = "ddim"  # ddim | ddpm
  config.diffusion.sample_steps = 50
  config.diffusion.cfg_audio = common.CFG_AUDIO
  config.diffusion.cfg_gaze = common.CFG_GAZE
  config.diffusion.p_drop_audio = 0.1
  config.diffusion.p_drop_gaze = 0.1
  config.diffusion.p_drop_distance = 0.1
  config.diffusion.p_drop_emotion = 0.1
  config.diffusion.p_drop_context = 0.5
  config.diffusion.p_truncate_audio = 0.1  # drop the last few audio frames (short final windows)

  config.loss = ml_collections.ConfigDict()
  config.loss.x0 = 1.0
  config.loss.velocity = 1.0
  # Weight of z_dyn[0], the mouth opening of a label-pinned stage 1: one entry of Dm, yet the
  # one lip sync depends on (the demo's first run under-generated its amplitude ~3x).
  config.loss.mouth = 1.0 if variant == "tiny" else 5.0

  # The demo trains for minutes, so it takes a larger step than the paper-scale base.
  lr = {"tiny": 1e-3, "demo": 3e-4, "base": 1e-4, "large": 1e-4}[variant]
  config.optim = common.optim_config(lr=lr, min_lr=1e-6,
                                     warmup=10 if variant == "tiny" else 500,
                                     ema_decay=0.0 if variant == "tiny" else 0.999)
  # demo: 1500 steps, where held-out lip sync peaks (docs/training.md).
  steps = {"tiny": 50, "demo": 1500, "base": 500_000, "large": 500_000}[variant]
  config.train = common.train_config(
      num_steps=steps, batch_size=s["batch_size"], log_every=5 if variant == "tiny" else 50,
      ckpt_every={"tiny": 25, "demo": 500, "base": 1000, "large": 1000}[variant], sample_every=0)
  config.mesh = common.mesh_config()
  config.audio = common.audio_config()
  return config
