"""Orbax checkpoints of a run (train state + grain iterator + config), and parameter export.

Layout: `workdir/checkpoints/<step>/{state,data_iter,config}` written by one
`ocp.CheckpointManager` (async saves, `max_to_keep`, preemption checks), as in maxtext.
`load_params` gives inference the (unboxed) parameters of a run without any optimizer;
`export_params` / `load_exported` write and read a small self-describing bf16 export
(`params.msgpack` + `config.json` + `export.json`) used for the bundled demo checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
from typing import Any

import grain
import jax
from etils import epath
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from vasa_jax import config_utils
from vasa_jax.errors import CheckpointError

CHECKPOINT_SUBDIR = "checkpoints"
EXPORT_MARKER = "export.json"
EXPORT_PARAMS = "params.msgpack"
# `sha256sum` format ("<hex>  params.msgpack"), so `sha256sum -c params.sha256` checks it too.
EXPORT_CHECKSUM = "params.sha256"
EXPORT_VERSION = 1


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
    restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored["config"])

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


# ---------------------------------------------------------------------------------------------
# Inference: parameters only.
# ---------------------------------------------------------------------------------------------
def _missing(path: pathlib.Path, what: str) -> CheckpointError:
  return CheckpointError(
      f"{what} at {path}. Run `vasa-jax train --config ... --workdir {path}` first or pass "
      "--checkpoint pointing at a training workdir, its checkpoints/ directory or an export")


def _resolve(path: str | os.PathLike, step: int | None) -> tuple[pathlib.Path, int | None]:
  """workdir | workdir/checkpoints | workdir/checkpoints/<step> -> (checkpoints dir, step)."""
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    raise _missing(path, "No checkpoint directory")
  if (path / CHECKPOINT_SUBDIR).is_dir():
    return (path / CHECKPOINT_SUBDIR).absolute(), step
  if path.name.isdigit() and (path / "state").is_dir():
    return path.parent.absolute(), int(path.name) if step is None else step
  return path.absolute(), step


def load_params(path: str | os.PathLike, ema: bool = True, step: int | None = None):
  """The config and unboxed parameters of a run, restored onto the first local device.

  Only the parameters are read (no optimizer state is built or loaded).

  Args:
    path: a training workdir, its `checkpoints/` directory, one step directory inside it, or
      an `export_params` directory.
    ema: return the EMA parameters when the run kept them.
    step: the step to load (default: the latest).

  Returns:
    (config, params): an `ml_collections.ConfigDict` and a pytree of float jax arrays.
  """
  p = pathlib.Path(path).expanduser()
  if (p / EXPORT_MARKER).is_file():
    return load_exported(p)
  ckpt_dir, step = _resolve(p, step)
  try:
    manager = Checkpointer(ckpt_dir, read_only=True)
  except (FileNotFoundError, ValueError) as e:
    raise _missing(ckpt_dir, f"Cannot open checkpoints ({e})") from e
  with manager:
    steps = manager.all_steps()
    if not steps:
      raise _missing(ckpt_dir, "No checkpoint found")
    step = max(steps) if step is None else step
    if step not in steps:
      raise CheckpointError(f"No checkpoint for step {step} in {ckpt_dir}; available: {steps}")
    config = manager.restore_config(step) if (ckpt_dir / str(step) / "config").is_dir() else None
  # The state metadata gives the saved shapes; restore only one subtree (partial restore).
  state_dir = ckpt_dir / str(step) / "state"
  try:
    with ocp.PyTreeCheckpointer() as reader:
      meta = reader.metadata(state_dir).item_metadata.tree
      key = "ema_params" if ema and meta.get("ema_params") is not None else "params"
      sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = {key: jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), meta[key])}
      restored = reader.restore(state_dir, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    others = [s for s in steps if s != step]
    raise CheckpointError(
        f"Checkpoint {state_dir} cannot be read ({type(e).__name__}: {first_line}); it is "
        "damaged or incomplete. "
        + (f"Pass {ckpt_dir}/<step> for another step (available: {others})." if others
           else "Re-run the training.")) from None
  logging.info("Loaded %s of step %d from %s", key, step, ckpt_dir)
  return config, restored[key]


# ---------------------------------------------------------------------------------------------
# Export: a small self-describing parameter file (bundled demo checkpoint).
# ---------------------------------------------------------------------------------------------
def _atomic_write(path: pathlib.Path, data: bytes):
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(data)
  os.replace(tmp, path)


def export_params(params, config, out_dir: str | os.PathLike, dtype: str = "bfloat16"
                  ) -> pathlib.Path:
  """Writes `params.msgpack` (floats cast to `dtype`), `config.json` and `export.json`.

  Args:
    params: a pytree of arrays (boxed or not; gathered to the host).
    config: the run config.
    out_dir: output directory (created).
    dtype: storage dtype of floating-point leaves ("bfloat16" halves the size of float32).

  Returns:
    The output directory.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  params = nn.unbox(params)
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
  store = jnp.dtype(dtype)
  cast = jax.tree.map(
      lambda x: x.astype(store) if jnp.issubdtype(x.dtype, jnp.floating) else x, host)
  state_dict = serialization.to_state_dict(cast)
  data = serialization.msgpack_serialize(state_dict)
  _atomic_write(out / EXPORT_PARAMS, data)
  _atomic_write(out / EXPORT_CHECKSUM, checksum_line(data, EXPORT_PARAMS).encode())
  config_utils.save_config(config, out / "config.json")
  meta = {
      "format": "vasa-jax-params", "version": EXPORT_VERSION, "dtype": str(store),
      "stage": config.get("stage", None), "variant": config.get("variant", None),
      "num_params": int(sum(x.size for x in jax.tree.leaves(host))),
  }
  _atomic_write(out / EXPORT_MARKER, json.dumps(meta, indent=2).encode())
  return out


