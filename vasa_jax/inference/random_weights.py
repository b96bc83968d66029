"""Pipelines with random weights, from a `configs/demo.py` config: speed, shape and
compile checks (benchmarks, tests, `compile-check`) that need no trained checkpoint."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax.inference.pipeline import Pipeline
from vasa_jax.models import motion_dit
from vasa_jax.models.face_model import FaceModel
from vasa_jax.models.layers import fast_init_key


def init_random_params(latent_config, motion_config, seed: int = 0):
  """Randomly initialised (unboxed) stage 1 and stage 2 parameters, for tests and benchmarks."""
  r = int(latent_config.model.resolution)
  img = jnp.zeros((1, r, r, 3), jnp.float32)
  k_lat, k_mot = jax.random.split(fast_init_key(jax.random.key(seed)))
  latent_params = jax.jit(FaceModel(latent_config.model).init)(k_lat, img, img)["params"]
  motion_params = init_motion_params(motion_config, k_mot)
  return nn.unbox(latent_params), nn.unbox(motion_params)


def init_motion_params(motion_config, rng):
  """Randomly initialised (boxed) MotionModel parameters for a `configs/motion.py` config."""
  m, e = motion_config.model, int(motion_config.model.emotion_dim)
  w, k = int(m.window), int(m.context)
  batch = {"motion": np.zeros((1, w, int(m.motion_dim)), np.float32),
           "motion_prev": np.zeros((1, k, int(m.motion_dim)), np.float32),
           "audio": np.zeros((1, w, 4, 80), np.float32),
           "audio_prev": np.zeros((1, k, 4, 80), np.float32),
           "has_prev": np.zeros((1,), bool), "gaze": np.zeros((1, 2), np.float32),
           "distance": np.zeros((1, 1), np.float32), "emotion": np.zeros((1, e), np.float32),
           "emotion_mask": np.zeros((1,), bool)}
  cond = motion_dit.batch_cond(batch, motion_dit.full_masks(batch, w))
  model = motion_dit.build_motion_model(motion_config)
  return jax.jit(model.init)(rng, jnp.asarray(batch["motion"]), jnp.zeros((1,), jnp.int32),
                             cond)["params"]


def inference_knobs(config) -> dict:
  """`Pipeline` keyword arguments a `configs/demo.py` config sets (compute_dtype,
  render_batch)."""
  inf = config.inference
  return {"compute_dtype": inf.get("compute_dtype", "float32"),
          "render_batch": inf.get("render_batch", 0)}


def random_pipeline(config, seed: int = 0, **kwargs) -> Pipeline:
  """A pipeline with random weights from a `configs/demo.py` config (speed and shape checks)."""
  latent_params, motion_params = init_random_params(config.latent, config.motion, seed)
  dm = int(config.motion.model.motion_dim)
  stats = {"mean": [0.0] * dm, "std": [1.0] * dm}
  kwargs.setdefault("steps", config.inference.steps)
  for k, v in inference_knobs(config).items():
    kwargs.setdefault(k, v)
  return Pipeline(config.latent, latent_params, config.motion, motion_params, stats, **kwargs)
