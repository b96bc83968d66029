"""`vasa-jax compile-check`: compiles both stages' train steps and the inference step for a TPU
slice (or any device list) on this machine, and says whether each fits the chip's memory.

As maxtext's train_compile: libtpu describes the slice (`topologies.get_topology_desc`), the
mesh is built over those devices, and the steps are lowered with the very jit signature
training uses (`loop.jit_train_step`) and compiled by XLA:TPU without a TPU. Nothing is
allocated; `memory_analysis()` gives the per-device bytes and `cost_analysis()` the FLOPs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax import chips
from vasa_jax.errors import VasaInputError
from vasa_jax.train import loop
from vasa_jax.train import sharding as shd
from vasa_jax.train import tasks

LATENT_KEYS = ("source", "driver", "other", "driver2")  # docs/design.md, stage 1 element


def topology_devices(topology: str) -> list:
  """The devices of a TPU slice described by libtpu, e.g. "v5e:16x16" or "v5e-256".

  Raises:
    VasaInputError: libtpu is missing or does not know the topology.
  """
  name = chips.SLICES.get(topology, topology)
  # Compiling needs no chip: let several processes (a test run beside a compile check) load
  # libtpu, which otherwise takes a machine-wide lock file.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  kwargs = {}
  if chips.is_megacore(name):
    # A v4 or v5p chip runs as one JAX device (megacore), as on a real slice; libtpu's default
    # chip config would show a v4 chip as two TensorCore devices (as maxtext's train_compile).
    kwargs["chip_config_name"] = "megacore"
  try:
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    return list(topologies.get_topology_desc(topology_name=name, platform="tpu",
                                             **kwargs).devices)
  except Exception as e:  # pylint: disable=broad-except
    raise VasaInputError(
        f"--topology {topology!r}: libtpu could not describe it ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}). Install libtpu (`pip install libtpu`, "
        f"or the `tpu-aot` extra) and name a slice like v5e:4x4, v4:2x2x4, v5p:4x4x4 or one of "
        f"{sorted(chips.SLICES)}") from e


def batch_shapes(config, task=None) -> dict:
  """GLOBAL batch shapes of `config`'s train step, as {key: (shape, dtype)}.

  Stage 1 uses the documented element spec (rendering synthetic 512x512 frames only to read
  their shapes costs seconds); stage 2 reads one synthetic batch (cheap).
  """
  batch = int(config.train.batch_size)
  if config.stage == "latent":
    r = int(config.model.resolution)
    return {k: ((batch, r, r, 3), jnp.uint8) for k in LATENT_KEYS}
  task = tasks.get_task(config) if task is None else task
  host = next(iter(task.make_dataset("train", 0, 1)))
  return {k: (v.shape, v.dtype) for k, v in host.items()}


@dataclasses.dataclass
class Row:
  """One compiled step: per-device memory, FLOPs per step and whether it fits."""
  name: str
  mesh: dict
  batch: int
  params: int
  argument_bytes: float
  temp_bytes: float
  output_bytes: float
  alias_bytes: float
  flops: float | None
  compile_s: float
  hbm_bytes: float | None
  oom_bytes: float | None = None  # what XLA:TPU needed when it refused to compile (out of HBM)

  @property
  def peak_bytes(self) -> float:
    if self.oom_bytes is not None:
      return self.oom_bytes
    # Donated outputs reuse their argument buffers; what is not aliased needs new memory.
    return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

  @property
  def fits(self) -> bool | None:
    return None if self.hbm_bytes is None else self.peak_bytes <= self.hbm_bytes


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def out_of_memory_bytes(message: str) -> float | None:
  """The bytes an XLA:TPU compile said it needed ("Ran out of memory in memory space hbm. Used
  20.54G of 15.75G hbm."), None for any other error."""
  m = re.search(r"Used ([0-9.]+)([KMGT]) of ([0-9.]+)([KMGT]) hbm", message)
  return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def _compile(lowered):
  """`lowered.compile()`, or the bytes it needed when it did not fit the chip's memory."""
  try:
    return lowered.compile(), None
  except Exception as e:  # pylint: disable=broad-except
    needed = out_of_memory_bytes(str(e))
    if needed is None:
      raise
    return None, needed


def _row(name, compiled, mesh, batch, params, seconds, devices, oom_bytes=None) -> Row:
  chip = chips.chip_of(devices[0].device_kind)
  if compiled is None:
    return Row(name=name, mesh=dict(mesh.shape), batch=batch, params=params, argument_bytes=0.0,
               temp_bytes=0.0, output_bytes=0.0, alias_bytes=0.0, flops=None, compile_s=seconds,
               hbm_bytes=None if chip is None else chip.hbm_bytes, oom_bytes=oom_bytes)
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return Row(name=name, mesh=dict(mesh.shape), batch=batch, params=params,
             argument_bytes=float(mem.argument_size_in_bytes),
             temp_bytes=float(mem.temp_size_in_bytes),
             output_bytes=float(mem.output_size_in_bytes),
             alias_bytes=float(mem.alias_size_in_bytes),
             flops=float(cost["flops"]) if cost and cost.get("flops") else None,
             compile_s=seconds, hbm_bytes=None if chip is None else chip.hbm_bytes)


def compile_stage(config, devices: Sequence, name: str | None = None) -> Row:
  """Compiles one stage's train step (`loop.lower_train_step`) over `devices`."""
  task = tasks.get_task(config)
  mesh = shd.make_mesh(config.mesh, devices=devices)
  _check_batch(config, mesh, config.stage)
  t0 = time.perf_counter()
  low = loop.lower_train_step(config, mesh, batch_shapes(config, task), task=task)
  compiled, needed = _compile(low.lowered)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(low.abstract.params))
  return _row(name or f"train {config.stage}", compiled, mesh, int(config.train.batch_size), n,
              time.perf_counter() - t0, devices, needed)


