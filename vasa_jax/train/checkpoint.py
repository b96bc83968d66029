"""Orbax checkpoints of a run (train state + grain iterator + config).

Layout: `workdir/checkpoints/<step>/{state,data_iter,config}` written by one
`ocp.CheckpointManager` (async saves, `max_to_keep`, preemption checks), as in maxtext.
Reading parameters for inference (`load_params`) and the small bf16 export (`export_params`,
`load_exported`) live in `vasa_jax.params_io` and are re-exported here.
"""
from __future__ import annotations

import json
import logging
import os

import grain
import jax
from etils import epath
import ml_collections
import orbax.checkpoint as ocp

from vasa_jax import config_utils, params_io
from vasa_jax.errors import CheckpointError
# Parameter I/O lives in vasa_jax.params_io (inference must not import train/); the names stay
# importable from here for the training code.
from vasa_jax.params_io import (CHECKPOINT_SUBDIR, EXPORT_CHECKSUM, EXPORT_MARKER,  # noqa: F401
                                EXPORT_PARAMS, EXPORT_VERSION, export_params, load_exported,
                                load_params)


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
  return epath.Path(workdir) / CHECKPOINT_SUBDIR


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` for the items `state`, `data_iter`, `config`.

  Args:
    directory: the checkpoint directory (`workdir/checkpoints`).
    keep: how many checkpoints to keep (`config.train.keep`); None keeps all.
    async_save: write in a background thread (device->host copies still happen in `save`, so
      the state may be donated right after).
    read_only: open an existing directory for restoring only.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int | None = 3,
               async_save: bool = True, read_only: bool = False):
    directory = epath.Path(directory)
    # Local paths are made absolute (orbax needs it); gs:// paths are left as they are.
    self.directory = directory.absolute() if "://" not in str(directory) else directory
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only,
        read_only=read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_iter=None, config=None, *, force: bool = False) -> bool:
    """Saves `state` (and the grain iterator state and the config when given) at `step`.

    Returns:
      True when a save was started.
    """
    if step in self._manager.all_steps():
      return False  # already saved (e.g. the final step right after a periodic save)
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      items["config"] = ocp.args.JsonSave(json.loads(config_utils.config_to_json(config)))
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state, data_iter=None, step: int | None = None):
    """Restores the state onto `abstract_state` (ShapeDtypeStructs with shardings).

    Args:
      abstract_state: the target; restoring without one turns optax namedtuples into lists.
      data_iter: a fresh grain iterator of the same dataset; its position is restored in place.
      step: the step to restore (default: the latest).

    Returns:
      (step, state).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint to restore in {self.directory}")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      iter_dir = self.directory / str(step) / "data_iter"
      if not iter_dir.is_dir():
        raise CheckpointError(
            f"Checkpoint {self.directory / str(step)} has no data iterator state; delete it or "
            "start a new --workdir")
      mine = iter_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
      if mine.is_file():
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
      else:
        # Saved with another number of processes: the model state carries over, but grain's
        # per-process positions do not map onto the new split, so the data order restarts.
        logging.warning("No data iterator state for %d processes in %s; the data order "
                        "restarts from the beginning.", jax.process_count(), iter_dir)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return step, restored["state"]

  def restore_newest_good(self, abstract_state, data_iter=None):
    """Restores the newest checkpoint that can be read, skipping damaged newer ones.

    A newer checkpoint that fails to restore (a file deleted or truncated by a crash or a full
    disk) is moved to `<workdir>/checkpoints_damaged/<step>` with a warning, once an older one
    has restored, so the resumed run writes that step again. When none restores (e.g. the model
    config changed since), nothing is moved and the error names the newest one's problem.

    Returns:
      (step, state).
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"No checkpoint to restore in {self.directory}")
    damaged = []
    for step in steps:
      try:
        restored = self.restore(abstract_state, data_iter, step=step)
      except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        logging.warning("Checkpoint %s cannot be restored (%s: %s); trying an older one.",
                        self.directory / str(step), type(e).__name__, first_line)
        damaged.append((step, f"{type(e).__name__}: {first_line}"))
        continue
      for bad, _ in damaged:
        self._set_aside(bad)
      if damaged and jax.process_count() > 1:
        # Every process must see the same steps before reloading, or they disagree about
        # which steps still need saving (and a collective save would hang).
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
        multihost_utils.sync_global_devices("vasa_jax_checkpoints_set_aside")
      if damaged:
        logging.warning("Resuming from step %d: the newer checkpoint(s) %s were damaged and are "
                        "kept in %s for inspection.", step, [b for b, _ in damaged],
                        self._damaged_dir())
        self._manager.reload()
      return restored
    raise CheckpointError(
        f"No checkpoint in {self.directory} can be restored (newest, step {steps[0]}: "
        f"{damaged[0][1]}). If the config changed since, train in a new --workdir; otherwise "
        "delete the damaged checkpoints/<step> directories.")

  def _damaged_dir(self) -> epath.Path:
    return self.directory.parent / (self.directory.name + "_damaged")

  def _set_aside(self, step: int) -> None:
    if jax.process_index() != 0:
      return
    dst = self._damaged_dir() / str(step)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
      dst.rmtree()
    (self.directory / str(step)).rename(dst)

  def restore_config(self, step: int | None = None) -> ml_collections.ConfigDict:
    step = self.latest_step() if step is None else step
    return params_io.read_run_config(self._manager, step)

  def reached_preemption(self, step: int) -> bool:
    """True when the cluster signalled a preemption (save now and exit)."""
    return self._manager.reached_preemption(step)

  def wait_until_finished(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def make_checkpointer(workdir: str | os.PathLike, config) -> Checkpointer:
  """The run's Checkpointer in `workdir/checkpoints` with `config.train.keep` / async settings."""
  return Checkpointer(checkpoint_dir(workdir), keep=config.train.get("keep", 3) or None,
                      async_save=bool(config.train.get("async_checkpoint", True)))


def abstract_target(abstract_state, shardings):
  """ShapeDtypeStructs carrying `shardings` (orbax restores each leaf straight onto them)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)
