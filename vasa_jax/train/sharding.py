"""Device mesh, logical-axis rules and the shardings of the train state and the batch.

Parameters carry logical axis names (`nn.with_logical_partitioning`); `config.mesh` maps those
names onto the mesh axes ("data", "fsdp", "tensor"). Everything here is a small pure function so
the loop, the AOT-compile path and the tests share it.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Sequence

import flax.linen as nn
from jax.experimental import multihost_utils
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension is split over every data-parallel axis (plain data parallel and FSDP).
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves `mesh_cfg.shape` (one entry may be -1) to a concrete shape.

  Args:
    mesh_cfg: `config.mesh` with `shape.data`, `shape.fsdp`, `shape.tensor`.
    num_devices: devices the mesh must cover exactly.

  Returns:
    (data, fsdp, tensor); its product is `num_devices` when an axis is -1, otherwise it may
    be smaller (an explicit small mesh, e.g. one device for debugging).
  """
  shape = [int(mesh_cfg.shape[name]) for name in MESH_AXES]
  free = [i for i, s in enumerate(shape) if s == -1]
  if len(free) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"Mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
  fixed = math.prod(s for s in shape if s != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(
          f"Cannot fill mesh {dict(zip(MESH_AXES, shape))} with {num_devices} devices: "
          f"{num_devices} is not a multiple of {fixed}. Fix --config.mesh.shape.*")
    shape[free[0]] = num_devices // fixed
  if math.prod(shape) > num_devices:
    raise ValueError(
        f"Mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but "
        f"{num_devices} are available. Fix --config.mesh.shape.* (use -1 for the rest)")
  return tuple(shape)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ("data", "fsdp", "tensor") mesh with Auto axes.

  Auto (not the jax default Explicit) axis types, because linen's logical sharding
  constraints fail under Explicit axes.

  Args:
    mesh_cfg: `config.mesh`.
    devices: devices to use (default: all global devices).

  Returns:
    A `jax.sharding.Mesh`.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  if math.prod(shape) < len(devices):
    logging.warning("Mesh %s uses %d of %d devices (set an axis to -1 to use all)",
                    dict(zip(MESH_AXES, shape)), math.prod(shape), len(devices))
    devices = devices[:math.prod(shape)]
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def logical_rules(config) -> tuple[tuple[str, Any], ...]:
  """`config.mesh.logical_axis_rules` (lists from JSON/ConfigDict) as flax's tuple rules."""
  rules = []
  for name, target in config.mesh.logical_axis_rules:
    if isinstance(target, list):
      target = tuple(target)
    rules.append((name, target))
  return tuple(rules)


def state_shardings(abstract_state, mesh: Mesh, rules) -> Any:
  """NamedShardings for a (boxed) abstract state; leaves without logical names are replicated.

  Args:
    abstract_state: output of `jax.eval_shape(task.init, ...)`, parameters boxed in
      `nn.Partitioned` / `nn.LogicallyPartitioned`.
    mesh: the device mesh.
    rules: logical -> mesh axis rules (`logical_rules(config)`).

  Returns:
    A pytree shaped like `nn.unbox(abstract_state)` with a `NamedSharding` per leaf. A
    dimension the rules' mesh axes do not divide is replicated (`divisible_spec`).
  """
  specs = nn.get_partition_spec(abstract_state)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  return jax.tree.map(lambda sh, x: NamedSharding(mesh, divisible_spec(sh.spec, x.shape, mesh)),
                      shardings, nn.unbox(abstract_state))


def divisible_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """`spec` with the mesh axes dropped from each dimension they do not divide.

  A 320-row kernel cannot be split 256 ways (pure FSDP on a v5e-256): that dimension is
  replicated instead of the step failing to compile. The memory it costs shows in
  `vasa-jax compile-check`.
  """
  out = []
  for size, axes in zip(shape, spec):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    out.append(axes if size % math.prod(mesh.shape[a] for a in names) == 0 else None)
  return P(*out)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over ("data", "fsdp"); the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_divisor(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def to_global_batch(host_batch, mesh: Mesh):
  """Per-process numpy batches -> global jax arrays sharded over the batch axes.

  Each process passes its own slice (the global batch is the concatenation over processes,
  in process order).

  Args:
    host_batch: pytree of numpy arrays with a leading host-local batch dimension.
    mesh: the device mesh.

  Returns:
    The same pytree of global `jax.Array`s with `data_sharding(mesh)`.
  """
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch)


def global_batch_spec(host_batch, mesh: Mesh):
  """ShapeDtypeStructs (with shardings) of the global batch made from `host_batch`."""
  sharding = data_sharding(mesh)
  n = jax.process_count()
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((x.shape[0] * n,) + tuple(x.shape[1:]), x.dtype,
                                     sharding=sharding), host_batch)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
  """Makes `mesh` the current mesh and `rules` the logical axis rules (for linen constraints)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def replicate(value, mesh: Mesh) -> jax.Array:
  """A host value (identical on every process) as a fully replicated global array."""
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, replicated(mesh), lambda idx: value[idx])


def to_host(x) -> np.ndarray:
  """An array (possibly sharded over several processes) -> numpy on this host."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
