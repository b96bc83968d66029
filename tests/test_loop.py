"""The training loop on the toy task: learning, resume, one compile, mesh equivalence, NaN."""
from __future__ import annotations

import itertools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import toy
from vasa_jax.train import checkpoint as ckpt_lib
from vasa_jax.train import distributed
from vasa_jax.train import loop
from vasa_jax.train import optim
from vasa_jax.train import sharding as shd
from vasa_jax.train import toy_task

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def _config(data=4, fsdp=2, arg=None, **train):
  cfg = toy.get_config(arg)
  cfg.mesh.shape.data, cfg.mesh.shape.fsdp = data, fsdp
  cfg.train.update({**dict(num_steps=10, ckpt_every=5, log_every=1, sample_every=5), **train})
  return cfg


class Probe:
  """Records the batches the loop feeds to the step, step traces and backend compiles."""

  def __init__(self, mp):
    self.batches, self.traces, self.compiles_at = [], 0, []
    to_global = shd.to_global_batch

    def record_batch(host_batch, mesh):
      self.batches.append(np.array(host_batch["index"]))
      return to_global(host_batch, mesh)

    train_step = toy_task.ToyTask.train_step

    def count_traces(task, state, batch, rng):
      self.traces += 1
      return train_step(task, state, batch, rng)

    mp.setattr(loop.shd, "to_global_batch", record_batch)
    mp.setattr(toy_task.ToyTask, "train_step", count_traces)

  def on_event(self, event, duration, **kwargs):
    if event == BACKEND_COMPILE:
      self.compiles_at.append(len(self.batches))


def _run(cfg, workdir, **kw):
  with pytest.MonkeyPatch.context() as mp:
    probe = Probe(mp)
    jax.monitoring.register_event_duration_secs_listener(probe.on_event)
    try:
      result = loop.train(cfg, workdir, progress=False, **kw)
    finally:
      jax.monitoring.unregister_event_duration_listener(probe.on_event)
  return result, probe


def _params(workdir):
  return ckpt_lib.load_params(workdir, ema=False)[1]


def _assert_trees_close(a, b, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  """10 uninterrupted steps on a data=4 x fsdp=2 mesh, checkpoints every 5."""
  workdir = tmp_path_factory.mktemp("full")
  result, probe = _run(_config(), workdir)
  return workdir, result, probe


def test_loop_lowers_loss_and_writes_outputs(full_run):
  workdir, result, _ = full_run
  assert result["step"] == 10 and result["compile_s"] > 0
  log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log] == list(range(1, 11))
  losses = [r["loss"] for r in log]
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.8 * losses[0], losses
  assert result["loss"] == pytest.approx(losses[-1])
  assert ckpt_lib.Checkpointer(workdir / "checkpoints", read_only=True).all_steps() == [5, 10]
  assert json.loads((workdir / "config.json").read_text())["stage"] == "toy"
  assert list((workdir / "tb").glob("events.out.tfevents.*"))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for step in (5, 10):
    img = np.asarray(Image.open(workdir / "samples" / f"step_{step:06d}.png"))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3


def test_train_step_is_traced_once_and_nothing_recompiles(full_run):
  _, _, probe = full_run
  assert probe.traces == 1  # compiled ahead of time, before the first batch
  assert len(probe.batches) == 10
  # Steady state: after the first sample grid (step 5) no step compiles anything new.
  assert all(n <= 5 for n in probe.compiles_at), probe.compiles_at


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
  """The same run stopped after 6 steps (checkpoints at 5 and at the stop)."""
  workdir = tmp_path_factory.mktemp("stopped")
  result, probe = _run(_config(), workdir, max_steps=6)
  return workdir, result, probe


def _copy_run(src, dst):
  shutil.copytree(src, dst)
  return dst


