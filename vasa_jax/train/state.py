"""The train state every task returns from `init` and threads through `train_step`."""
from __future__ import annotations

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  """Step counter, parameters, optimizer state and an optional EMA copy of the parameters.

  `params` may hold `nn.Partitioned` boxes when it comes out of `Task.init`; the loop reads the
  logical names from them and then unboxes, so `train_step` sees plain arrays (linen `apply` and
  optax accept either). The GAN stage nests `{"gen": ..., "disc": ...}` in params/opt_state.
  """
  step: jax.Array  # () int32
  params: Any
  opt_state: Any
  ema_params: Any = None  # same structure as params, or None when optim.ema_decay == 0
