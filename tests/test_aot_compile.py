"""Ahead-of-time lowering/compilation of the train steps for a data=4 x fsdp=2 mesh.

The 8 virtual CPU devices stand in for a pod slice: a sharding mistake (a logical name with no
rule, a constraint of the wrong rank, a dimension that does not divide over its mesh axes)
fails here, at trace/lower/compile time, without the hardware and without allocating the
state. Measured on the 2-core dev machine (shared, so +-2x):
  lower   motion base 2-4 s, latent base 9-14 s (fast tests)
  compile motion tiny 13-19 s (fast), motion base 22-70 s, latent base 4-6 min (slow tests;
          XLA:CPU plans ~28 GB of temp buffers per device for latent base at 2 examples/device,
          ~0.6 GB for motion base at 8).
"""
from __future__ import annotations

import json
import re
import time

import jax
import pytest

from vasa_jax import chips
from vasa_jax import cli
from vasa_jax import compile_check
from vasa_jax import config_utils
from vasa_jax import param_counts
from vasa_jax.facenets import store as facenets_store
from vasa_jax.train import loop
from vasa_jax.train import sharding as shd
from vasa_jax.train import tasks

MESH = ["mesh.shape.data=4", "mesh.shape.fsdp=2", "mesh.shape.tensor=1"]


def _config(spec: str, *overrides: str):
  config = config_utils.load_config(spec, [*MESH, "data.synthetic=True", *overrides])
  if config.stage == "latent" and not facenets_store.available():
    # The sharding and donation checked here do not depend on the frozen face networks'
    # losses; without `vasa-jax fetch-face-nets` the step is lowered without them.
    print(f"{spec}: face networks not fetched; face losses off for this lowering")
    for key in ("face_id", "face_perceptual", "face_landmark"):
      config.loss[key] = 0.0
    config.loss.foreground_mask = False
  return config


def _lower(config):
  """Lowers (traces + SPMD-annotates, no XLA compile) the loop's own jitted train step."""
  task = tasks.get_task(config)
  mesh = shd.make_mesh(config.mesh)
  low = loop.lower_train_step(config, mesh, compile_check.batch_shapes(config, task), task=task)
  return low.lowered, low.abstract, low.shardings, mesh, low.batch_spec


def _fsdp_share(abstract, shardings) -> float:
  """Share of parameter elements whose sharding splits them over the fsdp axis."""
  total = sharded = 0
  for a, s in zip(jax.tree.leaves(abstract.params), jax.tree.leaves(shardings.params)):
    total += a.size
    if "fsdp" in jax.tree.leaves(tuple(s.spec)):
      sharded += a.size
  return sharded / total


def _check_shardings(abstract, shardings, mesh):
  """Every parameter is sharded only over mesh axes, and evenly."""
  for a, s in zip(jax.tree.leaves(abstract.params), jax.tree.leaves(shardings.params)):
    assert s.mesh.shape == mesh.shape
    for dim, axes in zip(a.shape, tuple(s.spec) + (None,) * (len(a.shape) - len(s.spec))):
      names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
      ways = 1
      for name in names:
        ways *= mesh.shape[name]
      assert dim % ways == 0, (a.shape, s.spec)


@pytest.mark.parametrize("spec", ["configs/motion.py:base", "configs/latent.py:base"])
def test_base_train_step_lowers_for_a_data4_fsdp2_mesh(spec):
  t0 = time.perf_counter()
  config = _config(spec)
  lowered, abstract, shardings, mesh, batch_spec = _lower(config)
  seconds = time.perf_counter() - t0
  print(f"{spec}: lowered in {seconds:.1f} s")
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  _check_shardings(abstract, shardings, mesh)
  n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  assert n_params > 20_000_000  # paper scale (not a tiny variant by mistake)
  # Every batch leaf arrives split over data x fsdp (and nothing else is); the state is donated.
  text = lowered.as_text()
  signature = text[text.index("func.func public @main("):].split("\n", 1)[0]
  batch_split = re.findall(r'sdy.sharding<@mesh, \[\{"data", "fsdp"\}', signature)
  assert len(batch_split) == len(jax.tree.leaves(batch_spec)) >= 4
  (state_info, *_), _ = lowered.args_info
  assert all(a.donated for a in jax.tree.leaves(state_info))
  if config.stage == "motion":
    # The transformer's weights really are FSDP-sharded (not silently replicated).
    assert _fsdp_share(abstract, shardings) > 0.9
    assert abstract.params["dit"] is not None


