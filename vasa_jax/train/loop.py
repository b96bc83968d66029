"""The one training loop: `train(config, workdir)` for every stage (big_vision style).

Reads top to bottom: distributed init, workdir, mesh, task + input, abstract state and
shardings, checkpoint restore or sharded init, the train step compiled ahead of time, the loop
(metrics, NaN check, samples, checkpoints).
The stage-specific parts live in the Task (`tasks.get_task`); this file never looks inside
the model.
"""
from __future__ import annotations

import json
import logging
import math
import io
import time
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
from jax.experimental import multihost_utils
import jax
from etils import epath
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter
from tqdm import tqdm

from vasa_jax import config_utils
from vasa_jax.errors import VasaInputError
from vasa_jax.fileio import atomic_write_bytes
from vasa_jax.train import checkpoint as ckpt_lib
from vasa_jax.train import distributed
from vasa_jax.train import optim
from vasa_jax.train import sharding as shd
from vasa_jax.train import tasks

log = logging.getLogger(__name__)

# One JSON object per log step (process 0), next to TensorBoard's events, easy to read back.
METRICS_FILE = "metrics.jsonl"


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------
# Pieces shared by `train` and `compile_train_step`.
# ---------------------------------------------------------------------------------------------
def _zeros_like_spec(spec):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), spec)


def _init_fn(task, batch_spec):
  """rng -> boxed TrainState; the example batch is built from shapes inside the trace."""
  return lambda rng: task.init(rng, _zeros_like_spec(batch_spec))


def abstract_state(task, batch_spec, mesh, rules):
  """Shapes and shardings of the task's state, without allocating it.

  Args:
    task: the Task.
    batch_spec: ShapeDtypeStructs of the global batch.
    mesh: device mesh.
    rules: logical axis rules.

  Returns:
    (abstract, shardings): unboxed ShapeDtypeStructs carrying their NamedShardings, and the
    NamedSharding pytree itself.
  """
  rng_spec = jax.ShapeDtypeStruct((2,), jnp.uint32)
  with shd.mesh_context(mesh, rules):
    boxed = jax.eval_shape(_init_fn(task, batch_spec), rng_spec)
  shardings = shd.state_shardings(boxed, mesh, rules)
  return ckpt_lib.abstract_target(nn.unbox(boxed), shardings), shardings


def create_sharded_state(task, batch_spec, mesh, rules, rng, shardings):
  """Runs `task.init` under jit with `out_shardings`, so each device only builds its shards.

  Returns:
    The unboxed TrainState, every leaf a global array laid out as `shardings` says.
  """
  init = jax.jit(lambda r: nn.unbox(_init_fn(task, batch_spec)(r)), out_shardings=shardings)
  with shd.mesh_context(mesh, rules):
    return init(shd.replicate(rng, mesh))


