"""Toy regression task: a tiny MLP on synthetic data, used to test the training loop.

Run:  vasa-jax train --config configs/toy.py --workdir workdirs/toy
      vasa-jax train --config configs/toy.py:ema --workdir workdirs/toy_ema --config.train.num_steps=200
Flags: ema (keep an EMA copy of the parameters). Trains in seconds on one CPU core.
"""
import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="tiny", ema=False)
  config = ml_collections.ConfigDict()
  config.stage = "toy"
  config.variant = arg.variant
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.num_examples = 256  # per split; y = sin(x @ A) with a fixed random A
  config.data.in_dim = 8
  config.data.out_dim = 8
  config.data.shuffle_seed = 0
  config.data.worker_count = 0

  config.model = ml_collections.ConfigDict()
  config.model.hidden = 32

  config.loss = ml_collections.ConfigDict()
  config.loss.input_noise = 0.01  # Gaussian input noise from the step rng
  config.loss.nan_at_step = -1  # >= 1: the loss turns NaN from this step on (loop tests)

  config.optim = common.optim_config(lr=1e-2, min_lr=1e-4, warmup=2, weight_decay=0.0,
                                     ema_decay=0.99 if arg.ema else 0.0)
  config.train = common.train_config(num_steps=50, batch_size=16, log_every=5, ckpt_every=25,
                                     sample_every=25)
  config.mesh = common.mesh_config()
  return config