def test_stop_and_resume_matches_uninterrupted_run(full_run, stopped_run, tmp_path):
  ref_dir, ref_result, ref_probe = full_run
  stopped_dir, first, probe1 = stopped_run
  assert first["step"] == 6
  assert ckpt_lib.Checkpointer(stopped_dir / "checkpoints", read_only=True).all_steps() == [5, 6]
  workdir = _copy_run(stopped_dir, tmp_path / "run")
  second, probe2 = _run(_config(), workdir)
  assert second["step"] == 10
  seen = probe1.batches + probe2.batches  # the same batches in the same order
  assert len(seen) == 10
  for a, b in zip(seen, ref_probe.batches):
    np.testing.assert_array_equal(a, b)
  _assert_trees_close(_params(workdir), _params(ref_dir), rtol=1e-6, atol=1e-7)
  assert second["loss"] == pytest.approx(ref_result["loss"], rel=1e-6)


def test_resume_from_periodic_checkpoint_after_a_crash(full_run, stopped_run, tmp_path):
  ref_dir, _, ref_probe = full_run
  crashed = _copy_run(stopped_run[0], tmp_path / "crashed")
  shutil.rmtree(crashed / "checkpoints" / "6")  # as if killed at step 6 before saving
  result, probe = _run(_config(), crashed)
  assert result["step"] == 10 and len(probe.batches) == 5
  for a, b in zip(probe.batches, ref_probe.batches[5:]):
    np.testing.assert_array_equal(a, b)
  _assert_trees_close(_params(crashed), _params(ref_dir), rtol=1e-6, atol=1e-7)


def test_time_limit_checkpoints_the_step_reached_and_resume_finishes(full_run, tmp_path,
                                                                      monkeypatch):
  ref_dir, _, ref_probe = full_run
  clock = itertools.count()  # one second per reading of the clock
  monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))
  result, probe = _run(_config(time_limit_s=2.5), tmp_path / "run")
  monkeypatch.undo()
  stopped = result["step"]
  assert 1 <= stopped < 10 and len(probe.batches) == stopped
  steps = ckpt_lib.Checkpointer(tmp_path / "run" / "checkpoints", read_only=True).all_steps()
  assert steps[-1] == stopped  # the step reached was saved, not only the periodic ones
  result, probe = _run(_config(), tmp_path / "run")  # no budget: resumes and finishes
  assert result["step"] == 10 and len(probe.batches) == 10 - stopped
  _assert_trees_close(_params(tmp_path / "run"), _params(ref_dir), rtol=1e-6, atol=1e-7)


def test_data_fsdp_mesh_matches_one_device(full_run, tmp_path):
  ref_dir, ref_result, _ = full_run
  result, _ = _run(_config(data=1, fsdp=1), tmp_path / "one")
  assert result["loss"] == pytest.approx(ref_result["loss"], rel=1e-4)
  _assert_trees_close(_params(tmp_path / "one"), _params(ref_dir), rtol=1e-4, atol=1e-5)


def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path):
  cfg = _config(arg="ema", log_every=5, sample_every=0)  # also runs the loop with an EMA
  cfg.loss.nan_at_step = 7
  with pytest.raises(loop.NonFiniteLossError, match="step 7") as e:
    loop.train(cfg, tmp_path, progress=False)
  assert "step 5" in str(e.value)
  assert ckpt_lib.Checkpointer(tmp_path / "checkpoints", read_only=True).all_steps() == [5]
  for ema in (False, True):
    params = ckpt_lib.load_params(tmp_path, ema=ema)[1]
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_compile_train_step_ahead_of_time_for_a_mesh():
  cfg = _config()
  mesh = shd.make_mesh(cfg.mesh)
  shapes = {"x": ((16, 8), jnp.float32), "y": ((16, 8), jnp.float32),
            "index": ((16,), jnp.int32)}
  compiled = loop.compile_train_step(cfg, mesh, shapes)
  assert isinstance(compiled, jax.stages.Compiled)
  state_shardings = compiled.input_shardings[0][0]
  assert state_shardings.params["fc1"]["kernel"].spec == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
  # The state (toy MLP parameters and Adam moments) is an argument of the compiled step.
  assert compiled.memory_analysis().argument_size_in_bytes > 0