def _names(path) -> tuple[str, ...]:
  """A tree_util key path as plain names: ("gen", "encoder", "conv", "kernel")."""
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _by_path(tree) -> dict:
  return {_names(k): x for k, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _under(names: tuple[str, ...], prefixes: Sequence[tuple[str, ...]]) -> bool:
  return any(names[:len(p)] == p for p in prefixes)


def check_freeze_paths(params, paths) -> list[tuple[str, ...]]:
  """`optim.freeze` entries (a list, or one comma-separated string) as key tuples, each
  checked to name a subtree of `params`.

  Raises:
    VasaInputError: a path that is not in the parameters (the message lists the top keys).
  """
  if isinstance(paths, str):  # --config.optim.freeze=gen/encoder,gen/decoder/...
    paths = [p for p in paths.split(",") if p.strip()]
  leaves = list(_by_path(params))
  out = []
  for path in paths or ():
    keys = tuple(p for p in str(path).split("/") if p)
    if not keys or not any(_under(n, [keys]) for n in leaves):
      raise VasaInputError(
          f"optim.freeze entry {path!r} is not a parameter subtree; the parameters start with "
          f"{sorted(params)} (e.g. 'gen/encoder' for the stage-1 encoders)")
    out.append(keys)
  return out


def keep_frozen(old_state, new_state, frozen: Sequence[tuple[str, ...]]):
  """`new_state` with the `frozen` parameter subtrees (and their EMA) taken from `old_state`.

  Applied after the task's update, so the optimizer state keeps its structure (a frozen run
  resumes from, and into, ordinary checkpoints) and weight decay cannot move them either.
  """
  if not frozen:
    return new_state

  def pick(old, new):
    return jax.tree_util.tree_map_with_path(
        lambda path, o, n: o if _under(_names(path), frozen) else n, old, new)

  ema = new_state.ema_params
  return new_state.replace(params=pick(old_state.params, new_state.params),
                           ema_params=None if ema is None else pick(old_state.ema_params, ema))


def warm_start(state, init_from: str):
  """`state` with its parameters (and EMA copy) replaced by those of another run.

  Args:
    state: a freshly initialised TrainState (its leaves carry the target shardings).
    init_from: a workdir, checkpoints dir, step dir or export (`checkpoint.load_params`; its
      EMA parameters when it kept them). Parameters it lacks keep their fresh initialisation:
      an export has no discriminator, and a module added since starts from scratch.
  Raises:
    VasaInputError: parameters of the source run that this model lacks or has in another shape.
  """
  _, loaded = ckpt_lib.load_params(init_from, ema=True)
  got = _by_path(loaded)
  fresh = _by_path(state.params)
  if got and not any(k in fresh for k in got):
    # An export holds the inference subtree alone (stage 1: the generator, without "gen/").
    for top in sorted({k[0] for k in fresh}):
      if all((top, *k) in fresh for k in got):
        got = {(top, *k): v for k, v in got.items()}
        break
  show = lambda keys: ["/".join(k) for k in keys[:3]]  # noqa: E731
  unknown = sorted(k for k in got if k not in fresh)
  wrong = sorted(k for k in got if k in fresh and np.shape(got[k]) != np.shape(fresh[k]))
  if unknown or wrong:
    raise VasaInputError(
        f"train.init_from={init_from} does not fit this config's model: "
        + (f"{len(unknown)} parameters it lacks (e.g. {show(unknown)})" if unknown else "")
        + ("; " if unknown and wrong else "")
        + (f"{len(wrong)} of another shape (e.g. {show(wrong)})" if wrong else "")
        + ". Start from a run of the same stage and config variant.")

  def take(path, ref):
    value = got.get(_names(path))
    return ref if value is None else jax.device_put(jnp.asarray(value, ref.dtype), ref.sharding)

  params = jax.tree_util.tree_map_with_path(take, state.params)
  new = sorted(k for k in fresh if k not in got)
  log.info("Parameters initialised from %s; %d kept their fresh initialisation%s", init_from,
           len(new), f" (e.g. {show(new)})" if new else "")
  # A copy, not the same buffers: the train step donates params and EMA separately.
  ema = jax.tree.map(jnp.copy, params) if state.ema_params is not None else None
  return state.replace(params=params, ema_params=ema)


def make_train_step(task, frozen: Sequence[tuple[str, ...]] = ()):
  """Wraps `task.train_step` with what the loop owns: rng folding, the step counter, NaN watch,
  frozen parameters (`keep_frozen`).

  The returned function maps (state, batch, rng, first_bad) -> (state, metrics, first_bad);
  `first_bad` is the first step whose loss was not finite (-1 if none), kept on device so
  the host only looks at it on log/checkpoint steps.
  """
  def step_fn(state, batch, rng, first_bad):
    step_rng = jax.random.fold_in(rng, state.step)
    new_state, metrics = task.train_step(state, batch, step_rng)
    new_state = keep_frozen(state, new_state, frozen)
    new_state = new_state.replace(step=state.step + 1)
    finite = jnp.isfinite(metrics["loss"])
    first_bad = jnp.where((first_bad < 0) & ~finite, state.step + 1, first_bad)
    return new_state, metrics, first_bad
  return step_fn


def jit_train_step(task, shardings, mesh, frozen: Sequence[tuple[str, ...]] = ()):
  """The train step's one jit signature, shared by `train` and every AOT compile check.

  State in and out with `shardings`, the batch split over the data axes, rng and `first_bad`
  replicated; the state and `first_bad` are donated (their buffers become the new ones).
  As maxtext's train_compile, the checks compile exactly what training runs.

  Returns:
    The jitted (state, batch, rng, first_bad) -> (state, metrics, first_bad).
  """
  repl = shd.replicated(mesh)
  return jax.jit(
      make_train_step(task, frozen),
      in_shardings=(shardings, shd.data_sharding(mesh), repl, repl),
      out_shardings=(shardings, repl, repl),
      donate_argnums=(0, 3))


def train_step_args(abstract, batch_spec, mesh) -> tuple:
  """ShapeDtypeStructs of `jit_train_step`'s arguments: (state, batch, rng, first_bad)."""
  repl = shd.replicated(mesh)
  return (abstract, batch_spec, jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=repl),
          jax.ShapeDtypeStruct((), jnp.int32, sharding=repl))


