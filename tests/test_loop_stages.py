"""Both stages through the shared training loop: resume, and a data x fsdp mesh vs one device."""
import numpy as np
import pytest

from vasa_jax.config_utils import load_config
from vasa_jax.train import loop


def _config(*overrides):
  # Batch 8 divides both the one-device mesh and data=4 x fsdp=2 over the 8 virtual devices.
  return load_config("configs/latent.py:tiny", [
      "train.num_steps=4", "train.batch_size=8", "train.ckpt_every=2", "train.log_every=1",
      "train.sample_every=0", "train.async_checkpoint=False", *overrides])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  return loop.train(_config("mesh.shape.data=1"), tmp_path_factory.mktemp("full"),
                    progress=False)


def test_stage1_stop_and_resume_continues_the_same_run(full_run, tmp_path):
  cfg = _config("mesh.shape.data=1")
  stopped = loop.train(cfg, tmp_path, max_steps=2, progress=False)
  assert stopped["step"] == 2
  resumed = loop.train(cfg, tmp_path, progress=False)
  assert resumed["step"] == 4
  # Same parameters, optimizer state and data position -> the same step-4 loss.
  np.testing.assert_allclose(resumed["loss"], full_run["loss"], rtol=1e-4)


@pytest.mark.slow  # 100-200 s compiling stage 1 for 8 devices; its fast form is on stage 2
def test_stage1_data_fsdp_mesh_matches_one_device(full_run, tmp_path):
  sharded = loop.train(_config("mesh.shape.data=4", "mesh.shape.fsdp=2"), tmp_path,
                       progress=False)
  assert sharded["step"] == 4
  np.testing.assert_allclose(sharded["loss"], full_run["loss"], rtol=2e-3)


def _motion_config(*overrides):
  return load_config("configs/motion.py:tiny", [
      "train.num_steps=4", "train.ckpt_every=2", "train.log_every=1",
      "train.async_checkpoint=False", *overrides])


def test_stage2_data_fsdp_mesh_matches_one_device(tmp_path):
  # The shared loop's sharding path (data x fsdp batch and parameter shardings) against one device.
  one = loop.train(_motion_config("train.batch_size=8", "mesh.shape.data=1"), tmp_path / "one",
                   progress=False)
  sharded = loop.train(_motion_config("train.batch_size=8", "mesh.shape.data=4",
                                      "mesh.shape.fsdp=2"), tmp_path / "mesh", progress=False)
  assert sharded["step"] == one["step"] == 4
  np.testing.assert_allclose(sharded["loss"], one["loss"], rtol=2e-3)


def test_stage2_stop_and_resume_continues_the_same_run(tmp_path):
  cfg = _motion_config("mesh.shape.data=1")
  full = loop.train(cfg, tmp_path / "full", progress=False)
  loop.train(cfg, tmp_path / "part", max_steps=2, progress=False)
  resumed = loop.train(cfg, tmp_path / "part", progress=False)
  assert resumed["step"] == full["step"] == 4
  np.testing.assert_allclose(resumed["loss"], full["loss"], rtol=1e-4)