def test_optimizer_schedule_and_ema():
  cfg = toy.get_config()
  schedule = optim.make_schedule(cfg.optim, num_steps=100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(cfg.optim.warmup_steps)) == pytest.approx(cfg.optim.lr)
  assert float(schedule(100)) == pytest.approx(cfg.optim.min_lr)
  ema = optim.ema_update({"w": jnp.zeros(3)}, {"w": jnp.ones(3)}, 0.9)
  np.testing.assert_allclose(np.asarray(ema["w"]), 0.1, rtol=1e-6)
  assert optim.ema_update(None, {"w": jnp.ones(3)}, 0.9) is None


def test_distributed_init_is_opt_in(monkeypatch):
  monkeypatch.delenv(distributed.ENV_VAR, raising=False)
  cfg = toy.get_config()
  assert not distributed.wanted(cfg) and not distributed.maybe_initialize(cfg)
  cfg.train.distributed = True
  assert distributed.wanted(cfg)
  monkeypatch.setenv(distributed.ENV_VAR, "1")
  assert distributed.wanted(toy.get_config()) and distributed.wanted(None)


def test_init_from_another_run_and_frozen_layers(full_run, tmp_path):
  source, _, _ = full_run
  start = _params(source)
  cfg = _config(num_steps=5, log_every=1, init_from=str(source))
  cfg.optim.freeze = "fc1"  # as `--config.optim.freeze=fc1` gives it
  result, _ = _run(cfg, tmp_path / "warm")
  assert result["step"] == 5  # a fresh run: step, optimizer and schedule start over
  got = _params(tmp_path / "warm")
  _assert_trees_close(got["fc1"], start["fc1"], rtol=0, atol=0)  # frozen: bit for bit
  assert not np.allclose(got["fc2"]["kernel"], start["fc2"]["kernel"])  # trained on
  fresh, _ = _run(_config(num_steps=1, log_every=1), tmp_path / "fresh")
  first = json.loads((tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()[0])
  assert first["loss"] < 0.8 * fresh["loss"]  # starts where the source run ended


def test_init_from_and_freeze_reject_what_does_not_fit(full_run, tmp_path):
  from vasa_jax.errors import VasaInputError  # pylint: disable=g-import-not-at-top
  source, _, _ = full_run
  cfg = _config(num_steps=2)
  cfg.optim.freeze = "encoder"
  with pytest.raises(VasaInputError, match="optim.freeze entry 'encoder'.*fc1"):
    _run(cfg, tmp_path / "bad_freeze")
  cfg = _config(num_steps=2, init_from=str(source))
  cfg.model.hidden = 48
  with pytest.raises(VasaInputError, match="does not fit.*of another shape"):
    _run(cfg, tmp_path / "bad_init")
  cfg = _config(num_steps=2, init_from=str(tmp_path / "nowhere"))
  with pytest.raises(ckpt_lib.CheckpointError, match="nowhere"):
    _run(cfg, tmp_path / "missing")


def test_warm_start_keeps_fresh_parameters_the_source_lacks(monkeypatch):
  from vasa_jax.errors import VasaInputError  # pylint: disable=g-import-not-at-top
  from vasa_jax.train.state import TrainState  # pylint: disable=g-import-not-at-top
  fresh = {"gen": {"a": jnp.zeros((2, 3)), "new": jnp.full((4,), 7.0)}, "disc": {"d": jnp.ones(2)}}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=fresh, opt_state=None,
                     ema_params=fresh)
  source = {"gen": {"a": np.arange(6.0).reshape(2, 3)}}  # an older model, no discriminator
  monkeypatch.setattr(ckpt_lib, "load_params", lambda path, ema=True: (None, source))
  out = loop.warm_start(state, "old_run")
  np.testing.assert_array_equal(out.params["gen"]["a"], source["gen"]["a"])
  np.testing.assert_array_equal(out.params["gen"]["new"], 7.0)  # added since: kept
  np.testing.assert_array_equal(out.params["disc"]["d"], 1.0)
  # The EMA starts equal to the params but in its own buffers: the train step donates both, and
  # one buffer donated twice fails at the first step ("donate the same buffer twice").
  for p, e in zip(jax.tree.leaves(out.params), jax.tree.leaves(out.ema_params)):
    np.testing.assert_array_equal(p, e)
    assert p.unsafe_buffer_pointer() != e.unsafe_buffer_pointer()
  monkeypatch.setattr(ckpt_lib, "load_params",
                      lambda path, ema=True: (None, {"gen": {"gone": np.zeros(1)}}))
  with pytest.raises(VasaInputError, match="1 parameters it lacks"):
    loop.warm_start(state, "other_model")
  # A stage 1 export holds the generator alone, without the "gen/" level.
  monkeypatch.setattr(ckpt_lib, "load_params",
                      lambda path, ema=True: (None, {"a": np.ones((2, 3)), "new": np.ones(4)}))
  out = loop.warm_start(state, "export")
  np.testing.assert_array_equal(out.params["gen"]["a"], 1.0)
  np.testing.assert_array_equal(out.params["gen"]["new"], 1.0)
  np.testing.assert_array_equal(out.params["disc"]["d"], 1.0)


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(full_run, stopped_run,
                                                                   tmp_path, capsys):
  """Issue 22: one file of the newest checkpoint's state deleted (a crash mid-copy, a full
  disk): the restart resumes from the previous checkpoint, says so, and ends as the
  uninterrupted run does, with one metrics row per step."""
  ref_dir, ref_result, ref_probe = full_run
  workdir = _copy_run(stopped_run[0], tmp_path / "run")
  state_files = sorted(p for p in (workdir / "checkpoints" / "6" / "state").rglob("*")
                       if p.is_file() and p.stat().st_size > 0)
  max(state_files, key=lambda p: p.stat().st_size).unlink()  # the array data
  capsys.readouterr()
  result, probe = _run(_config(), workdir)
  out = capsys.readouterr().out
  assert "Resumed from step 5 of" in out
  assert result["step"] == 10 and len(probe.batches) == 5  # steps 6..10 again
  for a, b in zip(probe.batches, ref_probe.batches[5:]):
    np.testing.assert_array_equal(a, b)
  ref_log = [json.loads(l) for l in (ref_dir / "metrics.jsonl").read_text().splitlines()]
  log = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log] == list(range(1, 11))  # no duplicate rows for step 6
  np.testing.assert_allclose([r["loss"] for r in log], [r["loss"] for r in ref_log], rtol=1e-6)
  _assert_trees_close(_params(workdir), _params(ref_dir), rtol=1e-6, atol=1e-7)
  assert (workdir / "checkpoints_damaged" / "6").is_dir()  # kept for inspection
  assert ckpt_lib.Checkpointer(workdir / "checkpoints", read_only=True).all_steps() == [5, 10]


def test_no_restorable_checkpoint_is_one_clear_error(stopped_run, tmp_path):
  workdir = _copy_run(stopped_run[0], tmp_path / "run")
  for step in (5, 6):
    for p in (workdir / "checkpoints" / str(step) / "state").rglob("*"):
      if p.is_file():
        p.write_bytes(b"")
  with pytest.raises(ckpt_lib.CheckpointError, match="No checkpoint in .* can be restored"):
    _run(_config(), workdir)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == \
      ["5", "6"]  # nothing moved when nothing restores


def test_load_params_of_a_damaged_checkpoint_is_one_clear_error(stopped_run, tmp_path):
  workdir = _copy_run(stopped_run[0], tmp_path / "run")
  state = workdir / "checkpoints" / "6" / "state"
  for p in list(state.rglob("*")):
    if p.is_file() and p.parent.name == "d":  # the OCDBT data files: the arrays are gone
      p.unlink()
  with pytest.raises(ckpt_lib.CheckpointError, match=r"cannot be read .*available: \[5\]"):
    ckpt_lib.load_params(workdir)
  assert ckpt_lib.load_params(workdir / "checkpoints" / "5")[1]  # the older step still loads
