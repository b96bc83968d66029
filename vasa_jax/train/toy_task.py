"""A tiny regression task (linen MLP, synthetic grain data) that exercises the whole loop.

The data is a pure function of the example index, so two runs (or a run and its resumption)
see identical batches; every element carries its `index` so tests can check the order.
"""
from __future__ import annotations

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vasa_jax.image_ops import to_uint8_image
from vasa_jax.train import optim, sharding
from vasa_jax.train.state import TrainState

_SPLIT_OFFSET = {"train": 0, "val": 1_000_000}


class ToyMLP(nn.Module):
  """Two dense layers whose parameters carry logical axis names."""
  hidden: int
  out_dim: int

  @nn.compact
  def __call__(self, x):  # (B, Din) -> (B, Dout)
    dense = lambda feat, names, name: nn.Dense(  # noqa: E731
        feat, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), names[1:]))
    h = nn.gelu(dense(self.hidden, ("embed", "mlp"), "fc1")(x))  # (B, H)
    h = nn.with_logical_constraint(h, ("batch", "mlp"))
    return dense(self.out_dim, ("mlp", "embed"), "fc2")(h)  # (B, Dout)


def _target_matrix(in_dim: int, out_dim: int) -> np.ndarray:
  return np.random.default_rng(1234).normal(size=(in_dim, out_dim)).astype(np.float32) / np.sqrt(
      in_dim)


def make_example(index: int, in_dim: int, out_dim: int) -> dict[str, np.ndarray]:
  """Element `index`: {"x": (Din,), "y": (Dout,) = sin(x @ A), "index": ()}."""
  x = np.random.default_rng(int(index)).normal(size=(in_dim,)).astype(np.float32)
  y = np.sin(x @ _target_matrix(in_dim, out_dim)).astype(np.float32)
  return {"x": x, "y": y, "index": np.int32(index)}


class ToyTask:
  """The loop's test task (see `tasks.get_task`)."""

  def __init__(self, config):
    self.config = config
    self.model = ToyMLP(config.model.hidden, config.data.out_dim)
    self.tx = optim.make_optimizer(config.optim, config.train.num_steps)
    self._predict = jax.jit(lambda params, x: self.model.apply({"params": params}, x))

  def init(self, rng, batch) -> TrainState:
    params = self.model.init(rng, jnp.asarray(batch["x"], jnp.float32))["params"]  # boxed
    ema = params if self.config.optim.ema_decay > 0 else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), ema_params=ema)

  def _loss(self, params, batch, rng=None):
    x = batch["x"]
    if rng is not None and self.config.loss.input_noise > 0:
      x = x + self.config.loss.input_noise * jax.random.normal(rng, x.shape, x.dtype)
    pred = self.model.apply({"params": params}, x)
    return jnp.mean(jnp.square(pred - batch["y"]))

  def train_step(self, state: TrainState, batch, rng):
    loss, grads = jax.value_and_grad(self._loss)(state.params, batch, rng)
    nan_at = int(self.config.loss.nan_at_step)
    if nan_at >= 1:  # simulate a divergence from update number `nan_at` on
      bad = state.step + 1 >= nan_at
      loss = jnp.where(bad, jnp.nan, loss)
      grads = jax.tree.map(lambda g: jnp.where(bad, jnp.nan, g), grads)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = optim.ema_update(state.ema_params, params, self.config.optim.ema_decay)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    return new_state, {"loss": loss, "grad_norm": grad_norm}

  def eval_step(self, state: TrainState, batch):
    return {"loss": self._loss(state.params, batch)}

  def make_dataset(self, split: str, process_index: int, process_count: int):
    """Host-local batches of `train.batch_size // process_count` (train: shuffled, endless)."""
    d = self.config.data
    batch_size = self.config.train.batch_size // process_count
    offset = _SPLIT_OFFSET[split]
    ds = grain.MapDataset.range(offset, offset + d.num_examples)
    ds = ds[process_index::process_count]  # disjoint examples per host
    if split == "train":
      ds = ds.shuffle(seed=d.shuffle_seed).repeat()
    ds = ds.map(lambda i: make_example(i, d.in_dim, d.out_dim))
    return ds.to_iter_dataset().batch(batch_size, drop_remainder=True)

  def sample_images(self, state: TrainState, batch) -> np.ndarray:
    """Rows of predictions over targets for 8 examples, as a grey-scale uint8 (H, W, 3) image."""
    pred = sharding.to_host(self._predict(state.params, batch["x"]))[:8]  # (8, Dout)
    y = sharding.to_host(batch["y"])[:8]
    grid = np.concatenate([pred, y], axis=1)  # (8, 2 * Dout)
    img = np.asarray(to_uint8_image(grid))
    img = np.repeat(np.repeat(img, 8, axis=0), 8, axis=1)  # nearest upscaling
    return np.stack([img] * 3, axis=-1)