def test_motion_tiny_train_step_compiles_for_a_data4_fsdp2_mesh():
  config = _config("configs/motion.py:tiny")
  task = tasks.get_task(config)
  mesh = shd.make_mesh(config.mesh)
  t0 = time.perf_counter()
  compiled = loop.compile_train_step(config, mesh, compile_check.batch_shapes(config, task),
                                       task=task)
  print(f"motion tiny: compiled in {time.perf_counter() - t0:.1f} s")
  assert isinstance(compiled, jax.stages.Compiled)
  state_shardings = compiled.input_shardings[0][0]
  specs = {str(s.spec) for s in jax.tree.leaves(state_shardings.params)}
  assert any("fsdp" in s for s in specs)
  assert compiled.memory_analysis().temp_size_in_bytes > 0


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["configs/motion.py:base", "configs/latent.py:base"])
def test_base_train_step_compiles_for_a_data4_fsdp2_mesh(spec):
  config = _config(spec)
  task = tasks.get_task(config)
  mesh = shd.make_mesh(config.mesh)
  t0 = time.perf_counter()
  compiled = loop.compile_train_step(config, mesh, compile_check.batch_shapes(config, task),
                                       task=task)
  seconds = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  print(f"{spec}: compiled in {seconds:.1f} s; per device: arguments "
        f"{memory.argument_size_in_bytes / 2**20:.0f} MiB, temp "
        f"{memory.temp_size_in_bytes / 2**20:.0f} MiB")
  # The state is donated: its buffers are reused for the new state (no second copy).
  assert memory.alias_size_in_bytes > 0.9 * memory.output_size_in_bytes
  assert compiled.cost_analysis() is not None


# ---------------------------------------------------------------------------------------------
# Parameter counts of the paper-size variant (shapes only, seconds).
# ---------------------------------------------------------------------------------------------
def test_large_variants_are_sized_like_vasa1(capsys):
  latent = param_counts.by_module(param_counts.count_params(
      config_utils.load_config("configs/latent.py:large")), 2)
  motion = param_counts.by_module(param_counts.count_params(
      config_utils.load_config("configs/motion.py:large")), 1)
  # VASA-1: a face latent model of about 200 M parameters and a 29 M parameter DiT.
  assert 180e6 < latent[("gen",)] < 220e6
  assert latent[("gen", "encoder")] > 30e6 and latent[("gen", "decoder")] > 120e6
  assert 26e6 < motion[("dit",)] < 32e6
  base = param_counts.by_module(param_counts.count_params(
      config_utils.load_config("configs/latent.py:base")), 1)
  assert 20e6 < base[("gen",)] < 35e6  # base is unchanged
  assert cli.main(["params", "--config", "configs/motion.py:large", "--depth", "1"]) == 0
  out = capsys.readouterr().out
  assert "| dit | 29," in out and "| total |" in out


# ---------------------------------------------------------------------------------------------
# TPU slices compiled on this CPU (libtpu describes the topology; nothing runs on a TPU).
# ---------------------------------------------------------------------------------------------
def _tpu(topology: str):
  pytest.importorskip("libtpu", reason="libtpu absent: pip install libtpu (the `tpu-aot` "
                      "extra; `make test` installs it)")
  devices = compile_check.topology_devices(topology)
  # Installing libtpu must not move the tests off the CPU backend (conftest: JAX_PLATFORMS=cpu).
  assert jax.devices()[0].platform == "cpu"
  return devices


