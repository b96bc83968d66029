"""Multi-host training for real: several jax processes on this machine, talking over gloo.

The test spawns python subprocesses (this file is also their entry point, see `_child_main`)
that call `jax.distributed.initialize(coordinator_address="127.0.0.1:PORT", ...)` and run
`loop.train` on the toy task with one global batch split across the processes. It checks
  * the loss trajectory equals a single process fed the same global batch,
  * a checkpoint written by two processes restores in one process, and the other way round,
  * the launch scripts: `bash -n`, the fail-fast message outside SLURM, a full
    `gpu_multinode.sh` -> `srun` -> `run_host.sh` -> `vasa-jax train --distributed` run with
    stand-in `srun`/`scontrol` programs (jax then finds its peers through its SLURM detection),
    and the gcloud commands `tpu_pod.sh` issues (with a recording stand-in `gcloud`).
Every child has a hard timeout; all children of a round are killed when one fails.
"""
from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
CHILD_TIMEOUT_S = 240  # per round; a healthy round takes 10-30 s on a busy 2-core machine
DEVICES_PER_PROCESS = 2
NUM_STEPS, FIRST_STOP = 8, 6  # schedule length; the first run stops (and checkpoints) at 6
# fsdp over all 4 global devices: parameters are split across the two processes, so each
# process writes different shards of the same checkpoint.
TOY_OVERRIDES = [
    f"train.num_steps={NUM_STEPS}", "train.log_every=1", "train.ckpt_every=0",
    "train.sample_every=0", "mesh.shape.data=1", "mesh.shape.fsdp=-1"]


# ---------------------------------------------------------------------------------------------
# Child process side.
# ---------------------------------------------------------------------------------------------
def _emulate_hosts(tasks_module, num_hosts: int):
  """Makes a single process read the global batch that `num_hosts` processes would read.

  Each host's `make_dataset(split, i, num_hosts)` batch is concatenated in process order,
  which is exactly how `sharding.to_global_batch` assembles the global batch.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from grain.experimental import ZipIterDataset  # pylint: disable=import-outside-toplevel

  get_task = tasks_module.get_task

  def get_task_emulated(config):
    task = get_task(config)
    make_dataset = task.make_dataset

    def make_dataset_emulated(split, process_index, process_count):
      assert (process_index, process_count) == (0, 1)
      parts = [make_dataset(split, i, num_hosts) for i in range(num_hosts)]
      return ZipIterDataset(parents=parts).map(
          lambda batches: jax.tree.map(lambda *xs: np.concatenate(xs), *batches))

    task.make_dataset = make_dataset_emulated
    return task

  tasks_module.get_task = get_task_emulated


def _gathered_state(state) -> dict:
  """Every leaf of a (possibly multi-process) state as a full numpy array, keyed by path."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  out = {}
  for path, x in jax.tree_util.tree_leaves_with_path(state):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = multihost_utils.process_allgather(x, tiled=True)
    out[jax.tree_util.keystr(path, simple=True, separator="/")] = np.asarray(x)
  return out