def _check_batch(config, mesh, what):
  div = shd.batch_divisor(mesh)
  if int(config.train.batch_size) % div:
    raise VasaInputError(
        f"{what}: global batch {config.train.batch_size} does not divide over the {div} data x "
        f"fsdp devices of mesh {dict(mesh.shape)}; pass --global-batch (a multiple of {div}) "
        "or another --mesh")


def inference_step(latent_config, motion_config, steps: int, dtype="bfloat16"):
  """One window of generation as a pure function: sampler (audio encoder + `steps` guided DiT
  calls in one scan) then the decoder rendering the window's frames, for B streams at once.

  Returns:
    (fn, example_args): fn(latent_params, motion_params, feats (B, W, 4, 80), carry, controls,
    rng, v_can, z_id) -> (carry, frames (B, W, R, R, 3) uint8); example_args as
    ShapeDtypeStructs for B = 1 (`batched_args` widens them).
  """
  # pylint: disable=import-outside-toplevel
  from vasa_jax.diffusion import sampler as sampler_lib
  from vasa_jax.diffusion import schedule as schedule_lib
  from vasa_jax.inference import pipeline as pipeline_lib
  from vasa_jax.models import motion_dit
  from vasa_jax.models.face_model import FaceModel

  dtype = jnp.dtype(dtype)
  face = FaceModel(latent_config.model, dtype=dtype)
  model = motion_dit.build_motion_model(motion_config, dtype=dtype)
  denoise_fn, encode_fn = motion_dit.make_apply_fns(model)
  d = motion_config.diffusion
  schedule = schedule_lib.make_schedule(d.schedule, d.train_steps)
  w, k = int(motion_config.model.window), int(motion_config.model.context)
  dm, e = int(motion_config.model.motion_dim), int(motion_config.model.emotion_dim)
  zp = int(latent_config.model.z_pose_dim)

  def fn(latent_params, motion_params, feats, carry, controls, rng, v_can, z_id):
    b = feats.shape[0]
    audio = encode_fn(motion_params, feats)  # (B, W, Da)
    carry, motion = sampler_lib.sample_window(
        denoise_fn, motion_params, carry, audio, controls, rng, schedule=schedule, steps=steps,
        sampler=d.sampler, cfg_audio=d.cfg_audio, cfg_gaze=d.cfg_gaze)  # motion (B, W, Dm)
    motion = motion.reshape(b * w, dm)
    v, zi = jax.tree.map(lambda x: jnp.repeat(x, w, axis=0), (v_can, z_id))
    img = face.apply({"params": latent_params}, v, zi, motion[:, :zp], motion[:, zp:],
                     method=FaceModel.render)  # (B*W, R, R, 3)
    frames = jnp.clip(jnp.round((img + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
    return carry, frames.reshape((b, w) + frames.shape[1:])

  latent_params, motion_params = jax.eval_shape(
      lambda: pipeline_lib.init_random_params(latent_config, motion_config))
  r = int(latent_config.model.resolution)

  def portrait(params, img):
    lat = face.apply({"params": params}, img, method=FaceModel.encode)
    v_can = face.apply({"params": params}, lat["v_app"], lat["z_id"], lat["z_pose"],
                       lat["z_dyn"], img, method=FaceModel.canonicalize)
    return v_can, lat["z_id"]

  v_can, z_id = jax.eval_shape(portrait, latent_params,
                               jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32))
  audio_dim = jax.eval_shape(encode_fn, motion_params,
                             jax.ShapeDtypeStruct((1, w, 4, 80), jnp.float32)).shape[-1]
  carry = jax.eval_shape(lambda: sampler_lib.initial_carry(1, k, dm, audio_dim))
  controls = jax.eval_shape(lambda: sampler_lib.make_controls(e, gaze=(0.0, 0.0)))
  args = (latent_params, motion_params, jax.ShapeDtypeStruct((1, w, 4, 80), jnp.float32),
          carry, controls, jax.eval_shape(lambda: jax.random.key(0)), v_can, z_id)
  return fn, args


def compile_inference(pipeline_config, devices: Sequence, streams: int | None = None) -> Row:
  """Compiles `inference_step` with one stream per device of a data-parallel mesh (parameters
  replicated: the ~230 M of `large` take under 1 GB in bf16 compute)."""
  latent_config, motion_config = pipeline_config.latent, pipeline_config.motion
  steps = int(pipeline_config.inference.steps)
  fn, args = inference_step(latent_config, motion_config, steps,
                            pipeline_config.inference.get("compute_dtype", "bfloat16"))
  mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))
  b = int(streams or len(devices))
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

  def widen(x, sharding, batched):
    shape = (b,) + tuple(x.shape[1:]) if batched else tuple(x.shape)
    return jax.ShapeDtypeStruct(shape, x.dtype, sharding=sharding)

  latent_params, motion_params, feats, carry, controls, rng, v_can, z_id = args
  specs = (jax.tree.map(lambda x: widen(x, repl, False), latent_params),
           jax.tree.map(lambda x: widen(x, repl, False), motion_params),
           widen(feats, split, True),
           jax.tree.map(lambda x: widen(x, split, True), carry),
           jax.tree.map(lambda x: widen(x, split, True), controls),
           widen(rng, repl, False), widen(v_can, split, True), widen(z_id, split, True))
  t0 = time.perf_counter()
  compiled, needed = _compile(jax.jit(
      fn, out_shardings=(jax.tree.map(lambda _: split, carry), split)).lower(*specs))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves((latent_params, motion_params)))
  return _row(f"inference ({steps} steps + render)", compiled, mesh, b, n,
              time.perf_counter() - t0, devices, needed)


