"""`vasa-jax bench-train`: the loop's compiled train step timed on synthetic batches, with its
FLOPs from the cost analysis and MFU where the device has a known peak."""
from __future__ import annotations

import json

from vasa_jax import bench_train
from vasa_jax import chips
from vasa_jax import cli


def test_bench_train_rows_for_a_sweep(tmp_path, capsys):
  out = tmp_path / "bench.json"
  code = cli.main(["bench-train", "--config", "configs/motion.py:tiny", "--steps", "2",
                   "--sweep", "", "model.remat_policy=full", "--out", str(out)])
  assert code == 0
  rows = json.loads(out.read_text())
  assert [r["name"] for r in rows] == ["motion tiny", "motion tiny [model.remat_policy=full]"]
  for r in rows:
    assert r["steps_per_s"] > 0 and r["examples_per_s"] == r["steps_per_s"] * r["batch"]
    assert r["flops"] > 1e6  # from the cost analysis of the step, not a constant
    assert r["mfu"] is None  # a CPU has no peak to compare against
  # Rematerialisation recomputes the forward pass: more FLOPs for the same batch.
  assert rows[1]["flops"] > rows[0]["flops"]
  table = capsys.readouterr().out
  assert "| motion tiny | 8 | float32 |" in table and "n/a" in table


def test_a_sweep_entry_skips_stages_without_its_key():
  config = bench_train.stage_configs("configs/demo.py:tiny")[0]
  assert config.stage == "latent"
  assert not bench_train.apply_override(config, "model.remat_policy=full")
  assert bench_train.apply_override(config, "train.compute_dtype=bfloat16")
  assert config.train.compute_dtype == "bfloat16"


def test_peak_table_names_the_accelerators():
  assert chips.chip_of("NVIDIA H100 80GB HBM3").peak_flops == 989e12
  assert chips.chip_of("TPU v5 lite").hbm_bytes == 16 * chips.GIB
  assert chips.chip_of("TPU v5").name == "v5p"
  assert chips.chip_of("cpu") is None