def _compile_step(task, abstract, shardings, batch_spec, mesh, rules, frozen=()):
  """`jit_train_step` lowered and compiled ahead of time; returns (compiled, seconds)."""
  jitted = jit_train_step(task, shardings, mesh, frozen)
  t0 = time.perf_counter()
  with shd.mesh_context(mesh, rules):
    compiled = jitted.lower(*train_step_args(abstract, batch_spec, mesh)).compile()
  return compiled, time.perf_counter() - t0


def _batch_spec_from_shapes(batch_shapes, mesh):
  sharding = shd.data_sharding(mesh)

  def one(s):
    if isinstance(s, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding)
    shape, dtype = s
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)
  return jax.tree.map(one, batch_shapes,
                      is_leaf=lambda x: isinstance(x, (jax.ShapeDtypeStruct, tuple)))


class LoweredTrainStep(NamedTuple):
  lowered: jax.stages.Lowered
  abstract: Any  # the unboxed abstract TrainState (ShapeDtypeStructs with shardings)
  shardings: Any  # its NamedShardings
  batch_spec: Any  # ShapeDtypeStructs of the global batch


def lower_train_step(config, mesh, batch_shapes, task=None) -> LoweredTrainStep:
  """Lowers `config`'s train step (`jit_train_step`) for `mesh` without allocating anything.

  Args:
    config: the run config.
    mesh: a device mesh (`sharding.make_mesh`; its devices may be a TPU topology's).
    batch_shapes: pytree of the GLOBAL batch, leaves `jax.ShapeDtypeStruct` or (shape, dtype).
    task: the Task (default `tasks.get_task(config)`).

  Returns:
    A LoweredTrainStep; `.lowered.compile()` gives what `train` runs.
  """
  task = tasks.get_task(config) if task is None else task
  rules = shd.logical_rules(config)
  batch_spec = _batch_spec_from_shapes(batch_shapes, mesh)
  abstract, shardings = abstract_state(task, batch_spec, mesh, rules)
  frozen = check_freeze_paths(abstract.params, config.get("optim", {}).get("freeze", []))
  jitted = jit_train_step(task, shardings, mesh, frozen)
  with shd.mesh_context(mesh, rules):
    lowered = jitted.lower(*train_step_args(abstract, batch_spec, mesh))
  return LoweredTrainStep(lowered, abstract, shardings, batch_spec)


def compile_train_step(config, mesh, batch_shapes, task=None) -> jax.stages.Compiled:
  """Compiles `config`'s train step for `mesh` without allocating or running anything.

  Useful to check that a large config partitions and fits (e.g. `base` on 8 virtual CPU
  devices, or a TPU topology: `vasa-jax compile-check`): `compiled.memory_analysis()`,
  `compiled.cost_analysis()`.

  Args:
    config: the run config.
    mesh: a device mesh (`sharding.make_mesh`).
    batch_shapes: pytree of the GLOBAL batch, leaves `jax.ShapeDtypeStruct` or (shape, dtype).
    task: the Task (default `tasks.get_task(config)`).

  Returns:
    The compiled step: (state, batch, rng (2,) uint32, first_bad () int32) ->
    (state, metrics, first_bad).
  """
  t0 = time.perf_counter()
  compiled = lower_train_step(config, mesh, batch_shapes, task).lowered.compile()
  log.info("Compiled the %s train step for mesh %s in %.1fs", config.get("stage"),
           dict(mesh.shape), time.perf_counter() - t0)
  return compiled