def _child_main(spec: dict) -> int:
  """One process of a round: optional train, restores of given workdirs, optional resume."""
  import jax  # pylint: disable=import-outside-toplevel
  if spec["num_processes"] > 1:
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{spec['port']}", num_processes=spec["num_processes"],
        process_id=spec["process_id"], initialization_timeout=120)
  from vasa_jax import config_utils  # pylint: disable=import-outside-toplevel
  from vasa_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from vasa_jax.train import loop, tasks  # pylint: disable=import-outside-toplevel
  from vasa_jax.train import sharding as shd  # pylint: disable=import-outside-toplevel

  config = config_utils.load_config(spec["config"], spec["overrides"])
  # Already initialized above: `maybe_initialize` must notice and not initialize again.
  config.train.distributed = spec["num_processes"] > 1
  if spec.get("emulate_hosts", 1) > 1:
    _emulate_hosts(tasks, spec["emulate_hosts"])
  out_dir = pathlib.Path(spec["out_dir"])
  pid, pcount = jax.process_index(), jax.process_count()
  assert pcount == spec["num_processes"], (pcount, spec)
  assert jax.device_count() == pcount * DEVICES_PER_PROCESS, jax.devices()
  result = {"process_count": pcount, "device_count": jax.device_count()}

  t0 = time.perf_counter()
  if spec.get("train"):
    result["train"] = loop.train(config, spec["train"], max_steps=FIRST_STOP, progress=False)
  result["train_s"] = time.perf_counter() - t0

  # Restore each checkpoint onto this topology's mesh (whatever topology wrote it).
  task = tasks.get_task(config)
  mesh, rules = shd.make_mesh(config.mesh), shd.logical_rules(config)
  batch_spec = shd.global_batch_spec(next(iter(task.make_dataset("train", pid, pcount))), mesh)
  abstract, _ = loop.abstract_state(task, batch_spec, mesh, rules)
  for name, workdir in spec.get("restore", {}).items():
    with ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), read_only=True) as ckpt:
      step, state = ckpt.restore(abstract)
    leaves = _gathered_state(state)
    if pid == 0:
      np.savez(out_dir / f"{name}.npz", **leaves)
    result.setdefault("restored_steps", {})[name] = step
  if spec.get("load_params"):
    _, params = ckpt_lib.load_params(spec["load_params"], ema=False)
    if pid == 0:
      np.savez(out_dir / "load_params.npz", **_gathered_state({"params": params}))

  # Resuming `loop.train` with a different process count than the checkpoint's writer.
  if spec.get("resume"):
    try:
      result["resume"] = loop.train(config, spec["resume"], max_steps=NUM_STEPS, progress=False)
    except Exception as e:  # pylint: disable=broad-except
      result["resume_error"] = f"{type(e).__name__}: {e}"
  if pid == 0:
    (out_dir / "result.json").write_text(json.dumps(result, default=float))
  return 0


