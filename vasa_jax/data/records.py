"""Per-clip records on disk: msgpack-encoded dicts in ArrayRecord shards, plus `index.json`.

One record holds one clip (see the table in docs/design.md): strings, floats, bools, numpy
arrays (dtype and shape kept by `flax.serialization`) and the frames as a list of JPEG byte
strings, so a stage-1 sample can decode just the 3-4 frames it needs (`decode_frames`).
Motion records written by `vasa-jax extract-motion` use the same functions: they add `z_pose`
and `z_dyn` and carry no `frames_jpeg`.

`index.json` lists every clip with its shard (a path relative to the index directory) and its
record number in that shard; `ClipIndex` loads and saves it (atomically).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
from typing import Any, Iterable, Sequence

from array_record.python import array_record_module
import numpy as np
from flax import serialization
from PIL import Image

from vasa_jax.errors import VasaInputError
from vasa_jax.fileio import atomic_path, atomic_write_text

INDEX_VERSION = 1
INDEX_NAME = "index.json"
SHARD_DIR = "shards"
JPEG_QUALITY = 95
WRITER_OPTIONS = "group_size:1,uncompressed"


# --------------------------------------------------------------------------- JPEG frames


def encode_jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  """Encodes one (H, W, 3) uint8 frame as JPEG bytes."""
  frame = np.asarray(frame)
  if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f"Expected an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}")
  buf = io.BytesIO()
  # 4:4:4 chroma keeps colour edges (lips, eyes) sharp at small resolutions.
  Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=0)
  return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
  """Decodes JPEG bytes into an (H, W, 3) uint8 array."""
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


# --------------------------------------------------------------------------- records


def _to_serialisable(value: Any) -> Any:
  """Turns numpy scalars into Python scalars and lists/tuples of arrays into lists."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return np.ascontiguousarray(value)
  if isinstance(value, dict):
    return {str(k): _to_serialisable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_serialisable(v) for v in value]
  return value


def encode_clip(record: dict, *, quality: int = JPEG_QUALITY) -> bytes:
  """Serialises one clip (or motion) record to bytes.

  Args:
    record: a dict as in docs/design.md. When it holds `frames` ((T, R, R, 3) uint8) and no
      `frames_jpeg`, the frames are JPEG-encoded into `frames_jpeg` (and `frames` dropped).
    quality: JPEG quality for those frames.

  Returns:
    msgpack bytes (via `flax.serialization.msgpack_serialize`).
  """
  record = dict(record)
  frames = record.pop("frames", None)
  if frames is not None and "frames_jpeg" not in record:
    record["frames_jpeg"] = [encode_jpeg(f, quality) for f in np.asarray(frames)]
  return serialization.msgpack_serialize(_to_serialisable(record))


def decode_clip(data: bytes, *, decode_frames: bool = True) -> dict:
  """Restores a record written by `encode_clip`.

  Args:
    data: the record bytes.
    decode_frames: also decode every JPEG frame into `frames` ((T, R, R, 3) uint8). Leave it
      False when only a few frames are needed and call `decode_frames(record, indices)`.

  Returns:
    The record dict (numpy arrays keep dtype and shape; `frames_jpeg` stays a list of bytes).
  """
  record = serialization.msgpack_restore(data)
  if not isinstance(record, dict):
    raise VasaInputError(f"Not a clip record (decoded to {type(record).__name__}).")
  for key, value in record.items():
    if isinstance(value, np.bool_):
      record[key] = bool(value)
  if decode_frames and "frames_jpeg" in record:
    record["frames"] = _decode_frames(record["frames_jpeg"], range(len(record["frames_jpeg"])))
  return record


def _decode_frames(frames_jpeg: Sequence[bytes], indices: Iterable[int]) -> np.ndarray:
  frames = [decode_jpeg(frames_jpeg[int(i)]) for i in indices]
  if not frames:
    return np.zeros((0, 0, 0, 3), np.uint8)
  return np.stack(frames)  # (n, R, R, 3)


def decode_frames(record: dict, indices: Sequence[int]) -> np.ndarray:
  """Decodes only the frames `indices` of a record.

  Args:
    record: a dict from `decode_clip` (with `frames_jpeg`, or already-decoded `frames`).
    indices: frame numbers, in [0, T).

  Returns:
    (n, R, R, 3) uint8.
  """
  if "frames" in record:
    return np.asarray(record["frames"])[np.asarray(indices, dtype=np.int64)]
  if "frames_jpeg" not in record:
    raise VasaInputError(
        f"Record {record.get('clip', '?')!r} holds no frames (a motion record?); stage 1 needs "
        "the shards written by `vasa-jax preprocess`.")
  return _decode_frames(record["frames_jpeg"], indices)


# --------------------------------------------------------------------------- shards


def write_shard(path: str | os.PathLike, records: Sequence[dict | bytes]) -> None:
  """Writes records (dicts or already-encoded bytes) to an ArrayRecord file, atomically."""
  with atomic_path(path, suffix=".tmp.array_record") as tmp:
    # One record per chunk for random access; uncompressed because the payload is mostly JPEG
    # and float arrays (zstd saved ~7% but made reads 3x slower: ~9 ms vs 3 ms for a 3 MB clip).
    writer = array_record_module.ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
    try:
      for rec in records:
        writer.write(rec if isinstance(rec, bytes) else encode_clip(rec))
    finally:
      writer.close()


