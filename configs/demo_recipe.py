"""The recipes that made the bundled demo checkpoint, as named variants (not shell overrides).

Run (launch/train_demo_gpu.sh does all of it; paths stay on the command line):
      vasa-jax train --config configs/demo_recipe.py:latent_gpu_1 --workdir W/latent \
          --config.data.shards=W/slim --max-steps 2900
      vasa-jax train --config configs/demo_recipe.py:motion --workdir W/motion \
          --config.data.motion=W/motion_data
Variants:
  latent_gpu_1..3  the bundled stage 1: a 32x32 volume, batch 32, on one GPU from slim shards,
                   in three legs (leg 1 without the mouth-region L1 and the dynamics swap; legs
                   2 and 3 add them, each decaying to its own end).
  latent_cpu_1..3  the first bundled stage 1 (16x16 volume) on the 2-core CPU (launch/train_demo.sh).
  latent_face_tune the bundled stage 1 fine-tuned with the face-network losses on (identity,
                   face-perceptual, lip/eye landmarks, foreground masks): a CPU-sized step
                   toward retraining it with them (`--config.train.init_from=
                   vasa_jax/assets/demo/latent`, MEAD's emotional clips of `silent/`).
  motion           the bundled stage 2 (configs/motion.py:demo as it is).
  motion_dev       the same with 8 more training people held out (DEMO_DEV_PERSONS): the run the
                   mouth scale is calibrated on.
  motion_cpu       the first bundled stage 2: batch 16 without audio look-ahead.
  motion_fer       the bundled stage 2 with the emotion control trained on every clip: the
                   emotion network's labels (`vasa-jax label-emotions`) where the file name
                   names no emotion (the bundled motion* runs predate them: file names only).
  motion_fer_tune  a CPU-sized form of it: the bundled stage 2 fine-tuned for 300 steps on those
                   labels (`--config.train.init_from=vasa_jax/assets/demo/motion`, motion data
                   extracted with the bundled stage 1 and normalised by its motion_stats).
"""
from configs import common
from configs import latent
from configs import motion

# Per leg of stage 1: what changes from configs/latent.py:demo. The GPU legs were time-boxed;
# --max-steps 2900 / 7075 / 11250 are the steps they reached (launch/train_demo_gpu.sh).
_PLAIN = {"loss.dyn_swap": 0.0, "loss.mouth_l1": 0.0}  # leg 1 learns reconstruction first
_LEGS = {
    "gpu": {1: {"train.num_steps": 100000, **_PLAIN}, 2: {"train.num_steps": 7403},
            3: {"train.num_steps": 11800}},
    "cpu": {1: {"train.num_steps": 1200, **_PLAIN},
            2: {"train.num_steps": 2100, "loss.mouth_l1": 0.0},
            3: {"train.num_steps": 3000, "optim.lr": 6e-4}},
}
# The GPU run: a 32x32 volume at batch 32 from slim shards (training people only, so no
# validation split), 12 grain workers, no sample images.
_GPU = {"data.val_persons": [], "model.app_size": 32, "train.batch_size": 32, "optim.lr": 3e-4,
        "data.worker_count": 12, "train.sample_every": 0, "train.ckpt_every": 500,
        "train.log_every": 25}
# The bundled stage 1 was trained before the pretrained face-network losses existed.
_NO_FACE_NETS = {"loss.face_id": 0.0, "loss.face_perceptual": 0.0, "loss.face_landmark": 0.0,
                 "loss.foreground_mask": False}
VARIANTS = tuple([f"latent_{where}_{leg}" for where in _LEGS for leg in _LEGS[where]]
                 + ["latent_face_tune", "motion", "motion_dev", "motion_cpu", "motion_fer",
                    "motion_fer_tune"])
# Fine-tuning the bundled stage 2: a short schedule, and an EMA short enough to move off the
# starting point within it (0.999 would keep ~74% of the start after 300 steps).
_TUNE = {"train.num_steps": 300, "optim.lr": 1e-4, "optim.warmup_steps": 30,
         "optim.ema_decay": 0.99, "train.ckpt_every": 100}


def _set(config, changes: dict):
  for key, value in changes.items():
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


def get_config(arg=None):
  arg = arg or "motion"
  if arg not in VARIANTS:
    raise ValueError(f"Unknown demo recipe {arg!r}; choose one of {VARIANTS}")
  if arg == "latent_face_tune":  # the GPU model as the last leg left it, face losses on
    config = _set(latent.get_config("demo"), {**_GPU, **_LEGS["gpu"][3]})
    # The encoder stays frozen so the motion space, and with it the bundled stage 2, holds.
    return _set(config, {**_TUNE, "train.batch_size": 8, "train.log_every": 10,
                         "data.worker_count": 2, "optim.freeze": "gen/encoder"})
  if arg.startswith("latent_"):
    _, where, leg = arg.split("_")
    config = latent.get_config("demo")
    return _set(config, {**_NO_FACE_NETS, **(_GPU if where == "gpu" else {}),
                         **_LEGS[where][int(leg)]})
  config = motion.get_config("demo")
  # The bundled stage 2 runs learnt the emotion control from file names only.
  config.data.network_emotions = arg.startswith("motion_fer")
  if arg == "motion_dev":
    config.data.val_persons = list(common.DEMO_VAL_PERSONS + common.DEMO_DEV_PERSONS)
  elif arg == "motion_cpu":
    _set(config, {"train.batch_size": 16, "model.audio_lookahead": 0})
  elif arg == "motion_fer_tune":
    _set(config, _TUNE)
  return config