def _check_finite(first_bad, checkpointer):
  bad = int(jax.device_get(first_bad))
  if bad >= 0:
    checkpointer.wait_until_finished()
    last = checkpointer.latest_step()
    kept = (f"the last good checkpoint (step {last}) in {checkpointer.directory} is kept"
            if last is not None else "no checkpoint was written yet")
    raise NonFiniteLossError(
        f"Loss became NaN/inf at step {bad}; stopped without saving the bad state, {kept}. "
        "Lower --config.optim.lr (or the gradient clip, --config.optim.grad_clip) or check the "
        "input data.")


def _save_png(image: np.ndarray, path: epath.Path):
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
  atomic_write_bytes(path, buf.getvalue())


def _is_local(path: epath.Path) -> bool:
  return "://" not in str(path)


def _append_jsonl(path: epath.Path, record: dict):
  line = json.dumps(record) + "\n"
  if _is_local(path):
    with open(path, "a") as f:
      f.write(line)
  else:  # object stores (gs://) cannot append: rewrite the (small) file
    old = path.read_text() if path.exists() else ""
    path.write_text(old + line)


def _truncate_jsonl(path: epath.Path, last_step: int):
  """Drops the rows logged after `last_step` (and a half-written last line), so a resumed run
  appends its own rows for those steps without duplicates."""
  if not path.exists():
    return
  keep = []
  for line in path.read_text().splitlines():
    try:
      step = int(json.loads(line)["step"])
    except (ValueError, TypeError, KeyError):
      continue
    if step <= last_step:
      keep.append(line + "\n")
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text("".join(keep))
  tmp.replace(path)


def _to_host(metrics) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


# ---------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------
def _past(deadline: float | None, process_count: int) -> bool:
  """Whether the wall-clock deadline has passed, as process 0 sees it (all hosts agree)."""
  if deadline is None:
    return False
  past = time.perf_counter() >= deadline
  if process_count > 1:
    past = bool(multihost_utils.broadcast_one_to_all(np.bool_(past)))
  return past


