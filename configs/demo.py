"""The whole generation pipeline: stage 1 + stage 2 configs and inference settings.

Run:  vasa-jax bench --config configs/demo.py:demo
      vasa-jax bench --config configs/demo.py:base   (paper scale, 512x512; random weights)
      vasa-jax compile-check --config configs/demo.py:large --topology v5e:16x16
Used by `vasa-jax bench` and as the recipe behind `vasa-jax export` (the bundled checkpoint
stores its own copy of these configs, so loading it needs nothing else).
"""
import ml_collections

from configs import common
from configs import latent
from configs import motion


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="demo", steps=0)
  common.check_variant(arg.variant)
  config = ml_collections.ConfigDict()
  config.variant = arg.variant
  config.latent = latent.get_config(arg.variant)
  config.motion = motion.get_config(arg.variant)
  config.inference = ml_collections.ConfigDict()
  # Paper default is 50 DDIM steps; the demo's 10 are discussed in docs/training.md.
  config.inference.steps = arg.steps or (10 if arg.variant not in ("base", "large") else 50)
  config.inference.compute_dtype = ("float32" if arg.variant not in ("base", "large")
                                    else "bfloat16")
  config.inference.render_batch = 0  # frames per decoder call; 0 = one window (W frames)
  return config
