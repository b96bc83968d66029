"""`vasa-jax preprocess --runner DirectRunner` writes exactly what the single-process path does.

Real clips (two short 224x224 clips of two people, 2 s each) plus a corrupt file, through Beam
with two worker processes, against `preprocess.preprocess` in one process: the same index.json
(entries, order, shard names, skips) and byte-identical shards.
"""
from __future__ import annotations

import json

import pytest

from vasa_jax import cli
from vasa_jax.data import preprocess, records

beam = pytest.importorskip(
    "apache_beam", reason="Apache Beam is an optional extra: pip install 'vasa-jax[beam]'")

from vasa_jax.data import beam_preprocess  # noqa: E402  pylint: disable=wrong-import-position
from test_preprocess import CLIP_A, CLIP_B, R  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="module")
def inputs(shared_data, tmp_path_factory):
  root = tmp_path_factory.mktemp("beam_inputs")
  broken = root / "broken_clip.mp4"
  broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
  return [str(shared_data / "clips" / CLIP_A), str(shared_data / "clips" / CLIP_B), str(broken)]


def _tree(out):
  index = json.loads((out / records.INDEX_NAME).read_text())
  shards = {p.name: p.read_bytes() for p in sorted((out / records.SHARD_DIR).iterdir())}
  return index, shards


def test_direct_runner_output_equals_single_process_output(shared_data, inputs, tmp_path,
                                                           monkeypatch):
  csv = str(shared_data / "manifest.csv")
  single = tmp_path / "single"
  preprocess.preprocess(inputs, single, persons_csv=csv, resolution=R, progress=False,
                        max_seconds=2.0)
  # Through the CLI: Beam's own options (two worker processes) pass through unparsed.
  real_run = beam_preprocess.run
  monkeypatch.setattr(beam_preprocess, "run",
                      lambda *a, **kw: real_run(*a, max_seconds=2.0, **kw))
  out = tmp_path / "beam"
  code = cli.main(["preprocess", "--input", *inputs, "--out", str(out), "--persons", csv,
                   "--resolution", str(R), "--runner", "DirectRunner",
                   "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
  assert code == 0
  index_single, shards_single = _tree(single)
  index_beam, shards_beam = _tree(out)
  assert [c["clip"] for c in index_beam["clips"]] == [
      "Talking-Face_PC-AVS__misc_Input_00002",
      "Talking-Face_PC-AVS__misc_Pose_Source_620900105"]
  assert [c["person"] for c in index_beam["clips"]] == ["vox_id5176", "vox_620900105"]
  assert [s["path"].endswith("broken_clip.mp4") for s in index_beam["skipped"]] == [True]
  assert index_beam == index_single
  assert list(shards_beam) == ["clips-00000.array_record", "clips-00001.array_record"]
  assert shards_beam == shards_single  # byte-identical records
  assert not [p for p in out.iterdir() if p.name.startswith(beam_preprocess.TMP_PREFIX)]


def test_rerun_on_a_finished_directory_does_nothing(shared_data, inputs, tmp_path):
  out = tmp_path / "beam"
  kw = dict(persons_csv=shared_data / "manifest.csv", resolution=R, progress=False,
            max_seconds=2.0, runner="DirectRunner")
  first = beam_preprocess.run(inputs[:1], out, **kw)
  assert first["written"] == 1 and first["cpu_seconds_per_clip"] > 0
  again = beam_preprocess.run(inputs[:1], out, **kw)
  assert again["written"] == 0 and again["already_done"] == 1 and again["total_clips"] == 1


def test_beam_options_need_a_runner(capsys):
  with pytest.raises(SystemExit):
    cli.main(["preprocess", "--input", "x", "--out", "y", "--direct_num_workers=2"])
  assert "need --runner" in capsys.readouterr().err