# ---------------------------------------------------------------------------------------------
# Test side.
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _child_env(devices: int) -> dict:
  """A clean environment: CPU only, `devices` virtual devices, no inherited cluster variables."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "JAX_COORDINATOR", "VASA_", "TPU_", "OMPI_"))}
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env["PYTHONUNBUFFERED"] = "1"
  return env


def _run_round(commands: list[list[str]], envs: list[dict], logs: list[pathlib.Path],
               timeout: float = CHILD_TIMEOUT_S) -> float:
  """Starts all commands at once and waits; a failure or the timeout kills the whole round.

  Returns:
    Wall-clock seconds of the round.
  """
  t0 = time.perf_counter()
  procs = []
  for cmd, env, log in zip(commands, envs, logs):
    with open(log, "wb") as f:
      procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True))
  failed = None
  try:
    pending = list(procs)
    while pending:
      if time.perf_counter() - t0 > timeout:
        failed = f"timed out after {timeout:.0f} s"
        break
      for p in list(pending):
        if p.poll() is not None:
          pending.remove(p)
          if p.returncode != 0 and failed is None:
            failed = f"a process exited with {p.returncode}"
      if failed:
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, 9)  # our own child's process group (it may have spawned helpers)
        p.wait()
  if failed:
    tails = "\n".join(f"--- {log.name} ---\n" + log.read_text(errors="replace")[-3000:]
                      for log in logs)
    raise AssertionError(f"{failed}: {[' '.join(c[-3:]) for c in commands]}\n{tails}")
  return time.perf_counter() - t0


def _python_round(specs: list[dict], out_dir: pathlib.Path, name: str) -> float:
  out_dir.mkdir(parents=True, exist_ok=True)
  port = _free_port()
  commands, envs, logs = [], [], []
  for i, spec in enumerate(specs):
    spec = dict(spec, port=port, process_id=i, num_processes=len(specs), out_dir=str(out_dir))
    commands.append([sys.executable, str(pathlib.Path(__file__).resolve()), json.dumps(spec)])
    envs.append(_child_env(DEVICES_PER_PROCESS))
    logs.append(out_dir / f"{name}_{i}.log")
  return _run_round(commands, envs, logs)


def _losses(workdir: pathlib.Path) -> list[float]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["loss"] for line in lines]



@pytest.fixture(scope="module")
def toy_rounds(tmp_path_factory):
  """Three rounds on the toy task: 1 process, then 2 processes, then 1 process again.

  one/   1 process x 2 devices, reading the global batch two hosts would read: trains to
         step 6 (the reference).
  two/   2 processes x 2 devices: trains to step 6; restores its own and one/'s checkpoints;
         tries to resume a copy of one/'s run to step 8.
  back/  1 process x 2 devices: restores both checkpoints; tries to resume a copy of two/.
  """
  root = tmp_path_factory.mktemp("multihost")
  one, two = root / "one", root / "two"
  base = {"config": "configs/toy.py", "overrides": TOY_OVERRIDES}
  times = {}
  times["one"] = _python_round([dict(base, train=str(one), emulate_hosts=2)], root / "out_one",
                               "one")
  shutil.copytree(one, root / "one_resumed")
  spec = dict(base, train=str(two), restore={"two": str(two), "one": str(one)},
              resume=str(root / "one_resumed"))
  times["two"] = _python_round([spec, spec], root / "out_two", "two")
  shutil.copytree(two, root / "two_resumed")
  spec = dict(base, restore={"two": str(two), "one": str(one)}, load_params=str(two),
              resume=str(root / "two_resumed"))
  times["back"] = _python_round([spec], root / "out_back", "back")
  print(f"multi-host toy rounds (s): {times}")
  results = {k: json.loads((root / f"out_{k}" / "result.json").read_text())
             for k in ("one", "two", "back")}
  return {"root": root, "times": times, "results": results}


def _npz(path: pathlib.Path) -> dict:
  with np.load(path) as f:
    return dict(f)


def test_two_processes_match_one_process_with_the_same_global_batch(toy_rounds):
  root, results = toy_rounds["root"], toy_rounds["results"]
  assert results["two"]["process_count"] == 2 and results["two"]["device_count"] == 4
  assert results["one"]["process_count"] == 1
  loss_one, loss_two = _losses(root / "one"), _losses(root / "two")
  assert len(loss_one) == len(loss_two) == FIRST_STOP
  # Same global batch, same rng, same sharded math: only the reduction order may differ.
  np.testing.assert_allclose(loss_two, loss_one, rtol=1e-4, atol=1e-6)
  assert loss_two[-1] < loss_two[0]  # and it actually trains
  # Only process 0 writes the run's files; both processes wrote their checkpoint shards.
  assert (root / "two" / "config.json").is_file()
  assert (root / "two" / "checkpoints" / str(FIRST_STOP) / "state").is_dir()
  grain_states = sorted(p.name for p in (root / "two" / "checkpoints" / str(FIRST_STOP) /
                                         "data_iter").glob("process_*"))
  assert grain_states == ["process_0-of-2.json", "process_1-of-2.json"]


def test_checkpoints_restore_across_process_counts(toy_rounds):
  out = {k: toy_rounds["root"] / f"out_{k}" for k in ("two", "back")}
  for written_by in ("one", "two"):
    in_two = _npz(out["two"] / f"{written_by}.npz")
    in_one = _npz(out["back"] / f"{written_by}.npz")
    assert in_two.keys() == in_one.keys() and any("opt_state" in k for k in in_one)
    for key in in_one:  # bit-identical whichever topology reads it
      np.testing.assert_array_equal(in_one[key], in_two[key], err_msg=key)
    assert int(in_one["step"]) == FIRST_STOP
  # The runs themselves agree (the 2-process run was the 1-process run, split).
  by_one, by_two = _npz(out["back"] / "one.npz"), _npz(out["back"] / "two.npz")
  for key in by_one:
    np.testing.assert_allclose(by_two[key], by_one[key], rtol=1e-4, atol=1e-6, err_msg=key)
  # Inference loading (`load_params`, one device) reads the 2-process checkpoint too.
  loaded = _npz(out["back"] / "load_params.npz")
  for key, value in loaded.items():
    np.testing.assert_array_equal(value, by_two[key], err_msg=key)


def test_resume_training_with_a_different_process_count(toy_rounds):
  results = toy_rounds["results"]
  for k in ("two", "back"):
    assert results[k].get("resume_error") is None, results[k]["resume_error"]
    assert results[k]["resume"]["step"] == NUM_STEPS
    assert np.isfinite(results[k]["resume"]["loss"])



def test_only_maybe_initialize_starts_the_distributed_runtime():
  """`jax.distributed.initialize` has one caller, and loading configs never reaches it."""
  callers = []
  for path in list((REPO / "vasa_jax").rglob("*.py")) + list((REPO / "configs").glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):  # calls only, not docs or help texts
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and
          node.func.attr == "initialize" and ast.unparse(node.func.value).endswith(
              "distributed")):
        callers.append(f"{path.relative_to(REPO).as_posix()}:{node.lineno}")
  assert len(callers) == 1 and callers[0].startswith("vasa_jax/train/distributed.py:"), callers
  source = (REPO / "vasa_jax/train/distributed.py").read_text()
  assert "def maybe_initialize" in source
  import jax  # pylint: disable=import-outside-toplevel
  from vasa_jax import config_utils  # pylint: disable=import-outside-toplevel
  for spec in ("configs/toy.py", "configs/latent.py:base", "configs/motion.py:base"):
    config = config_utils.load_config(spec, ["train.distributed=True"])
    assert config.train.distributed
  assert not jax.distributed.is_initialized()


# ---------------------------------------------------------------------------------------------
# Launch scripts.
# ---------------------------------------------------------------------------------------------
SCRIPTS = ("tpu_pod.sh", "gpu_multinode.sh", "run_host.sh")

# Stand-ins for the SLURM client tools: `scontrol show hostnames` prints this machine, `srun`
# starts SLURM_NTASKS local copies of its command with the per-task variables srun sets.
FAKE_SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2" == "show hostnames" ]] || { echo "fake scontrol: unexpected $*" >&2; exit 1; }
echo 127.0.0.1
"""
FAKE_SRUN = """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do echo "$1" >> "$FAKE_SLURM_LOG/srun_options"; shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NODELIST=$SLURM_JOB_NODELIST \\
    SLURM_STEP_NUM_NODES=1 "$@" > "$FAKE_SLURM_LOG/task_$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""
# Records each gcloud call (one line of arguments, NUL-separated) and succeeds.
FAKE_GCLOUD = """#!/usr/bin/env bash
printf '%s\\0' "$@" >> "$FAKE_GCLOUD_LOG"
printf '\\n' >> "$FAKE_GCLOUD_LOG"
"""


def _write_exe(path: pathlib.Path, text: str):
  path.write_text(text)
  path.chmod(0o755)


def test_launch_scripts_parse_and_print_usage():
  for name in SCRIPTS:
    script = LAUNCH / name
    assert script.read_text().startswith("#!/usr/bin/env bash"), name
    assert "set -euo pipefail" in script.read_text(), name
    subprocess.run(["bash", "-n", str(script)], check=True)
    usage = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True,
                           timeout=30)
    assert "Usage:" in usage.stderr, (name, usage.stderr)
    assert "set -euo" not in usage.stderr  # the usage text stops before the code


def test_gpu_multinode_fails_fast_without_slurm(tmp_path):
  env = _child_env(1)
  proc = subprocess.run(["bash", str(LAUNCH / "gpu_multinode.sh"), "configs/toy.py",
                         str(tmp_path / "run")], env=env, capture_output=True, text=True,
                        timeout=30)
  assert proc.returncode == 1
  assert "SLURM_JOB_NODELIST SLURM_NTASKS not set" in proc.stderr
  assert "sbatch" in proc.stderr
  assert not (tmp_path / "run").exists()  # nothing started


def test_tpu_pod_copies_installs_and_starts_the_same_command_on_every_worker(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _write_exe(bin_dir / "gcloud", FAKE_GCLOUD)
  log = tmp_path / "gcloud.log"
  env = dict(_child_env(1), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             FAKE_GCLOUD_LOG=str(log), TPU_ZONE="us-central2-b")
  cmd = ["bash", str(LAUNCH / "tpu_pod.sh"), "--name", "pod-1", "--project", "proj", "--",
         "configs/latent.py:base", "gs://bucket/runs/latent", "--config.train.batch_size=64"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  calls = [line.split("\0") for line in log.read_text().split("\0\n") if line]
  assert [c[:4] for c in calls] == [["compute", "tpus", "tpu-vm", "scp"]] + [
      ["compute", "tpus", "tpu-vm", "ssh"]] * 3
  for c in calls:
    assert "--worker=all" in c and "pod-1" in " ".join(c)
    assert c[c.index("--zone") + 1] == "us-central2-b" and c[c.index("--project") + 1] == "proj"
  remote = [c[c.index("--command") + 1] for c in calls[1:]]
  assert "tar -xzf" in remote[0] and "pip install" in remote[1] and "jax\\[tpu\\]" in remote[1]
  assert remote[2] == ("cd vasa-jax && bash launch/run_host.sh configs/latent.py:base "
                       "gs://bucket/runs/latent --config.train.batch_size=64 ")
  # A non-shared workdir is refused before anything runs.
  bad = subprocess.run(cmd[:-2] + ["/tmp/run"], env=env, capture_output=True, text=True,
                       timeout=30)
  assert bad.returncode == 1 and "must be a gs:// path" in bad.stderr


# Not marked slow on purpose: the one real multi-process run of the default suite (~10 s on an
# idle 2-core machine, ~25 s on a busy one).
def test_gpu_multinode_trains_two_processes_through_srun_and_run_host(tmp_path):
  """sbatch-like run: gpu_multinode.sh -> (fake) srun -> run_host.sh x2 -> vasa-jax train.

  Nothing here calls `jax.distributed.initialize` by hand: `--distributed` makes
  `distributed.maybe_initialize` call it, and jax reads the coordinator from
  JAX_COORDINATOR_ADDRESS and the process id/count from the SLURM task variables.
  """
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _write_exe(bin_dir / "scontrol", FAKE_SCONTROL)
  _write_exe(bin_dir / "srun", FAKE_SRUN)
  workdir, steps = tmp_path / "run", FIRST_STOP
  env = dict(_child_env(1),
             PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM_LOG=str(tmp_path),
             SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node[001]", SLURM_NTASKS="2",
             VASA_COORDINATOR_PORT=str(_free_port()), VASA_PYTHON=sys.executable,
             VASA_VENV=str(pathlib.Path(sys.executable).parent.parent))
  seconds = _run_round(
      [["bash", str(LAUNCH / "gpu_multinode.sh"), "configs/toy.py", str(workdir)] +
       [f"--config.{o}" for o in TOY_OVERRIDES] + [f"--config.train.num_steps={steps}"]],
      [env], [tmp_path / "gpu_multinode.log"])
  print(f"gpu_multinode.sh round: {seconds:.1f} s")
  launcher_log = (tmp_path / "gpu_multinode.log").read_text()
  assert "coordinator 127.0.0.1:" in launcher_log
  assert "--kill-on-bad-exit=1" in (tmp_path / "srun_options").read_text()
  for i in range(2):
    task_log = (tmp_path / f"task_{i}.log").read_text()
    assert f"process {i} of 2, coordinator 127.0.0.1:" in task_log, task_log[-2000:]
  losses = _losses(workdir)
  assert len(losses) == steps and losses[-1] < losses[0]
  data_iter = workdir / "checkpoints" / str(steps) / "data_iter"
  assert sorted(p.name for p in data_iter.glob("process_*")) == [
      "process_0-of-2.json", "process_1-of-2.json"]


if __name__ == "__main__":
  sys.exit(_child_main(json.loads(sys.argv[1])))
