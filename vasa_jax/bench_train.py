"""`vasa-jax bench-train`: training throughput and MFU of both stages on this machine's devices.

Each row runs the loop's own compiled train step (`loop.jit_train_step`) on synthetic batches
with the real shapes: steps/s, examples/s, FLOPs per step and MFU = FLOPs x steps/s / (peak
FLOP/s x devices). FLOPs come from XLA:CPU's cost analysis of the same step (XLA:GPU's skips
the convolutions it hands to cuDNN, see `bench.flops_of`), so they are the same figure on every
device. Devices without a known peak (a CPU) print MFU as n/a.

Levers are swept within one run (`--sweep`), so on a shared machine their ratios hold even
when the absolute figures drift.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Sequence

import jax
import numpy as np

from vasa_jax import chips
from vasa_jax import config_utils
from vasa_jax.errors import VasaInputError
from vasa_jax.train import loop
from vasa_jax.train import sharding as shd
from vasa_jax.train import tasks


@dataclasses.dataclass
class Row:
  name: str
  stage: str
  batch: int
  dtype: str
  params: int
  compile_s: float
  steps_per_s: float
  examples_per_s: float
  flops: float | None  # per step, whole global batch
  mfu: float | None
  device: str


def stage_configs(spec: str, overrides: Sequence[str] = ()) -> list:
  """The stage configs of a spec: a stage config (`configs/latent.py:demo`) gives itself, a
  pipeline config (`configs/demo.py:base`) its `latent` and `motion` parts."""
  config = config_utils.load_config(spec, overrides)
  if "stage" in config:
    return [config]
  if "latent" in config and "motion" in config:
    return [config.latent, config.motion]
  raise VasaInputError(f"--config {spec}: neither a stage config (configs/latent.py, "
                       "configs/motion.py) nor a pipeline config (configs/demo.py)")


def apply_override(config, override: str) -> bool:
  """Applies `key.path=value` to a stage config; False when the config has no such key (e.g.
  model.remat_policy on stage 1), so a sweep row can skip that stage."""
  key, _, value = override.partition("=")
  node = config
  parts = key.split(".")
  for p in parts[:-1]:
    if p not in node:
      return False
    node = node[p]
  if parts[-1] not in node:
    return False
  with config.unlocked():
    node[parts[-1]] = config_utils._cast(value, node[parts[-1]])  # pylint: disable=protected-access
  return True


def model_flops(config, batch_shapes) -> float | None:
  """FLOPs of one train step over the global batch, from XLA:CPU's cost analysis."""
  cpu = jax.devices("cpu")[:1]
  with config.unlocked():
    saved = dict(config.mesh.shape)
    config.mesh.shape.data, config.mesh.shape.fsdp, config.mesh.shape.tensor = 1, 1, 1
  try:
    low = loop.lower_train_step(config, shd.make_mesh(config.mesh, devices=cpu), batch_shapes)
    cost = low.lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  finally:
    with config.unlocked():
      for k, v in saved.items():
        config.mesh.shape[k] = v
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and cost.get("flops") else None


