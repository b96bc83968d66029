"""Accelerator facts the compile check and the training benchmark compare against.

One row per device kind: HBM per JAX device and dense bf16 peak FLOP/s per JAX device (vendor
figures). v4 and v5p chips run in megacore mode, one JAX device per chip (two TensorCores
behind it), as on Cloud TPU; `compile_check.topology_devices` asks libtpu for that layout.
"""
from __future__ import annotations

from typing import NamedTuple

GIB = 2**30


class Chip(NamedTuple):
  name: str
  hbm_bytes: float  # per JAX device
  peak_flops: float  # dense bf16 FLOP/s per JAX device


# Matched in order against `device.device_kind` (first substring that matches wins).
CHIPS = (
    ("TPU v4", Chip("v4", 32 * GIB, 275e12)),
    ("TPU v5 lite", Chip("v5e", 16 * GIB, 197e12)),
    ("TPU v5p", Chip("v5p", 95 * GIB, 459e12)),
    ("TPU v5", Chip("v5p", 95 * GIB, 459e12)),
    ("TPU v6 lite", Chip("v6e", 32 * GIB, 918e12)),
    ("H200", Chip("H200", 141e9, 989e12)),
    ("H100", Chip("H100 SXM", 80e9, 989e12)),
    ("A100", Chip("A100", 80e9, 312e12)),
)


def chip_of(device_kind: str) -> Chip | None:
  """The CHIPS row of a device kind ("TPU v5 lite", "NVIDIA H100 80GB HBM3"), None if unknown
  (e.g. a CPU, which has no peak to compare against)."""
  for key, chip in CHIPS:
    if key.lower() in device_kind.lower():
      return chip
  return None


# Topology names for `jax.experimental.topologies.get_topology_desc` by Cloud TPU slice name.
# A v4/v5p slice is named after its TensorCores (two per chip): v4-32 is 16 chips, 2x2x4.
SLICES = {
    "v5e-16": "v5e:4x4",
    "v5e-256": "v5e:16x16",
    "v4-32": "v4:2x2x4",
    "v5p-128": "v5p:4x4x4",
}

# Generations whose chips are one megacore JAX device (libtpu's "megacore" chip config).
MEGACORE = ("v4", "v5p")


def is_megacore(topology: str) -> bool:
  """True for a v4 or v5p topology name ("v4:2x2x4"), whose chips run as one device each."""
  return topology.split(":", 1)[0].lower() in MEGACORE
