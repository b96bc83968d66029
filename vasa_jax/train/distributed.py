"""The one place that calls `jax.distributed.initialize()` (multi-host runs).

Every host runs the same command (maxtext style). The call must come before any other jax
call touches the backend, so the entry point (`loop.train`, or a CLI) calls
`maybe_initialize(config)` first thing; config parsing never does.
"""
from __future__ import annotations

import logging
import os

import jax

ENV_VAR = "VASA_DISTRIBUTED"


def wanted(config=None) -> bool:
  """True when `config.train.distributed` is set or the environment has VASA_DISTRIBUTED=1."""
  if os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes"):
    return True
  if config is None:
    return False
  train = config.get("train", None) if hasattr(config, "get") else None
  return bool(train is not None and train.get("distributed", False))


def maybe_initialize(config=None) -> bool:
  """Initializes the multi-host runtime when asked; idempotent.

  `jax.distributed.initialize()` reads the coordinator address, process count and id from the
  cluster environment (TPU pods, SLURM, Open MPI, or JAX_COORDINATOR_ADDRESS etc.).

  Args:
    config: the run config (reads `config.train.distributed`), or None.

  Returns:
    True when the distributed runtime is (now) initialized, False for a single-process run.
  """
  if not wanted(config):
    return False
  if jax.distributed.is_initialized():
    return True
  jax.distributed.initialize(**_explicit_cluster_args())
  logging.info("jax.distributed initialized: process %d of %d, %d global devices",
               jax.process_index(), jax.process_count(), jax.device_count())
  return True


def _explicit_cluster_args() -> dict:
  """Coordinator/process settings from VASA_* variables (plain ssh launches); empty otherwise,
  so jax's own cluster detection (TPU pods, SLURM, Open MPI) applies."""
  kw = {}
  if os.environ.get("VASA_COORDINATOR"):
    kw["coordinator_address"] = os.environ["VASA_COORDINATOR"]
  if os.environ.get("VASA_NUM_PROCESSES"):
    kw["num_processes"] = int(os.environ["VASA_NUM_PROCESSES"])
  if os.environ.get("VASA_PROCESS_ID"):
    kw["process_id"] = int(os.environ["VASA_PROCESS_ID"])
  return kw