def bench_stage(config, *, steps: int = 5, name: str = "") -> Row:
  """Times `steps` train steps of one stage config after one warm-up step."""
  with config.unlocked():
    config.data.synthetic = True
    config.data.synthetic_clips = max(int(config.data.synthetic_clips), 2)
  task = tasks.get_task(config)
  mesh = shd.make_mesh(config.mesh)
  rules = shd.logical_rules(config)
  host = next(iter(task.make_dataset("train", 0, 1)))
  batch = shd.to_global_batch(host, mesh)
  batch_spec = shd.global_batch_spec(host, mesh)
  abstract, shardings = loop.abstract_state(task, batch_spec, mesh, rules)
  state = loop.create_sharded_state(task, batch_spec, mesh, rules, jax.random.PRNGKey(0),
                                    shardings)
  jitted = loop.jit_train_step(task, shardings, mesh)
  t0 = time.perf_counter()
  with shd.mesh_context(mesh, rules):
    compiled = jitted.lower(*loop.train_step_args(abstract, batch_spec, mesh)).compile()
  compile_s = time.perf_counter() - t0
  rng = shd.replicate(np.asarray(jax.random.PRNGKey(1)), mesh)
  first_bad = shd.replicate(np.int32(-1), mesh)
  state, metrics, first_bad = compiled(state, batch, rng, first_bad)  # warm-up
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics, first_bad = compiled(state, batch, rng, first_bad)
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - t0
  n_batch = int(jax.tree.leaves(batch)[0].shape[0])
  flops = model_flops(config, {k: (v.shape, v.dtype) for k, v in batch_spec.items()})
  chip = chips.chip_of(mesh.devices.flat[0].device_kind)
  sps = steps / seconds
  mfu = None if chip is None or flops is None else flops * sps / (chip.peak_flops * mesh.size)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  return Row(name=name or f"{config.stage} {config.variant}", stage=config.stage,
             batch=n_batch, dtype=str(config.train.get("compute_dtype", "float32")),
             params=n_params, compile_s=compile_s, steps_per_s=sps,
             examples_per_s=sps * n_batch, flops=flops, mfu=mfu,
             device=f"{mesh.size} x {mesh.devices.flat[0].device_kind}")


def run(specs: Sequence[str], overrides: Sequence[str] = (), *, sweep: Sequence[str] = ("",),
        stages: Sequence[str] = ("latent", "motion"), batch: dict | None = None,
        steps: int = 5, out: str | None = None, progress: bool = True) -> list[Row]:
  """Benchmarks each stage of each spec under each sweep entry; prints the table.

  Args:
    specs: config specs (stage or pipeline configs).
    overrides: applied to every spec (`train.compute_dtype=bfloat16`, or prefixed
      `latent.` / `motion.` for a pipeline config).
    sweep: rows to compare within the run: "" (as configured) or comma-separated stage-relative
      overrides ("train.compute_dtype=bfloat16", "model.remat_policy=full"); a stage without
      the key is skipped for that entry.
    stages: which stages to run.
    batch: {"latent": n, "motion": n} global batch per stage (default: the config's).
    steps: timed steps per row (after one warm-up).
    out: optional JSON path for the rows.
  """
  rows = []
  for spec in specs:
    for entry in sweep:
      for config in stage_configs(spec, overrides):
        if config.stage not in stages:
          continue
        items = [o for o in entry.split(",") if o.strip()]
        if not all(apply_override(config, o) for o in items):
          continue
        if batch and batch.get(config.stage):
          with config.unlocked():
            config.train.batch_size = int(batch[config.stage])
        name = f"{config.stage} {config.variant}" + (f" [{entry}]" if entry else "")
        try:
          rows.append(bench_stage(config, steps=steps, name=name))
        except Exception as e:  # pylint: disable=broad-except
          # One lever out of memory must not lose the other rows of a sweep.
          print(f"{name}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                flush=True)
          continue
        if progress:
          r = rows[-1]
          print(f"{r.name}: {r.steps_per_s:.3f} steps/s (compiled in {r.compile_s:.1f} s)",
                flush=True)
  print(format_table(rows))
  if out:
    with open(out, "w") as f:
      json.dump([dataclasses.asdict(r) for r in rows], f, indent=1)
  return rows


def format_table(rows: Sequence[Row]) -> str:
  lines = [f"device: {rows[0].device}" if rows else "",
           "| run | batch | dtype | params (M) | steps/s | examples/s | GFLOP/step | "
           "achieved TFLOP/s | MFU |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    gflop = "-" if r.flops is None else f"{r.flops / 1e9:.1f}"
    achieved = "-" if r.flops is None else f"{r.flops * r.steps_per_s / 1e12:.3f}"
    mfu = "n/a" if r.mfu is None else f"{100 * r.mfu:.1f} %"
    lines.append(f"| {r.name} | {r.batch} | {r.dtype} | {r.params / 1e6:.1f} | "
                 f"{r.steps_per_s:.3f} | {r.examples_per_s:.2f} | {gflop} | {achieved} | {mfu} |")
  return "\n".join(line for line in lines if line)
