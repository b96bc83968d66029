"""`vasa-jax preprocess --runner ...`: the preprocessing as an Apache Beam pipeline.

The same per-clip transforms as the single-process path (`preprocess.plan`, `run_clip`,
`add_result`), spread over Beam workers:

  list the videos (launcher) -> reshuffle -> crop + label + encode each clip (workers; one
  FaceAnalyzer per worker), write its record to a temporary shard named by its input position
  and emit its index entry as a JSON line -> the launcher takes the entries in input order,
  renames the shards to clips-00000... and writes index.json.

So a DirectRunner run on one machine and a DataflowRunner run on many workers both write what
`vasa-jax preprocess` alone writes. Shards and entries go through Beam's FileSystems, so `--out`
may be a bucket (gs://...) on Dataflow. Apache Beam is an optional extra (`pip install
'vasa-jax[beam]'`): its pins (protobuf < 7) are older than this environment's, so it is imported
only here.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time
from typing import Sequence

from vasa_jax.data import preprocess as pp
from vasa_jax.data import records
from vasa_jax.errors import VasaInputError

TMP_PREFIX = "tmp-"


def _beam():
  try:
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise VasaInputError(
        "preprocess --runner needs Apache Beam: pip install 'vasa-jax[beam]' (apache-beam); "
        "or drop --runner for the single-process path") from e
  return beam


def _tmp_shard(position: int) -> str:
  return f"{records.SHARD_DIR}/{TMP_PREFIX}{position:08d}.array_record"


def _is_remote(path: str) -> bool:
  return "://" in path


class _ProcessClip:  # mixed into a beam.DoFn by `run` (Beam is imported lazily)
  """Worker side: crops, labels and encodes one clip; writes its record to a temporary shard
  and emits its index entry (or skip) as one JSON line."""

  def __init__(self, out_dir: str, resolution: int, max_seconds: float):
    self.out_dir, self.resolution, self.max_seconds = out_dir, resolution, max_seconds
    self.analyzer = None

  def setup(self):
    from vasa_jax.data import face_crop  # pylint: disable=import-outside-toplevel
    self.analyzer = face_crop.FaceAnalyzer(num_threads=1)

  def process(self, item):
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    position, task = item
    t0 = time.process_time()
    result = pp.run_clip(task, resolution=self.resolution, analyzer=self.analyzer,
                         max_seconds=self.max_seconds)
    if result.payload is not None:
      # ArrayRecord writes local files: write here, then copy to the (maybe remote) output.
      with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "shard.array_record")
        records.write_shard(local, [result.payload])
        with open(local, "rb") as src, FileSystems.create(
            FileSystems.join(self.out_dir, _tmp_shard(position))) as dst:
          dst.write(src.read())
    yield json.dumps({"position": position, "entry": result.entry, "skipped": result.skipped,
                      "cpu_s": time.process_time() - t0})


def _load_index(out: str, resolution: int) -> records.ClipIndex:
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  if not _is_remote(out):
    return pp.open_index(pathlib.Path(out), resolution)
  path = FileSystems.join(out, records.INDEX_NAME)
  if not FileSystems.exists(path):
    return records.ClipIndex(root=pathlib.Path("."), resolution=resolution, fps=pp.FPS)
  with FileSystems.open(path) as f:
    data = json.loads(f.read().decode())
  known = {"version", "resolution", "fps", "clips", "skipped"}
  if data.get("resolution") not in (None, resolution):
    raise VasaInputError(f"{out} holds clips at resolution {data['resolution']}, not "
                         f"{resolution}; use another output directory.")
  return records.ClipIndex(root=pathlib.Path("."), resolution=resolution,
                           fps=data.get("fps", pp.FPS), clips=data.get("clips", []),
                           skipped=data.get("skipped", []),
                           extra={k: v for k, v in data.items() if k not in known})


def _save_index(index: records.ClipIndex, out: str):
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  if not _is_remote(out):
    index.save()
    return
  with FileSystems.create(FileSystems.join(out, records.INDEX_NAME)) as f:
    f.write(json.dumps(index.to_json(), indent=1).encode())


def _finish(lines: Sequence[str], todo: Sequence[pp.ClipTask], index: records.ClipIndex,
            out: str) -> float:
  """Launcher side: the workers' results in input order -> final shard names and index.json.

  Returns:
    The workers' CPU seconds over all clips.
  """
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  shard_no = pp._next_shard_number(index)  # pylint: disable=protected-access
  seen = set(index.clip_names)
  cpu = 0.0
  for item in sorted((json.loads(line) for line in lines), key=lambda d: d["position"]):
    cpu += item["cpu_s"]
    tmp = FileSystems.join(out, _tmp_shard(item["position"]))
    result = pp.ClipResult(todo[item["position"]], None, item["entry"], item["skipped"])

    def move(shard, _payload, tmp=tmp):
      FileSystems.rename([tmp], [FileSystems.join(out, shard)])

    if pp.add_result(index, result, shard_no, seen, move):
      shard_no += 1
    elif result.entry is not None:  # a duplicate name: its shard is not used
      FileSystems.delete([tmp])
  _save_index(index, out)
  return cpu


def run(inputs, out_dir, *, persons_csv=None, resolution: int = 128, runner: str = "DirectRunner",
        beam_args: Sequence[str] = (), max_seconds: float = 60.0, retry_skipped: bool = False,
        progress: bool = True) -> dict:
  """Preprocesses videos with Apache Beam; writes what `preprocess.preprocess` writes.

  Args:
    inputs: directories, globs or video files, listed on the launcher (on Dataflow: paths the
      workers can read too, e.g. a gcsfuse mount).
    out_dir: output directory, local or a bucket (gs://...); an existing index there is
      resumed, as in `preprocess`.
    persons_csv: manifest with `path` and `person` columns.
    resolution: face crop size R.
    runner: Beam runner (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...).
    beam_args: further Beam pipeline options, passed through (e.g. --direct_num_workers=4,
      --project=..., --region=..., --temp_location=gs://...).
    max_seconds: cap on the clip length kept.
    retry_skipped: also retry files the index lists as skipped.
    progress: print the summary.

  Returns:
    The summary of `preprocess.preprocess`, plus `cpu_seconds_per_clip` (worker CPU time).
  """
  beam = _beam()
  # pylint: disable=import-outside-toplevel
  from apache_beam.io.filesystems import FileSystems
  from apache_beam.options.pipeline_options import PipelineOptions

  out = str(out_dir) if _is_remote(str(out_dir)) else str(pathlib.Path(out_dir).resolve())
  index = _load_index(out, resolution)
  tasks = pp.plan(inputs, persons_csv=persons_csv)
  todo, already = pp.pending(tasks, index, retry_skipped)
  options = PipelineOptions([f"--runner={runner}", *beam_args])
  results_prefix = FileSystems.join(out, f"{TMP_PREFIX}results")

  class ProcessClip(_ProcessClip, beam.DoFn):
    pass

  start = time.time()
  cpu = 0.0
  if todo:
    with beam.Pipeline(options=options) as p:
      _ = (p
           | "List" >> beam.Create(list(enumerate(todo)))
           | "Spread" >> beam.Reshuffle()  # one clip per work item, on any worker
           | "Clip" >> beam.ParDo(ProcessClip(out, resolution, max_seconds))
           | "Results" >> beam.io.WriteToText(results_prefix, file_name_suffix=".jsonl"))
    files = [m.path for m in FileSystems.match([results_prefix + "*"])[0].metadata_list]
    lines = []
    for name in files:
      with FileSystems.open(name) as f:
        lines += [line for line in f.read().decode().splitlines() if line.strip()]
    cpu = _finish(lines, todo, index, out)
    FileSystems.delete(files)
  else:
    _save_index(index, out)
  results = [pp.ClipResult(t, None, None, None) for t in todo]
  summary = pp.summarize(index, results, already, time.time() - start, pathlib.Path(out))
  summary["cpu_seconds_per_clip"] = round(cpu / len(todo), 2) if todo else None
  if progress:
    print(pp.format_summary(summary))
    if todo:
      print(f"worker CPU: {summary['cpu_seconds_per_clip']} s per clip ({len(todo)} clips, "
            f"runner {runner})")
  return summary
