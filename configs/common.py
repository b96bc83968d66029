"""Pieces shared by every recipe: audio/video constants, mesh, logical axis rules, optimizer."""
import ml_collections

from vasa_jax.config_utils import parse_arg  # noqa: F401  (re-exported for recipes)
# Audio/video timing is a library fact; recipes read it from here.
from vasa_jax.constants import (CFG_AUDIO, CFG_GAZE, FPS, MEL_HOP, MEL_NFFT,  # noqa: F401
                                MEL_WIN, N_MELS, ROWS_PER_FRAME, SAMPLE_RATE,
                                SAMPLES_PER_FRAME)

# z_pose is explicit and interpretable: yaw, pitch, roll (radians), tx, ty (normalised image
# units), log scale (a head-to-camera distance proxy).
Z_POSE_DIM = 6

VARIANTS = ("tiny", "demo", "base", "large")
# People of ../shared/data the demo never trains on (clean lip sync): both stages hold them out.
DEMO_VAL_PERSONS = ("bob_menendez", "aoc", "bill_skarsgard")
# Training people that a second stage 2 run also holds out, so stage 2 choices (its recipe, the
# pipeline's mouth scale) are made on people it never saw, without touching the validation ones.
DEMO_DEV_PERSONS = ("cremad_1001", "german_news_anchor", "latentsync_model1",
                    "lrs2_deepavsr_00016", "lrs3_laalm_s4", "mead_W040", "style_trump_clip1",
                    "vox_00473")

# Logical parameter/activation names -> mesh axes. Weights are sharded over `fsdp` along their
# largest "embed"-like dimension and over `tensor` along heads/mlp/channels.
LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("time", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("depth", None),
    ("kernel", None),
    ("kernel_d", None),
    ("kernel_h", None),
    ("kernel_w", None),
    ("norm", None),
    ("latent", None),
)


def check_variant(variant):
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}; choose one of {VARIANTS}")


def audio_config():
  c = ml_collections.ConfigDict()
  c.sample_rate = SAMPLE_RATE
  c.fps = FPS
  c.hop = MEL_HOP
  c.win = MEL_WIN
  c.n_fft = MEL_NFFT
  c.n_mels = N_MELS
  c.rows_per_frame = ROWS_PER_FRAME
  return c


def mesh_config(data=-1, fsdp=1, tensor=1):
  c = ml_collections.ConfigDict()
  # -1 takes every device left over after the other axes.
  c.shape = ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})
  c.logical_axis_rules = [list(r) if isinstance(r, tuple) else r for r in LOGICAL_AXIS_RULES]
  return c


def optim_config(lr, min_lr, b1=0.9, b2=0.999, weight_decay=1e-2, warmup=100, clip=1.0,
                 ema_decay=0.0):
  c = ml_collections.ConfigDict()
  c.lr = lr
  c.min_lr = min_lr
  c.b1 = b1
  c.b2 = b2
  c.weight_decay = weight_decay
  c.warmup_steps = warmup
  c.grad_clip = clip
  c.ema_decay = ema_decay  # 0 disables the EMA copy of the parameters.
  # Parameter subtrees kept fixed: comma-separated "/"-joined paths from the top of the
  # parameters (e.g. "gen/encoder": a stage-1 decoder fine-tune that leaves the motion space,
  # and so stage 2, as they were). "" = train everything.
  c.freeze = ""
  return c


def train_config(num_steps, batch_size, log_every=10, ckpt_every=500, sample_every=500, keep=3):
  c = ml_collections.ConfigDict()
  c.num_steps = num_steps
  c.batch_size = batch_size  # global batch, split over processes and the data/fsdp axes
  c.log_every = log_every
  c.ckpt_every = ckpt_every
  c.sample_every = sample_every
  c.keep = keep
  c.async_checkpoint = True
  c.compute_dtype = "float32"  # "bfloat16" for mixed precision; params stay float32
  c.distributed = False  # call jax.distributed.initialize() at start (multi-host)
  # Wall-clock budget for the loop (compilation excluded), in seconds; 0 = none. When spent, the
  # run checkpoints the step it reached and stops (checked at log steps), like a preemption: for
  # a Colab session, a lent accelerator or a time-boxed slot. The schedule still follows
  # num_steps, so set num_steps to the steps the budget affords for a full decay.
  c.time_limit_s = 0.0
  # A run (workdir, checkpoints dir, step dir or export) whose parameters start a fresh run in
  # place of random ones; optimizer, schedule and step start over. "" = random init.
  c.init_from = ""
  return c
