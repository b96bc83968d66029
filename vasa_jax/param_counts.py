"""`vasa-jax params`: parameter counts per module of a config's model, from shapes alone.

The train state is traced with `jax.eval_shape` (`loop.abstract_state`): nothing is allocated,
so the 200 M parameter `large` variant counts in seconds on a laptop.
"""
from __future__ import annotations

import math

import jax

from vasa_jax import config_utils
from vasa_jax import compile_check
from vasa_jax.train import loop
from vasa_jax.train import sharding as shd
from vasa_jax.train import tasks


def count_params(config) -> dict[tuple[str, ...], int]:
  """{module path: parameters} for every leaf of `config`'s train state parameters.

  Args:
    config: a stage config (`configs/latent.py`, `configs/motion.py`).

  Returns:
    Leaf counts keyed by their path ("gen", "decoder", "g2d", ..., "kernel").
  """
  with config.unlocked():
    config.data.synthetic = True  # shapes only
  task = tasks.get_task(config)
  with config.unlocked():
    config.mesh.shape.data, config.mesh.shape.fsdp, config.mesh.shape.tensor = 1, 1, 1
  mesh = shd.make_mesh(config.mesh, devices=jax.devices()[:1])
  shapes = compile_check.batch_shapes(config, task)
  batch_spec = loop._batch_spec_from_shapes(shapes, mesh)  # pylint: disable=protected-access
  abstract, _ = loop.abstract_state(task, batch_spec, mesh, shd.logical_rules(config))
  flat = jax.tree_util.tree_flatten_with_path(abstract.params)[0]
  return {tuple(str(getattr(k, "key", k)) for k in path): math.prod(x.shape) for path, x in flat}


def by_module(counts: dict[tuple[str, ...], int], depth: int) -> dict[tuple[str, ...], int]:
  """Sums leaf counts per module path of at most `depth` names, in first-seen order."""
  out: dict[tuple[str, ...], int] = {}
  for path, n in counts.items():
    for d in range(1, min(depth, len(path) - 1) + 1):
      out[path[:d]] = out.get(path[:d], 0) + n
  return out


def format_table(counts: dict[tuple[str, ...], int], depth: int = 2) -> str:
  total = sum(counts.values())
  lines = ["| module | parameters | M |", "|---|---:|---:|"]
  for path, n in by_module(counts, depth).items():
    lines.append(f"| {'  ' * (len(path) - 1)}{'/'.join(path)} | {n:,} | {n / 1e6:.2f} |")
  lines.append(f"| total | {total:,} | {total / 1e6:.2f} |")
  return "\n".join(lines)


def run(config_spec: str, overrides=(), depth: int = 2) -> dict[tuple[str, ...], int]:
  config = config_utils.load_config(config_spec, overrides)
  counts = count_params(config)
  print(f"{config_spec} ({config.stage}):")
  print(format_table(counts, depth))
  return counts
