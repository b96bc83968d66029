"""Slim copies of training data (stage 1 shards, stage 2 motion) small enough to ship to a remote
trainer.

A lent accelerator, a Colab VM or a cloud bucket with a transfer quota may not take the whole
preprocessed set (../shared/data's 170 clips are 538 MB at 128 px, two thirds of it landmarks,
audio and audio features that stage 1 never reads). `slim_shards` keeps what the stage-1
pipeline reads (`input_pipeline._LatentElement`): every `every`-th frame re-encoded at JPEG
`quality`,
the per-frame labels of those frames and the lips' box (`mouth_box`, precomputed from the
landmarks, which are dropped), optionally without the validation people. Every 3rd frame at
quality 80 of the demo's training people is 43 MB. `extract-motion` needs the full shards (every
frame, with audio): run it where the full set lives.

`slim_motion` does the same for stage 2: a copy of `extract-motion`'s output without the landmarks,
with the log-mel features in float16 and the raw audio (float16) only for the people named, whose
clips `eval-motion` measures against their speech. The demo's 170 clips go from 319 MB to 28 MB
(32 MB with the raw audio of 11 people).
"""
from __future__ import annotations

import os
import pathlib
import shutil
from typing import Sequence

import numpy as np
from tqdm import tqdm

from vasa_jax.data import face_labels, input_pipeline, records
from vasa_jax.errors import VasaInputError

# Per-frame arrays the stage-1 pipeline reads; clip-level fields kept as they are.
FRAME_KEYS = ("detected", "face_scale", "gaze", "head_pose", "mouth_open")
CLIP_KEYS = ("clip", "person", "fps", "has_speech", "main_gaze")


def slim_record(record: dict, every: int, quality: int) -> dict:
  """The stage-1 part of one clip record, at every `every`-th frame (see the module docstring)."""
  n = len(record["frames_jpeg"])
  idx = np.arange(0, n, every)
  frames = records.decode_frames(record, idx)  # (n', R, R, 3)
  out = {k: record[k] for k in CLIP_KEYS if k in record}
  for k in FRAME_KEYS:
    if k in record:
      out[k] = np.asarray(record[k])[idx]
  out["mouth_box"] = face_labels.mouth_box(np.asarray(record["landmarks"])[idx],
                                           frames.shape[1])  # (n', 4)
  out["frames_jpeg"] = [records.encode_jpeg(f, quality) for f in frames]
  return out


def slim_shards(src: str | os.PathLike, out: str | os.PathLike, *, every: int = 3,
                quality: int = 80, exclude_persons: Sequence[str] = (),
                clips_per_shard: int = 20, progress: bool = True) -> dict:
  """Writes slim shards and their index.json into `out` (an empty or new directory).

  Returns:
    {"clips", "frames", "bytes"} of what was written.
  """
  if every < 1 or not 1 <= quality <= 100:
    raise VasaInputError(f"--every {every} must be >= 1 and --quality {quality} within 1..100")
  clips = input_pipeline.ClipSource(src, exclude_persons=exclude_persons)  # keeps shards open
  extra = {"slim": {"every": every, "quality": quality, "source": str(clips.index.root)}}
  return _write_slim(clips, out, extra, lambda rec: slim_record(rec, every, quality), "slim",
                     clips_per_shard, progress)


def slim_motion_record(record: dict, keep_audio: bool) -> dict:
  """One motion record without landmarks, its features in float16, its raw audio (float16)
  only with `keep_audio`. The stage 2 pipeline and `eval-motion` cast back to float32."""
  out = {k: v for k, v in record.items() if k not in ("landmarks", "audio")}
  out["audio_feats"] = np.asarray(record["audio_feats"], np.float16)  # (T, 4, 80)
  if keep_audio and "audio" in record:
    out["audio"] = np.asarray(record["audio"], np.float16)
  return out


def slim_motion(src: str | os.PathLike, out: str | os.PathLike, *,
                audio_persons: Sequence[str] = (), clips_per_shard: int = 20,
                progress: bool = True) -> dict:
  """Writes a slim copy of an `extract-motion` directory (see the module docstring) into `out`,
  motion_stats.json included.

  Returns:
    {"clips", "frames", "bytes"} of what was written.
  """
  src = pathlib.Path(src)
  stats = src / "motion_stats.json"
  if not stats.is_file():
    raise VasaInputError(f"No motion_stats.json in {src}: pass the output directory of "
                         "`vasa-jax extract-motion`.")
  clips = input_pipeline.ClipSource(src)
  keep = set(audio_persons)
  unknown = keep - set(clips.index.persons)
  if unknown:
    raise VasaInputError(f"--audio-persons {sorted(unknown)} are not in {src}/index.json.")
  extra = dict(clips.index.extra, slim={"motion": True, "audio_persons": sorted(keep),
                                        "source": str(clips.index.root)})
  return _write_slim(clips, out, extra,
                     lambda rec: slim_motion_record(rec, rec.get("person") in keep), "motion",
                     clips_per_shard, progress, copy_files=(stats,))


def _write_slim(clips: input_pipeline.ClipSource, out, extra: dict, make, prefix: str,
                clips_per_shard: int, progress: bool, copy_files: Sequence[pathlib.Path] = ()
                ) -> dict:
  """Writes `make(record)` of every clip into `clips_per_shard`-clip shards of a new `out`,
  with `copy_files` copied in beside them (all before the index that makes `out` usable)."""
  index = clips.index
  out = pathlib.Path(out)
  if (out / records.INDEX_NAME).exists():
    raise VasaInputError(f"{out} already holds an index.json; pass a new --out directory.")
  (out / records.SHARD_DIR).mkdir(parents=True, exist_ok=True)
  for path in copy_files:
    shutil.copyfile(path, out / path.name)
  slim = records.ClipIndex(root=out.resolve(), resolution=index.resolution, fps=index.fps,
                           extra=extra)
  for start in tqdm(range(0, len(clips), clips_per_shard), desc=f"slim {prefix}", unit="shard",
                    disable=not progress):
    ks = range(start, min(start + clips_per_shard, len(clips)))
    shard = f"{records.SHARD_DIR}/{prefix}-{start // clips_per_shard:05d}.array_record"
    recs = [make(clips[k]) for k in ks]
    records.write_shard(out / shard, recs)
    for i, (k, r) in enumerate(zip(ks, recs)):
      frames = len(r["frames_jpeg"]) if "frames_jpeg" in r else clips.entries[k]["frames"]
      slim.clips.append(dict(clips.entries[k], frames=frames, shard=shard, record=i))
  slim.save()  # last, so a stopped run leaves no index that points at missing shards
  size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
  return {"clips": len(slim.clips), "frames": slim.num_frames, "bytes": size}
