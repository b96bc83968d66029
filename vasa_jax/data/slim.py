"""Slim stage-1 shards: a copy of preprocessed shards small enough to ship to a remote trainer.

A lent accelerator, a Colab VM or a cloud bucket with a transfer quota may not take the whole
preprocessed set (../shared/data's 170 clips are 538 MB at 128 px, two thirds of it landmarks,
audio and audio features that stage 1 never reads). `slim_shards` keeps what the stage-1
pipeline reads (`pipelines._LatentElement`): every `every`-th frame re-encoded at JPEG `quality`,
the per-frame labels of those frames and the lips' box (`mouth_box`, precomputed from the
landmarks, which are dropped), optionally without the validation people. Every 3rd frame at
quality 80 of the demo's training people is 43 MB. Stage 2 and `extract-motion` need the full
shards (every frame, with audio): run those where the full set lives.
"""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np
from tqdm import tqdm

from vasa_jax.data import face_labels, pipelines, records
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
  clips = pipelines.ClipSource(src, exclude_persons=exclude_persons)  # keeps shards open
  index = clips.index
  out = pathlib.Path(out)
  if (out / records.INDEX_NAME).exists():
    raise VasaInputError(f"{out} already holds an index.json; pass a new --out directory.")
  (out / records.SHARD_DIR).mkdir(parents=True, exist_ok=True)
  slim = records.ClipIndex(root=out.resolve(), resolution=index.resolution, fps=index.fps,
                           extra={"slim": {"every": every, "quality": quality,
                                           "source": str(index.root)}})
  for start in tqdm(range(0, len(clips), clips_per_shard), desc="slim-shards", unit="shard",
                    disable=not progress):
    ks = range(start, min(start + clips_per_shard, len(clips)))
    shard = f"{records.SHARD_DIR}/slim-{start // clips_per_shard:05d}.array_record"
    recs = [slim_record(clips[k], every, quality) for k in ks]
    records.write_shard(out / shard, recs)
    slim.clips += [dict(clips.entries[k], frames=len(r["frames_jpeg"]), shard=shard, record=i)
                   for i, (k, r) in enumerate(zip(ks, recs))]
  slim.save()  # last, so a stopped run leaves no index that points at missing shards
  size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
  return {"clips": len(slim.clips), "frames": slim.num_frames, "bytes": size}
