"""MotionDiT: shapes, condition masking, scan/remat equivalence, sharded init, size."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import motion as motion_config
from configs.common import LOGICAL_AXIS_RULES
from vasa_jax.models.motion_dit import MotionDiT, build_motion_model, stack_layer_params

B, W, K, DM, DA, E = 2, 6, 3, 5, 7, 4


def _inputs(seed=0):
  ks = jax.random.split(jax.random.key(seed), 8)
  cond = {"audio": jax.random.normal(ks[0], (B, W, DA)),
          "motion_prev": jax.random.normal(ks[1], (B, K, DM)),
          "audio_prev": jax.random.normal(ks[2], (B, K, DA)),
          "gaze": jax.random.normal(ks[3], (B, 2)), "distance": jax.random.normal(ks[4], (B, 1)),
          "emotion": jax.random.normal(ks[5], (B, E)),
          "has_audio": jnp.ones((B,), bool), "has_prev": jnp.ones((B,), bool),
          "has_gaze": jnp.ones((B,), bool), "has_distance": jnp.ones((B,), bool),
          "has_emotion": jnp.ones((B,), bool)}
  return jax.random.normal(ks[6], (B, W, DM)), jnp.array([10, 900]), cond


def _dit(**kw):
  return MotionDiT(motion_dim=DM, layers=2, width=32, heads=4, **kw)


@pytest.fixture(scope="module")
def dit():
  model = _dit()
  x, t, cond = _inputs()
  variables = jax.jit(model.init)(jax.random.key(1), x, t, cond)
  return model, nn.unbox(variables)["params"], variables


def test_output_shape_and_names(dit):
  model, params, variables = dit
  x, t, cond = _inputs()
  out = jax.jit(model.apply)({"params": params}, x, t, cond)
  assert out.shape == (B, W, DM) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  known = {name for name, _ in LOGICAL_AXIS_RULES}
  leaves = jax.tree.leaves(variables, is_leaf=lambda v: isinstance(v, nn.Partitioned))
  assert all(isinstance(v, nn.Partitioned) and set(v.names) <= known for v in leaves)


def test_dropped_conditions_are_ignored_and_kept_ones_matter(dit):
  model, params, _ = dit
  apply = jax.jit(model.apply)
  x, t, cond = _inputs()
  _, _, other = _inputs(seed=5)
  base = apply({"params": params}, x, t, cond)
  cases = [("has_audio", ["audio"]), ("has_gaze", ["gaze"]), ("has_distance", ["distance"]),
           ("has_emotion", ["emotion"]), ("has_prev", ["motion_prev", "audio_prev"])]
  for mask, keys in cases:
    swapped = dict(cond, **{k: other[k] for k in keys})
    assert not np.allclose(apply({"params": params}, x, t, swapped), base, atol=1e-6), mask
    off = dict(cond, **{mask: jnp.zeros((B,), bool)})
    np.testing.assert_allclose(apply({"params": params}, x, t, dict(off, **{
        k: other[k] for k in keys})), apply({"params": params}, x, t, off), atol=1e-6)
  # Per-frame audio masks (short final windows): only the masked frames' audio is ignored.
  frame_mask = jnp.ones((B, W), bool).at[:, -2:].set(False)
  a = dict(cond, has_audio=frame_mask)
  b = dict(a, audio=cond["audio"].at[:, -2:].set(99.0))
  np.testing.assert_allclose(apply({"params": params}, x, t, a), apply({"params": params}, x, t, b),
                             atol=1e-6)


def test_scan_and_remat_give_the_same_output(dit):
  _, params, _ = dit
  x, t, cond = _inputs()
  ref = jax.jit(_dit().apply)({"params": params}, x, t, cond)
  scanned = stack_layer_params(params, 2)
  for kw, p in [(dict(scan_layers=True), scanned), (dict(remat_policy="full"), params)]:
    out = jax.jit(_dit(**kw).apply)({"params": p}, x, t, cond)
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.slow
def test_remat_gradients_match(dit):
  _, params, _ = dit
  x, t, cond = _inputs()
  scanned = stack_layer_params(params, 2)

  def grads(model, p):
    return jax.jit(jax.grad(lambda q: model.apply({"params": q}, x, t, cond).sum()))(p)

  ref = stack_layer_params(grads(_dit(), params), 2)
  for policy in ("full", "dots"):
    got = grads(_dit(scan_layers=True, remat_policy=policy), scanned)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), got, ref)


@pytest.mark.filterwarnings("ignore:.*context manager has been deprecated")
def test_sharded_init_on_a_2x2x2_mesh():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2),
                           ("data", "fsdp", "tensor"))
  model = _dit(scan_layers=True)
  x, t, cond = _inputs()
  rules = tuple(LOGICAL_AXIS_RULES)
  # linen's logical constraints read the legacy mesh context (jax.set_mesh is not enough yet).
  with mesh, nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(model.init, jax.random.key(0), x, t, cond)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
    variables = jax.jit(model.init, out_shardings=shardings)(jax.random.key(0), x, t, cond)
    out = jax.jit(model.apply)(variables, x, t, cond)
  q = variables["params"]["layers"]["attn"]["query"]["kernel"]
  assert q.names == ("depth", "embed", "heads", "kv")
  assert q.value.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  assert out.shape == (B, W, DM)


def test_base_parameter_count():
  c = motion_config.get_config("base")
  model = build_motion_model(c)
  m = c.model
  cond = {"audio": jnp.zeros((1, m.window, 4, 80)), "audio_prev": jnp.zeros((1, m.context, 4, 80)),
          "motion_prev": jnp.zeros((1, m.context, m.motion_dim)), "gaze": jnp.zeros((1, 2)),
          "distance": jnp.zeros((1, 1)), "emotion": jnp.zeros((1, m.emotion_dim))}
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, m.window, m.motion_dim)),
                          jnp.zeros((1,), jnp.int32), cond)["params"]
  count = lambda tree: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))  # noqa: E731
  n_dit, n_audio = count(shapes["dit"]), count(shapes["audio_encoder"])
  print(f"base MotionDiT {n_dit / 1e6:.2f}M parameters, mel audio encoder {n_audio / 1e6:.2f}M")
  assert 20e6 < n_dit < 35e6  # VASA-1: 8 layers, width 512 -> about 29M
