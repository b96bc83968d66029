"""Orbax checkpoints (state + data iterator + config), load_params and the bf16 export."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from configs import toy
from vasa_jax.errors import CheckpointError
from vasa_jax.train import checkpoint as ckpt_lib
from vasa_jax.train import loop
from vasa_jax.train import sharding as shd
from vasa_jax.train import toy_task


@pytest.fixture(scope="module")
def toy_setup():
  """A sharded toy state with an EMA copy on a 4 x 2 mesh, and its abstract target."""
  cfg = toy.get_config("ema")
  cfg.mesh.shape.data, cfg.mesh.shape.fsdp = 4, 2
  mesh, rules = shd.make_mesh(cfg.mesh), shd.logical_rules(cfg)
  task = toy_task.ToyTask(cfg)
  ds = task.make_dataset("train", 0, 1)
  spec = shd.global_batch_spec(next(iter(ds)), mesh)
  abstract, shardings = loop.abstract_state(task, spec, mesh, rules)
  state = loop.create_sharded_state(task, spec, mesh, rules, jax.random.PRNGKey(0), shardings)
  # Make the EMA differ from the parameters so the tests can tell them apart.
  state = state.replace(ema_params=jax.tree.map(lambda x: x * 0.5 + 1.0, state.ema_params))
  return cfg, task, ds, state, abstract


def _assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_roundtrip_with_data_iterator(toy_setup, tmp_path):
  cfg, _, ds, state, abstract = toy_setup
  it = iter(ds)
  with ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=2) as ckpt:
    for step in (1, 2, 3):
      next(it)
      ckpt.save(step, state.replace(step=np.int32(step)), it, cfg)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 3]  # keep=2
    expected_next = next(it)["index"]
  with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
    it2 = iter(ds)
    step, restored = ckpt.restore(abstract, it2)
    assert step == 3 and int(restored.step) == 3
    # Optax namedtuples survive (restored onto the abstract target), shardings too.
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(state.opt_state)
    _assert_tree_equal(restored.params, state.params)
    _assert_tree_equal(restored.ema_params, state.ema_params)
    assert restored.params["fc1"]["kernel"].sharding == state.params["fc1"]["kernel"].sharding
    np.testing.assert_array_equal(next(it2)["index"], expected_next)  # same data position
    assert ckpt.restore_config().stage == "toy"


def test_load_params_missing_directory_names_it(tmp_path):
  missing = tmp_path / "no_such_run"
  with pytest.raises(CheckpointError, match="no_such_run") as e:
    ckpt_lib.load_params(missing)
  assert "--checkpoint" in str(e.value) and "vasa-jax train" in str(e.value)
  # A mistyped path is not a place to train into.
  assert f"--workdir {missing}" not in str(e.value)
  empty = tmp_path / "empty_run"
  (empty / "checkpoints").mkdir(parents=True)
  with pytest.raises(CheckpointError, match="empty_run"):
    ckpt_lib.load_params(empty)


def test_load_params_gives_unboxed_params_or_ema(toy_setup, tmp_path):
  cfg, _, ds, state, _ = toy_setup
  workdir = tmp_path / "run"
  with ckpt_lib.make_checkpointer(workdir, cfg) as ckpt:
    ckpt.save(7, state, iter(ds), cfg)
  config, ema = ckpt_lib.load_params(workdir)
  assert config.stage == "toy" and config.optim.ema_decay == cfg.optim.ema_decay
  _assert_tree_equal(ema, state.ema_params)
  _, params = ckpt_lib.load_params(workdir / "checkpoints", ema=False, step=7)
  _assert_tree_equal(params, state.params)
  _, params2 = ckpt_lib.load_params(workdir / "checkpoints" / "7", ema=False)
  _assert_tree_equal(params2, state.params)
  device = jax.local_devices()[0]
  assert all(x.devices() == {device} for x in jax.tree.leaves(params))
  with pytest.raises(CheckpointError, match="step 8"):
    ckpt_lib.load_params(workdir, step=8)


def test_export_roundtrip_bf16(toy_setup, tmp_path):
  cfg, _, _, state, _ = toy_setup
  out = ckpt_lib.export_params(state.params, cfg, tmp_path / "export")
  assert (out / "params.msgpack").stat().st_size < 552 * 4  # 552 params at 2 bytes (+ keys)
  config, params = ckpt_lib.load_exported(out)
  assert config.stage == "toy"
  assert jax.tree.structure(params) == jax.tree.structure(state.params)
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    assert x.dtype == np.float32
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-2, atol=1e-6)
  _, via_load = ckpt_lib.load_params(out)  # load_params recognises an export directory
  _assert_tree_equal(via_load, params)
  (out / "params.msgpack").unlink()
  with pytest.raises(CheckpointError, match="params.msgpack"):
    ckpt_lib.load_exported(out)