def train(config, workdir, *, max_steps: int | None = None, progress: bool = True
          ) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from the latest checkpoint there.

  Args:
    config: the run config (`configs/*.py`).
    workdir: output directory (checkpoints/, tb/, samples/, metrics.jsonl, config.json).
    max_steps: stop at this global step (checkpointing it) even if `train.num_steps` is larger;
      the learning-rate schedule still follows `train.num_steps`.
    progress: show a tqdm progress bar (process 0).

  Returns:
    The last logged metrics as floats, plus "step", "compile_s", "steps_per_sec".
  """
  # ---- Distributed runtime (before anything touches the backend) ----
  distributed.maybe_initialize(config)
  pid, pcount = jax.process_index(), jax.process_count()
  is_main = pid == 0

  # ---- Workdir ----
  # epath: local paths and object stores (gs://...) alike, so every TPU worker writes to the
  # same bucket rather than to its own disk.
  workdir = epath.Path(workdir)
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    config_utils.save_config(config, workdir / "config.json")
  tc = config.train
  num_steps = int(tc.num_steps)
  stop_at = num_steps if max_steps is None else min(num_steps, int(max_steps))

  # ---- Mesh ----
  mesh = shd.make_mesh(config.mesh)
  rules = shd.logical_rules(config)
  if tc.batch_size % pcount or tc.batch_size % shd.batch_divisor(mesh):
    raise ValueError(
        f"train.batch_size={tc.batch_size} must divide over {pcount} processes and the "
        f"{shd.batch_divisor(mesh)} data x fsdp devices of mesh {dict(mesh.shape)}; change "
        f"--config.train.batch_size or the mesh (e.g. --config.mesh.shape.data="
        f"{math.gcd(tc.batch_size, mesh.size)} --config.mesh.shape.fsdp=1)")
  log.info("Mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, pcount)

  # ---- Task and input ----
  task = tasks.get_task(config)
  train_ds = task.make_dataset("train", pid, pcount)
  data_iter = iter(train_ds)
  # Shapes come from a throw-away iterator so `data_iter` keeps its exact position.
  batch_spec = shd.global_batch_spec(next(iter(train_ds)), mesh)

  # ---- Sharded init (shapes first; params are created already sharded) ----
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  abstract, shardings = abstract_state(task, batch_spec, mesh, rules)

  # ---- Checkpoint: restore (state + data position) or fresh init ----
  checkpointer = ckpt_lib.make_checkpointer(workdir, config)
  writer = pbar = None
  try:
    start = checkpointer.latest_step()
    if start is not None:
      start, state = checkpointer.restore_newest_good(abstract, data_iter)
      if is_main:
        print(f"Resumed from step {start} of {checkpointer.directory}", flush=True)
        _truncate_jsonl(workdir / METRICS_FILE, start)
    else:
      start = 0
      state = create_sharded_state(task, batch_spec, mesh, rules, init_rng, shardings)
      if tc.get("init_from", ""):
        state = warm_start(state, tc.init_from)
    frozen = check_freeze_paths(abstract.params, config.get("optim", {}).get("freeze", []))
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
    log.info("Parameters: %s", f"{n_params:,}")

    # ---- Train step, compiled ahead of time (never retraced in the loop) ----
    compiled, compile_s = None, 0.0
    if start < stop_at:
      compiled, compile_s = _compile_step(task, abstract, shardings, batch_spec, mesh, rules,
                                          frozen)
      log.info("Compiled the train step in %.1fs", compile_s)

    # ---- Loop ----
    rng = shd.replicate(train_rng, mesh)
    first_bad = shd.replicate(np.int32(-1), mesh)
    if is_main:
      writer = SummaryWriter(str(workdir / "tb"))
      pbar = tqdm(total=stop_at, initial=start, disable=not progress, unit="step",
                  dynamic_ncols=True)
    schedule = None
    if "optim" in config:
      schedule = optim.make_schedule(config.optim, num_steps)
    result: dict[str, Any] = {"step": start, "compile_s": compile_s}
    t_log, step_log = time.perf_counter(), start
    limit = float(tc.get("time_limit_s", 0) or 0)
    deadline = t_log + limit if limit > 0 else None
    step, ran_out = start, False
    for step in range(start + 1, stop_at + 1):
      try:
        host_batch = next(data_iter)
      except StopIteration:
        log.warning("Training data ran out at step %d; stopping", step - 1)
        step, ran_out = step - 1, True
        break
      batch = shd.to_global_batch(host_batch, mesh)
      state, metrics, first_bad = compiled(state, batch, rng, first_bad)
      if pbar is not None:
        pbar.update(1)

      last = step == stop_at
      log_now = (tc.log_every and step % tc.log_every == 0) or last
      ckpt_now = (tc.ckpt_every and step % tc.ckpt_every == 0) or last
      preempted = checkpointer.reached_preemption(step)
      if log_now or ckpt_now or preempted:
        _check_finite(first_bad, checkpointer)  # never checkpoint a diverged state
      # After that sync the clock counts steps done, not steps dispatched ahead.
      out_of_time = log_now and not last and _past(deadline, pcount)
      stop = preempted or out_of_time

      if log_now:
        now = time.perf_counter()
        steps_per_sec = (step - step_log) / max(now - t_log, 1e-9)
        t_log, step_log = now, step
        result.update(_to_host(metrics), step=step, steps_per_sec=steps_per_sec)
        if writer is not None:
          for k, v in result.items():
            if k not in ("step", "compile_s", "steps_per_sec"):
              writer.add_scalar(f"train/{k}", v, step)
          writer.add_scalar("perf/steps_per_sec", steps_per_sec, step)
          if schedule is not None:
            writer.add_scalar("train/lr", float(schedule(step - 1)), step)
          writer.flush()
          _append_jsonl(workdir / METRICS_FILE, {"step": step, **{
              k: v for k, v in result.items() if k not in ("step", "compile_s")}})
        if pbar is not None:
          pbar.set_postfix(loss=f"{result['loss']:.4g}", refresh=False)

      if tc.sample_every and step % tc.sample_every == 0:
        image = task.sample_images(state, batch)  # every process (may run jitted code)
        if is_main and image is not None:
          _save_png(image, workdir / "samples" / f"step_{step:06d}.png")

      if ckpt_now or stop:
        checkpointer.save(step, state, data_iter, config)
      if stop:
        log.warning("%s: saved step %d and stopping", "Preemption signalled" if preempted
                    else f"train.time_limit_s={limit:g} spent", step)
        break
    if ran_out and step > start:
      _check_finite(first_bad, checkpointer)
      checkpointer.save(step, state, data_iter, config)
    result["step"] = step
  finally:
    checkpointer.close()  # waits for async saves
    if pbar is not None:
      pbar.close()
    if writer is not None:
      writer.close()
  return result
