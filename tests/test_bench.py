"""`vasa-jax bench` runs on the tiny pipeline and reports every part (no timing assertions)."""
import json

import pytest


def test_bench_tiny_reports_every_part(tmp_path, capsys):
  from vasa_jax import bench
  out = tmp_path / "bench.json"
  result = bench.run("configs/demo.py:tiny", (), seconds=1.0, out=str(out), repeats=1,
                     paste_size=256)
  printed = capsys.readouterr().out
  assert "end to end offline" in printed and "| part" in printed
  saved = json.loads(out.read_text())
  parts = [r["part"] for r in saved["rows"]]
  assert any(p.startswith("motion window") and "50 steps" in p for p in parts)
  assert any(p.startswith("motion window") and "10 steps" in p for p in parts)
  assert any(p.startswith("decoder") for p in parts)
  assert result["offline_fps"] > 0 and result["stream_fps"] > 0
  assert result["stream_first_frame_compute_s"] > 0
  assert saved["device"].startswith("cpu")
  # Streaming latency rows: the default (first window = W) and a short first window.
  lat = {row["first_window"]: row for row in saved["stream_latency"]}
  w = saved["window"]
  assert sorted(lat) == [min(5, w), w] and "streaming, first window" in printed
  assert lat[5]["audio_buffering_s"] < lat[w]["audio_buffering_s"] == saved[
      "stream_audio_buffering_s"]
  assert all(row["first_frame_compute_s"] > 0 for row in lat.values())
  assert all(r["time_s"] > 0 for r in saved["rows"] if "difference" not in r["part"])
  # Paste-back: its cost per frame and the offline and streaming rates with it on.
  assert any(p.startswith("decoder + paste-back to 256x256") for p in parts)
  assert any("paste-back alone" in p for p in parts)
  assert any(p.startswith("end to end offline, paste-back 256") for p in parts)
  assert saved["offline_paste_fps"] > 0 and saved["stream_paste_fps"] > 0
  assert saved["paste_s_per_frame"] >= 0 and "paste-back to 256x256" in printed


def test_bench_reports_the_levers(tmp_path, capsys):
  from vasa_jax import bench
  out = tmp_path / "bench.json"
  bench.run("configs/demo.py:tiny", ("--config.inference.render_batch=4",
                                     "--config.inference.compute_dtype=bfloat16"),
            seconds=1.0, out=str(out), repeats=1, first_window=1)
  printed = capsys.readouterr().out
  saved = json.loads(out.read_text())
  assert saved["compute_dtype"] == "bfloat16" and saved["render_batch"] == 4
  assert "bfloat16, 4 frames per decoder call" in printed
  parts = [r["part"] for r in saved["rows"]]
  assert f"decoder ({saved['window']} frames per call)" in parts
  assert "decoder (4 frames per call)" in parts
  lat = {row["first_window"]: row for row in saved["stream_latency"]}
  # 1 frame (640 samples) + the 176 samples its log-mel rows reach, in whole 20 ms chunks.
  assert lat[1]["chunk_ms"] == 20 and lat[1]["audio_buffering_s"] == pytest.approx(0.06)
