"""Per-frame emotion labels from the emotion network, for stage 2's emotion control (issue 19).

VASA-1 conditions on an emotion offset; the data only names an emotion for MEAD and CREMA-D
clips (their file names). The FER network of `facenets.nets.emotion_probs` labels every frame of
every clip instead: `vasa-jax preprocess` stores its probabilities in each record as
`emotion_probs` (T, 7) float16 in the network's class order (`nets.EMOTIONS`), `extract-motion`
carries them into the motion records, and `vasa-jax label-emotions` adds them to shards or motion
data written before (on the shared 2-core CPU 220 s for 23465 frames, JPEG decoding and shard
rewriting included, against 1441 s for preprocessing them).

Stage 2 (`input_pipeline._MotionElement`) turns a window's probabilities into the control vector with
`control_vector`: their mean over the window, mapped onto vasa-jax's emotion list (contempt, which
FER lacks, gets 0). A file-name label, where there is one, wins as a one-hot vector.
"""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np

from vasa_jax.data import records
from vasa_jax.errors import VasaInputError

KEY = "emotion_probs"
BATCH = 32
# The network's FER-2013 classes (`facenets.nets.EMOTIONS`, not imported here so data loading
# needs no jax) -> vasa-jax emotion names (`clip_labels.EMOTIONS`).
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_TO_VASA = {"angry": "angry", "disgust": "disgusted", "fear": "fear", "happy": "happy",
               "sad": "sad", "surprise": "surprised", "neutral": "neutral"}
WHY = "per-frame emotion labels (vasa-jax preprocess / label-emotions)"


def available() -> bool:
  """Whether the emotion network has been fetched (nothing is loaded)."""
  from vasa_jax.facenets import store
  return store.available(("emotion",))


def load_nets():
  """The emotion network (`FaceNets`); `FaceNetsMissing` names the fetch command."""
  from vasa_jax.facenets import nets
  return nets.FaceNets.load(("emotion",), why=WHY)


def clip_probs(nets, frames: np.ndarray, batch: int = BATCH) -> np.ndarray:
  """(T, 7) float32 emotion probabilities of (T, R, R, 3) uint8 head crops (`face_crop` framing).

  Frames go in fixed batches of `batch` (the last one padded), so every clip length reuses one
  compiled function.
  """
  run = _compiled(nets)
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
    raise VasaInputError(f"Expected (T, R, R, 3) frames, got {frames.shape}.")
  out = []
  for i in range(0, len(frames), batch):
    chunk = frames[i:i + batch]
    pad = batch - len(chunk)
    x = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
    out.append(np.asarray(run(x))[:len(chunk)])
  return np.concatenate(out).astype(np.float32)


_RUNS: dict = {}


def _compiled(nets):
  """One jitted uint8 -> probabilities function per loaded `FaceNets` (they hash by identity)."""
  if id(nets) not in _RUNS:
    import jax
    import jax.numpy as jnp

    from vasa_jax.facenets import nets as nets_lib
    _RUNS.clear()  # keep at most one: a new FaceNets replaces the old
    _RUNS[id(nets)] = (nets, jax.jit(
        lambda x: nets_lib.emotion_probs(nets, x.astype(jnp.float32) / 127.5 - 1)))
  return _RUNS[id(nets)][1]


def control_vector(probs: np.ndarray, emotions: Sequence[str]) -> np.ndarray:
  """The emotion control (E,) of a stretch of frames: the mean of their (T, 7) probabilities in
  `FER_CLASSES` order, placed at the matching names of `emotions` (others, e.g. contempt, 0)."""
  mean = np.asarray(probs, np.float32).reshape(-1, len(FER_CLASSES)).mean(0)  # (7,)
  out = np.zeros((len(emotions),), np.float32)
  for k, fer in enumerate(FER_CLASSES):
    name = FER_TO_VASA[fer]
    if name in emotions:
      out[list(emotions).index(name)] = mean[k]
  return out


def add_to_record(record: dict, nets=None, source: dict | None = None) -> dict:
  """`record` with KEY: copied from `source` (the clip's record elsewhere, same length) when it
  has them, else computed from the record's own frames with `nets`."""
  n = len(record["face_scale"])
  if source is not None and KEY in source:
    probs = np.asarray(source[KEY])
    if len(probs) != n:
      raise VasaInputError(f"Clip {record.get('clip')!r}: {len(probs)} labelled frames in the "
                           f"source shards, {n} here; pass the shards this data was made from.")
  elif "frames_jpeg" in record or "frames" in record:
    if nets is None:
      nets = load_nets()
    frames = records.decode_frames(record, range(len(record.get("frames_jpeg",
                                                                record.get("frames", [])))))
    probs = clip_probs(nets, frames)
  else:
    raise VasaInputError(f"Clip {record.get('clip')!r} has no frames (motion data?) and no "
                         "labelled source record: pass --source SHARDS, the preprocess output "
                         "it was extracted from.")
  return dict(record, **{KEY: probs.astype(np.float16)})


def label_data(data_dir: str | os.PathLike, *, source: str | os.PathLike | None = None,
               overwrite: bool = False, progress: bool = True) -> dict:
  """Adds KEY to every record of a preprocess (or extract-motion, slim) output in place.

  Each shard is rewritten atomically once all its records are labelled, so a stop leaves every
  shard either as it was or complete, and a rerun skips the labelled ones.

  Args:
    data_dir: directory with index.json and shards/.
    source: for motion data (no frames): the preprocess output it came from; labels are copied
      from there (by clip name) and computed from its frames where it has none.
    overwrite: relabel records that already have KEY.
    progress: show a progress bar.
  Returns:
    {"labelled": records changed, "already": records skipped, "shards": shards rewritten}.
  """
  from tqdm import tqdm
  index = records.ClipIndex.load(data_dir)
  src = records.ClipIndex.load(source) if source is not None else None
  src_entries = {e["clip"]: e for e in src.clips} if src is not None else {}
  shards = sorted({index.shard_path(e) for e in index.clips})
  nets = None
  done = {"labelled": 0, "already": 0, "shards": 0}
  for shard in tqdm(shards, desc="label-emotions", unit="shard", disable=not progress):
    recs = [records.read_record(shard, i) for i in range(_num_records(shard))]
    changed = False
    for i, rec in enumerate(recs):
      if KEY in rec and not overwrite:
        done["already"] += 1
        continue
      src_rec = src.read(src_entries[rec["clip"]]) if rec.get("clip") in src_entries else None
      if (src_rec is not None and KEY not in src_rec) or (src_rec is None
                                                          and "frames_jpeg" in rec):
        nets = nets or load_nets()
      if src_rec is not None and KEY not in src_rec:
        src_rec = add_to_record(src_rec, nets)  # labels from the source's frames
      recs[i] = add_to_record(rec, nets, src_rec)
      done["labelled"] += 1
      changed = True
    if changed:
      records.write_shard(shard, recs)
      done["shards"] += 1
  index.extra["emotion_labels"] = {"key": KEY, "classes": list(FER_CLASSES),
                                   "network": "facenets emotion (FER-2013 mini-Xception)"}
  index.save()
  return done


def _num_records(shard: pathlib.Path) -> int:
  from array_record.python import array_record_module
  reader = array_record_module.ArrayRecordReader(str(shard))
  try:
    return reader.num_records()
  finally:
    reader.close()
