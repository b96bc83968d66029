"""Parameter I/O for inference: reading a run's parameters and the small exported format.

Inference, evaluation and motion extraction read parameters through this module, so they never
import the training package. The training-state checkpoints themselves are written by
`vasa_jax.train.checkpoint`; `load_params` reads only their parameter subtree.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from vasa_jax import config_utils
from vasa_jax.errors import CheckpointError
from vasa_jax.fileio import atomic_write_bytes

CHECKPOINT_SUBDIR = "checkpoints"
EXPORT_MARKER = "export.json"
EXPORT_PARAMS = "params.msgpack"
# `sha256sum` format ("<hex>  params.msgpack"), so `sha256sum -c params.sha256` checks it too.
EXPORT_CHECKSUM = "params.sha256"
EXPORT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Inference: parameters only.
# ---------------------------------------------------------------------------------------------
def _missing(path: pathlib.Path, what: str) -> CheckpointError:
  return CheckpointError(
      f"{what} at {path}. Check the checkpoint path (--checkpoint): pass a training workdir "
      "(the --workdir of `vasa-jax train`), its checkpoints/ directory, one step directory "
      "inside it, or a directory written by `vasa-jax export`")


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


def read_run_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
  """The run config saved with `step` (the `config` item of a training checkpoint)."""
  restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return ml_collections.ConfigDict(restored["config"])


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
    manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
        create=False, read_only=True))
  except (FileNotFoundError, ValueError) as e:
    raise _missing(ckpt_dir, f"Cannot open checkpoints ({e})") from e
  with manager:
    steps = list(manager.all_steps())
    if not steps:
      raise _missing(ckpt_dir, "No checkpoint found")
    step = max(steps) if step is None else step
    if step not in steps:
      raise CheckpointError(f"No checkpoint for step {step} in {ckpt_dir}; available: {steps}")
    config = (read_run_config(manager, step) if (ckpt_dir / str(step) / "config").is_dir()
              else None)
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
  params = nn.unbox(params)
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
  store = jnp.dtype(dtype)
  cast = jax.tree.map(
      lambda x: x.astype(store) if jnp.issubdtype(x.dtype, jnp.floating) else x, host)
  state_dict = serialization.to_state_dict(cast)
  data = serialization.msgpack_serialize(state_dict)
  atomic_write_bytes(out / EXPORT_PARAMS, data)
  atomic_write_bytes(out / EXPORT_CHECKSUM, checksum_line(data, EXPORT_PARAMS).encode())
  config_utils.save_config(config, out / "config.json")
  meta = {
      "format": "vasa-jax-params", "version": EXPORT_VERSION, "dtype": str(store),
      "stage": config.get("stage", None), "variant": config.get("variant", None),
      "num_params": int(sum(x.size for x in jax.tree.leaves(host))),
  }
  atomic_write_bytes(out / EXPORT_MARKER, json.dumps(meta, indent=2).encode())
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