def read_record_bytes(shard_path: str | os.PathLike, i: int) -> bytes:
  """Reads the raw bytes of record `i` of one ArrayRecord shard."""
  shard_path = str(shard_path)
  if not os.path.isfile(shard_path):
    raise VasaInputError(f"Shard {shard_path} not found; rerun `vasa-jax preprocess`.")
  reader = array_record_module.ArrayRecordReader(shard_path)
  try:
    n = reader.num_records()
    if not 0 <= i < n:
      raise VasaInputError(f"Shard {shard_path} has {n} records; record {i} does not exist.")
    return reader.read([int(i)])[0]
  finally:
    reader.close()


def read_record(shard_path: str | os.PathLike, i: int, *, decode_frames: bool = False) -> dict:
  """Reads and decodes record `i` of a shard (frames left as JPEG bytes unless asked)."""
  return decode_clip(read_record_bytes(shard_path, i), decode_frames=decode_frames)


# --------------------------------------------------------------------------- index.json


def _index_path(path_or_dir: str | os.PathLike) -> pathlib.Path:
  p = pathlib.Path(path_or_dir)
  return p / INDEX_NAME if p.is_dir() or p.suffix != ".json" else p


@dataclasses.dataclass
class ClipIndex:
  """The content of `index.json` (see docs/design.md), bound to the directory it lives in.

  Clip entries are dicts with at least `clip`, `person`, `frames`, `fps`, `resolution`,
  `has_speech`, `shard` (relative to `root`) and `record`; preprocessing adds a few statistics
  (`face_scale_mean`, `face_scale_std`, `source`). Unknown keys are kept on a round trip.
  """
  root: pathlib.Path
  resolution: int | None = None
  fps: float = 25
  clips: list[dict] = dataclasses.field(default_factory=list)
  skipped: list[dict] = dataclasses.field(default_factory=list)
  extra: dict = dataclasses.field(default_factory=dict)
  version: int = INDEX_VERSION

  @classmethod
  def load(cls, path_or_dir: str | os.PathLike) -> ClipIndex:
    """Loads `DIR/index.json` (or an explicit `.json` path)."""
    path = _index_path(path_or_dir)
    if not path.is_file():
      raise VasaInputError(
          f"No index at {path}: pass the output directory of `vasa-jax preprocess` (or "
          "`vasa-jax extract-motion`), which holds index.json and shards/.")
    try:
      data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise VasaInputError(f"{path} is not valid JSON ({e}); rerun preprocessing.") from e
    known = {"version", "resolution", "fps", "clips", "skipped"}
    return cls(root=path.parent.resolve(), resolution=data.get("resolution"),
               fps=data.get("fps", 25), clips=list(data.get("clips", [])),
               skipped=list(data.get("skipped", [])),
               extra={k: v for k, v in data.items() if k not in known},
               version=data.get("version", INDEX_VERSION))

  @classmethod
  def load_or_new(cls, out_dir: str | os.PathLike, **kwargs) -> ClipIndex:
    path = _index_path(out_dir)
    if path.is_file():
      return cls.load(path)
    return cls(root=pathlib.Path(out_dir).resolve(), **kwargs)

  def to_json(self) -> dict:
    data = {"version": self.version, "resolution": self.resolution, "fps": self.fps}
    data.update(self.extra)
    data["clips"] = self.clips
    data["skipped"] = self.skipped
    return data

  def save(self, path_or_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Writes index.json atomically (into `root` unless a path is given)."""
    path = _index_path(path_or_dir if path_or_dir is not None else self.root)
    if path_or_dir is None or path.parent.resolve() == self.root:
      atomic_write_text(path, json.dumps(self.to_json(), indent=1))
    else:
      # Saved elsewhere: rewrite shard paths relative to the new location.
      moved = dataclasses.replace(self, root=path.parent.resolve(), clips=[
          dict(c, shard=os.path.relpath(self.shard_path(c), path.parent.resolve()))
          for c in self.clips])
      atomic_write_text(path, json.dumps(moved.to_json(), indent=1))
    return path

  def shard_path(self, entry: dict) -> pathlib.Path:
    """Absolute path of the shard holding `entry`."""
    return (self.root / entry["shard"]).resolve()

  def read(self, entry_or_pos: dict | int, *, decode_frames: bool = False) -> dict:
    """Reads the record of one clip entry (or of the clip at position `i` in `clips`)."""
    entry = self.clips[entry_or_pos] if isinstance(entry_or_pos, int) else entry_or_pos
    return read_record(self.shard_path(entry), entry["record"], decode_frames=decode_frames)

  @property
  def persons(self) -> list[str]:
    return sorted({c["person"] for c in self.clips})

  @property
  def clip_names(self) -> set[str]:
    return {c["clip"] for c in self.clips}

  @property
  def num_frames(self) -> int:
    return int(sum(c["frames"] for c in self.clips))
