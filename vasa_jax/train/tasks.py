"""`get_task(config)`: the stage-specific half of training, chosen by `config.stage`.

A Task has:
  init(rng, batch) -> TrainState           pure; params boxed with logical axis names. The loop
      traces it under jit/eval_shape with zeros shaped like the global batch (use shapes only)
      and unboxes the result, so train_step sees plain arrays.
  train_step(state, batch, rng) -> (state, metrics)   pure; metrics a flat dict with "loss".
      The loop folds state.step into rng and sets the new state.step to state.step + 1.
  make_dataset(split, process_index, process_count) -> grain IterDataset of host-local batches
  sample_images(state, batch) -> uint8 (H, W, 3) | None
  eval_step(state, batch) -> metrics       optional
The stage modules are imported lazily so a toy run never imports the big models.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from vasa_jax.train.latent_task import LatentTask
from vasa_jax.train.motion_task import MotionTask
from vasa_jax.train.state import TrainState
from vasa_jax.train.toy_task import ToyTask


class Task(Protocol):
  config: Any

  def init(self, rng, batch) -> TrainState:
    ...

  def train_step(self, state: TrainState, batch, rng) -> tuple[TrainState, dict]:
    ...

  def make_dataset(self, split: str, process_index: int, process_count: int):
    ...

  def sample_images(self, state: TrainState, batch) -> np.ndarray | None:
    ...


STAGES = ("latent", "motion", "toy")


def get_task(config) -> Task:
  """Builds the Task for `config.stage` ("latent", "motion" or "toy").

  Args:
    config: the run config.

  Returns:
    A Task instance.
  """
  stage = config.get("stage", None)
  if stage == "latent":
    return LatentTask(config)
  if stage == "motion":
    return MotionTask(config)
  if stage == "toy":
    return ToyTask(config)
  raise ValueError(f"Unknown config.stage {stage!r}; expected one of {STAGES}. "
                   "Pass a config from configs/ (e.g. --config configs/latent.py:tiny)")