def run(config_spec: str, overrides: Sequence[str] = (), *, topology: str | None = None,
        mesh: Sequence[int] | None = None, global_batch: dict | None = None,
        stages: Sequence[str] = ("latent", "motion", "inference"),
        progress: bool = True) -> list[Row]:
  """Compiles the steps of a pipeline config (`configs/demo.py:VARIANT`) for a topology.

  Args:
    config_spec: a `configs/demo.py` spec (its `latent`, `motion` and `inference` parts).
    overrides: `--config.latent.train.batch_size=...` style overrides.
    topology: TPU slice ("v5e:16x16", "v5e-256"); None = this machine's devices.
    mesh: (data, fsdp, tensor) for both stages' train steps (-1 = the rest); None = each
      stage's `config.mesh`.
    global_batch: {"latent": n, "motion": n} global train batches; missing = the config's.
    stages: which steps to compile.
    progress: print a line per compiled step.

  Returns:
    One Row per compiled step (`print_table` shows them).
  """
  from vasa_jax import config_utils  # pylint: disable=import-outside-toplevel
  config = config_utils.load_config(config_spec, overrides)
  if "latent" not in config or "motion" not in config:
    raise VasaInputError(f"--config {config_spec}: compile-check needs a pipeline config with "
                         "both stages, e.g. configs/demo.py:large")
  devices = topology_devices(topology) if topology else jax.devices()
  rows = []
  for stage in stages:
    t0 = time.perf_counter()
    if stage == "inference":
      rows.append(compile_inference(config, devices))
    else:
      sub = config[stage]
      with sub.unlocked():
        sub.data.synthetic = True  # shapes only: no data is read
        if mesh is not None:
          for axis, size in zip(shd.MESH_AXES, mesh):
            sub.mesh.shape[axis] = int(size)
        if global_batch and global_batch.get(stage):
          sub.train.batch_size = int(global_batch[stage])
      rows.append(compile_stage(sub, devices))
    if progress:
      print(f"compiled {rows[-1].name} in {time.perf_counter() - t0:.1f} s", flush=True)
  return rows


