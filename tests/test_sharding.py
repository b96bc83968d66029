"""Mesh from config, logical-rule shardings of the parameters, and global batches."""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import toy
from vasa_jax.train import loop
from vasa_jax.train import sharding as shd
from vasa_jax.train import toy_task


def _config(data=4, fsdp=2, tensor=1):
  cfg = toy.get_config()
  cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = data, fsdp, tensor
  return cfg


def test_make_mesh_from_config_has_auto_axes():
  mesh = shd.make_mesh(_config().mesh)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert mesh.size == 8


def test_mesh_shape_fills_minus_one_and_rejects_bad_shapes():
  assert dict(shd.make_mesh(_config(data=-1, fsdp=2).mesh).shape)["data"] == 4
  assert dict(shd.make_mesh(_config(data=2, fsdp=-1, tensor=2).mesh).shape)["fsdp"] == 2
  assert shd.make_mesh(_config(1, 1, 1).mesh).size == 1  # explicit small mesh: first device
  with pytest.raises(ValueError, match="not a multiple"):
    shd.make_mesh(_config(data=-1, fsdp=3).mesh)
  with pytest.raises(ValueError, match="At most one"):
    shd.make_mesh(_config(data=-1, fsdp=-1).mesh)
  with pytest.raises(ValueError, match="needs 16 devices"):
    shd.make_mesh(_config(data=8, fsdp=2).mesh)


def test_logical_rules_are_tuples():
  rules = shd.logical_rules(_config())
  assert ("batch", ("data", "fsdp")) in rules
  assert ("embed", "fsdp") in rules
  assert all(isinstance(r, tuple) and len(r) == 2 for r in rules)


def test_parameters_are_created_sharded_as_the_rules_say():
  cfg = _config()
  mesh, rules = shd.make_mesh(cfg.mesh), shd.logical_rules(cfg)
  task = toy_task.ToyTask(cfg)
  host = next(iter(task.make_dataset("train", 0, 1)))
  spec = shd.global_batch_spec(host, mesh)
  abstract, shardings = loop.abstract_state(task, spec, mesh, rules)
  state = loop.create_sharded_state(task, spec, mesh, rules, jax.random.PRNGKey(0), shardings)
  k1, k2 = state.params["fc1"]["kernel"], state.params["fc2"]["kernel"]
  # embed -> fsdp (2), mlp -> tensor (1).
  assert k1.sharding.spec == P("fsdp", "tensor") and k1.shape == (8, 32)
  assert {s.data.shape for s in k1.addressable_shards} == {(4, 32)}
  assert k2.sharding.spec == P("tensor", "fsdp")
  assert {s.data.shape for s in k2.addressable_shards} == {(32, 4)}
  # Adam moments follow their parameters; unnamed leaves (step, counts) are replicated.
  mu = state.opt_state[1][0].mu["fc1"]["kernel"]
  assert mu.sharding.spec == P("fsdp", "tensor")
  assert state.step.sharding.spec == P()
  assert abstract.params["fc1"]["kernel"].sharding == k1.sharding
  # No boxes left: train_step sees plain arrays.
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))


def test_to_global_batch_shapes_and_sharding():
  mesh = shd.make_mesh(_config().mesh)
  host = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3),
          "index": np.arange(16, dtype=np.int32)}
  batch = shd.to_global_batch(host, mesh)
  assert batch["x"].shape == (16, 3) and batch["index"].shape == (16,)
  assert batch["x"].sharding == shd.data_sharding(mesh)
  assert batch["x"].sharding.spec == P(("data", "fsdp"))
  assert {s.data.shape for s in batch["x"].addressable_shards} == {(2, 3)}
  np.testing.assert_array_equal(np.asarray(batch["x"]), host["x"])
  spec = shd.global_batch_spec(host, mesh)
  assert spec["x"].shape == (16, 3) and spec["x"].sharding == batch["x"].sharding


def test_a_dimension_the_mesh_does_not_divide_is_replicated():
  mesh = shd.make_mesh(_config(data=1, fsdp=8).mesh)
  # 320 rows over fsdp=256 is the v5e-256 case; here 12 over 8.
  assert shd.divisible_spec(P("fsdp", "tensor"), (12, 32), mesh) == P(None, "tensor")
  assert shd.divisible_spec(P("fsdp", "tensor"), (16, 32), mesh) == P("fsdp", "tensor")
  assert shd.divisible_spec(P(("data", "fsdp")), (4,), mesh) == P(None)
  assert shd.divisible_spec(P(), (3, 5), mesh) == P()
  # Through state_shardings: the kernel that divides stays split, the other is replicated.
  boxed = {k: nn.LogicallyPartitioned(jax.ShapeDtypeStruct((rows, 4), np.float32),
                                      ("embed", "mlp"))
           for k, rows in (("a", 16), ("b", 12))}
  got = shd.state_shardings(boxed, mesh, shd.logical_rules(_config()))
  assert got["a"].spec == P("fsdp", "tensor") and got["b"].spec == P(None, "tensor")