def checksum_line(data: bytes, name: str) -> str:
  """A `sha256sum` line for `data` stored as file `name`."""
  return f"{hashlib.sha256(data).hexdigest()}  {name}\n"


def verify_checksum(out: pathlib.Path, data: bytes) -> None:
  """Checks `params.msgpack`'s bytes against `params.sha256` written at export.

  Directories exported before checksums existed load with a warning (nothing to compare).
  """
  sums = out / EXPORT_CHECKSUM
  if not sums.is_file():
    logging.warning("%s has no %s: its weights cannot be verified. Re-export it to add one.",
                    out, EXPORT_CHECKSUM)
    return
  want = sums.read_text(errors="replace").split()[:1]
  got = hashlib.sha256(data).hexdigest()
  if want != [got]:
    raise CheckpointError(
        f"{out / EXPORT_PARAMS} is damaged: its sha256 {got[:12]}... does not match the "
        f"{want[0][:12] if want else 'empty'}... recorded in {sums} at export. Re-download or "
        "re-export the checkpoint.")


def load_exported(out_dir: str | os.PathLike):
  """Reads an `export_params` directory back: (config, float32 params on the first device).

  Raises:
    CheckpointError: a file is missing, `params.msgpack` does not match its checksum or does
      not parse, or `config.json` is not valid JSON.
  """
  out = pathlib.Path(out_dir)
  for name in (EXPORT_MARKER, EXPORT_PARAMS, "config.json"):
    if not (out / name).is_file():
      raise _missing(out, f"Exported checkpoint file {name} not found")
  try:
    config = config_utils.config_from_json((out / "config.json").read_text())
  except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{out / 'config.json'} is not a valid config ({e}). Re-export the "
                          "checkpoint.") from None
  data = (out / EXPORT_PARAMS).read_bytes()
  verify_checksum(out, data)
  try:
    raw = serialization.msgpack_restore(data)
  except Exception as e:  # pylint: disable=broad-except  # msgpack raises several kinds
    raise CheckpointError(f"{out / EXPORT_PARAMS} is truncated or corrupt ({type(e).__name__}). "
                          "Re-download or re-export the checkpoint.") from None
  if not isinstance(raw, dict) or not raw:
    raise CheckpointError(f"{out / EXPORT_PARAMS} holds no parameter tree. Re-download or "
                          "re-export the checkpoint.")
  device = jax.local_devices()[0]
  def to_device(x):
    x = np.asarray(x)
    # Stored in bf16 to stay small; computation expects float32 parameters.
    return jax.device_put(x.astype(np.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                          device)
  params = jax.tree.map(to_device, raw)
  return config, params


def param_count(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
