"""Accelerator facts the compile check and the training benchmark compare against.

One row per device kind: HBM per JAX device and dense bf16 peak FLOP/s per JAX device (vendor
figures). A v4 chip shows up as two JAX devices (one per TensorCore) in the topologies that
libtpu describes here, so its row is half a chip; v5p's megacore is one device per chip.
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
    ("TPU v4", Chip("v4 (one TensorCore)", 16 * GIB, 275e12 / 2)),
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
SLICES = {
    "v5e-16": "v5e:4x4",
    "v5e-256": "v5e:16x16",
    "v4-32": "v4:2x2x4",
    "v5p-128": "v5p:4x4x4",
}