def test_tiny_steps_compile_for_a_v5e_2x2_slice(capsys, tmp_path):
  devices = _tpu("v5e:2x2")
  assert len(devices) == 4 and devices[0].device_kind == "TPU v5 lite"
  # Stage 2's train step, compiled by XLA:TPU with the loop's own jit signature.
  assert cli.main(["compile-check", "--config", "configs/demo.py:tiny", "--topology", "v5e:2x2",
                   "--mesh", "2,2,1", "--stages", "motion", "--out",
                   str(tmp_path / "rows.json")]) == 0
  table = capsys.readouterr().out
  (row,) = [line for line in table.splitlines() if line.startswith("| train motion")]
  cells = [c.strip() for c in row.strip("|").split("|")]
  # step | mesh | batch | params | args | temp | peak | HBM | fits | TFLOP | compile s
  assert cells[1] == "(2, 2, 1)" and cells[2] == "8"
  assert cells[7] == "16.00" and cells[8] == "yes"  # v5e: 16 GiB of HBM per chip
  (saved,) = json.loads((tmp_path / "rows.json").read_text())
  assert saved["topology"] == "v5e:2x2" and saved["fits"] is True
  assert f"{saved['peak_bytes'] / 2**30:.2f}" == cells[6] and saved["flops"] > 0
  # Stage 1 and the inference step are lowered for the same slice (their XLA:TPU compiles
  # take minutes here: the slow test below).
  config = config_utils.load_config("configs/latent.py:tiny", [
      "mesh.shape.data=2", "mesh.shape.fsdp=2", "data.synthetic=True"])
  mesh = shd.make_mesh(config.mesh, devices=devices)
  low = loop.lower_train_step(config, mesh, compile_check.batch_shapes(config))
  assert {d.platform for d in mesh.devices.flat} == {"tpu"}
  (state_info, *_), _ = low.lowered.args_info
  assert all(a.donated for a in jax.tree.leaves(state_info))


def test_v4_slices_are_one_megacore_device_per_chip():
  # v4-32 is 16 chips (32 TensorCores): on Cloud TPU each chip is one JAX device with 32 GiB.
  devices = _tpu("v4-32")
  assert len(devices) == 16 and devices[0].device_kind == "TPU v4"
  assert len({tuple(d.coords) for d in devices}) == 16  # one device per chip coordinate
  assert {d.core_on_chip for d in devices} == {0}
  chip = chips.chip_of(devices[0].device_kind)
  assert chip.hbm_bytes == 32 * chips.GIB and chip.peak_flops == 275e12
  assert "16 x TPU v4 (v4, 32 GiB HBM each)" == compile_check.describe(devices)
  # The other generations keep their layout: v5p is megacore too, v5e has one core per chip.
  assert len(_tpu("v5p:2x2x1")) == 4 and len(_tpu("v5e:2x2")) == 4
  # A v4 train step is partitioned over the 4 chips of a v4-8 (tiny motion, lowered only).
  config = config_utils.load_config("configs/motion.py:tiny", [
      "mesh.shape.data=1", "mesh.shape.fsdp=-1", "data.synthetic=True"])
  mesh = shd.make_mesh(config.mesh, devices=_tpu("v4:2x2x1"))
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
  low = loop.lower_train_step(config, mesh, compile_check.batch_shapes(config))
  assert 'sdy.mesh @mesh = <["data"=1, "fsdp"=4' in low.lowered.as_text()


@pytest.mark.slow
def test_tiny_pipeline_compiles_for_a_v5e_2x2_slice():
  _tpu("v5e:2x2")
  rows = compile_check.run("configs/demo.py:tiny", topology="v5e:2x2", progress=False)
  assert [r.name.split()[0] for r in rows] == ["train", "train", "inference"]
  assert all(r.fits and r.flops for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["base", "large"])
def test_paper_size_pipeline_compiles_for_v5e_16_with_fsdp(variant):
  devices = _tpu("v5e-16")
  rows = compile_check.run(f"configs/demo.py:{variant}", topology="v5e-16", mesh=(1, -1, 1),
                           global_batch={"latent": 16, "motion": 64}, progress=False)
  for r in rows:
    print(r)
  latent, motion, _ = rows
  assert latent.mesh == {"data": 1, "fsdp": len(devices), "tensor": 1}
  assert motion.fits
  assert latent.fits is not None  # compiled, or refused with the bytes it needed


def test_an_out_of_memory_compile_is_a_row_that_does_not_fit():
  message = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
             "space hbm. Used 20.54G of 15.75G hbm. Exceeded hbm capacity by 4.79G.")
  assert compile_check.out_of_memory_bytes(message) == pytest.approx(20.54 * 2**30)
  assert compile_check.out_of_memory_bytes("INVALID_ARGUMENT: bad sharding") is None
  row = compile_check.Row(name="train latent", mesh={"data": 1, "fsdp": 16, "tensor": 1},
                          batch=16, params=1, argument_bytes=0, temp_bytes=0, output_bytes=0,
                          alias_bytes=0, flops=None, compile_s=1.0, hbm_bytes=16 * 2**30,
                          oom_bytes=20.54 * 2**30)
  assert row.fits is False and "| NO |" in compile_check.format_table([row])