def _gib(x: float | None) -> str:
  return "-" if x is None else f"{x / chips.GIB:.2f}"


def format_table(rows: Sequence[Row], devices_label: str = "") -> str:
  head = ("| step | mesh (data, fsdp, tensor) | global batch | params (M) | args GiB/dev | "
          "temp GiB/dev | peak GiB/dev | HBM GiB/dev | fits | TFLOP/step/dev | compile s |")
  lines = [f"devices: {devices_label}" if devices_label else "", head,
           "|" + "---|" * 11]
  for r in rows:
    m = tuple(r.mesh.get(a, 1) for a in shd.MESH_AXES) if "fsdp" in r.mesh else (
        tuple(r.mesh.values()) + (1, 1))
    fits = "n/a" if r.fits is None else ("yes" if r.fits else "NO")
    flops = "-" if r.flops is None else f"{r.flops / 1e12:.3f}"
    lines.append(f"| {r.name} | {m} | {r.batch} | {r.params / 1e6:.1f} | "
                 f"{_gib(r.argument_bytes)} | {_gib(r.temp_bytes)} | {_gib(r.peak_bytes)} | "
                 f"{_gib(r.hbm_bytes)} | {fits} | {flops} | {r.compile_s:.1f} |")
  return "\n".join(line for line in lines if line)


def write_json(rows: Sequence[Row], path: str, **meta) -> None:
  """Writes the rows (with their peak bytes and fit, and `meta`: config, topology, overrides)
  as a JSON list, atomically, for docs tables assembled from several runs."""
  from vasa_jax import fileio  # pylint: disable=import-outside-toplevel
  data = [dict(meta, **dataclasses.asdict(r), peak_bytes=r.peak_bytes, fits=r.fits)
          for r in rows]
  fileio.atomic_write_text(path, json.dumps(data, indent=1))


def parse_mesh(text: str | None) -> tuple[int, int, int] | None:
  """"1,-1,1" -> (1, -1, 1) for (data, fsdp, tensor)."""
  if not text:
    return None
  try:
    values = tuple(int(v) for v in text.split(","))
  except ValueError:
    values = ()
  if len(values) != 3:
    raise VasaInputError(f"--mesh expects DATA,FSDP,TENSOR (e.g. 1,-1,1 for pure FSDP), got "
                         f"{text!r}")
  return values


def describe(devices: Sequence[Any]) -> str:
  chip = chips.chip_of(devices[0].device_kind)
  return (f"{len(devices)} x {devices[0].device_kind}"
          + (f" ({chip.name}, {chip.hbm_bytes / chips.GIB:.0f} GiB HBM each)" if chip else ""))
