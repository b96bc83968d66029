"""Grain input pipelines for both stages (element specs in docs/design.md).

Both follow the flax examples' grain pattern:

  MapDataset.range(num_elements)[process_index::process_count]   # host shard
    .shuffle(seed)                                               # new order every epoch
    .random_map(make_element, seed)                              # rng seeded by element index
    .repeat()                                                    # infinite, reseeded per epoch
    .to_iter_dataset()
    .batch(batch_size // process_count, drop_remainder=True)     # host-local batches

Every random choice inside an element comes from the generator grain derives from the
element's global index, so the stream is deterministic and `iterator.get_state()` /
`set_state()` resume it exactly.

Stage 1 (`make_latent_dataset`): element index -> (clip, frame) over all frames of the split.
`source` is that frame; `driver` and `driver2` are other random frames of the same clip; `other`
is a random frame of a clip of another person. With a single person `other` comes from another
clip of that person, and with a single clip it is a horizontally flipped random frame (the
cross-identity loss then degenerates into a mirror-consistency loss, which is the best a one-clip
data set allows). With `config.data.augment`, one colour jitter is applied to source, driver and
driver2 alike (a per-sample colour change, so the model cannot carry colour through the motion
codes) and the drivers get a small random scale/shift.
Each element also carries `motion_labels` (3, 5) float32, the label vectors of source, driver and
driver2 (`vasa_jax.models.motion_labels`: head pose, log face scale, mouth opening; the drivers'
scale includes their random zoom), `labels_valid` (3,) float32 (zeros for synthetic data), and
`mouth_box` (3, 4) float32, the lips' box of each (`face_labels.mouth_box`, moved with the
drivers' zoom and shift; zeros for synthetic data).

Stage 2 (`make_motion_dataset`): element index -> (clip, window start) over windows of W frames
(starts 0, K, K + W/2, ...; all but the first jittered by up to W/2 frames). The first window of
a clip has `has_prev` False and zero context; clips shorter than W frames are left out. With
`config.data.audio_augment`, training windows get a random gain, spectral tilt and frequency mask
on their log-mel features (`augment_log_mel`), one per window and its context.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Sequence

from array_record.python import array_record_module
import grain
import numpy as np
from PIL import Image

from vasa_jax.data import augment, clip_labels, emotion_labels, face_labels, records, splits
from vasa_jax.data.synthetic import SyntheticFaces, SyntheticMotion
from vasa_jax.errors import VasaInputError
from vasa_jax.models import layers, motion_labels

# --------------------------------------------------------------------------- clip sources


class ClipSource:
  """Random access over the clip records listed in an index (frames left as JPEG).

  Args:
    index_path_or_dir: an output directory of `vasa-jax preprocess` / `extract-motion`, or its
      index.json; a `ClipIndex` works too.
    persons: keep only these persons (None: all).
    exclude_persons: drop these persons.
    entries: explicit clip entries of the index to serve (overrides the person filters).
  """

  def __init__(self, index_path_or_dir, persons: Sequence[str] | None = None,
               exclude_persons: Sequence[str] | None = None, entries: list[dict] | None = None):
    self.index = (index_path_or_dir if isinstance(index_path_or_dir, records.ClipIndex)
                  else records.ClipIndex.load(index_path_or_dir))
    if entries is None:
      entries = self.index.clips
      if persons is not None:
        entries = [c for c in entries if c["person"] in set(persons)]
      if exclude_persons:
        entries = [c for c in entries if c["person"] not in set(exclude_persons)]
    self.entries = list(entries)
    self._readers = {}

  def __len__(self) -> int:
    return len(self.entries)

  def __getitem__(self, k: int) -> dict:
    """The decoded record of clip k (frames not decoded)."""
    return records.decode_clip(self.read_bytes(k), decode_frames=False)

  def read_bytes(self, k: int) -> bytes:
    entry = self.entries[k]
    path = str(self.index.shard_path(entry))
    reader = self._readers.get(path)
    if reader is None:
      if not os.path.isfile(path):
        raise VasaInputError(f"Shard {path} listed in {self.index.root}/index.json is missing; "
                             "rerun preprocessing or fix the index.")
      reader = array_record_module.ArrayRecordReader(path)
      self._readers[path] = reader
    return reader.read([int(entry["record"])])[0]

  def frames(self, k: int, indices: Sequence[int]) -> np.ndarray:
    """(n, R, R, 3) uint8: only the requested frames of clip k are decoded."""
    return records.decode_frames(self[k], indices)

  def __getstate__(self):
    # Readers hold open files; grain workers reopen them after unpickling.
    state = dict(self.__dict__)
    state["_readers"] = {}
    return state


# --------------------------------------------------------------------------- stage 1 elements


def _resize(frames: np.ndarray, resolution: int) -> np.ndarray:
  if frames.shape[1] == resolution and frames.shape[2] == resolution:
    return frames
  return np.stack([np.asarray(Image.fromarray(f).resize((resolution, resolution),
                                                        Image.BILINEAR)) for f in frames])


@dataclasses.dataclass(frozen=True)
class LabelStats:
  """Data-set statistics that centre the label vectors (`config.model.label_*`)."""
  log_scale_mean: float = 0.0
  mouth_mean: float = 0.0
  mouth_std: float = 1.0


def label_stats(clips) -> LabelStats:
  """`LabelStats` of the frames of `clips` (a ClipSource; reads each record once, no frames).

  `configs/latent.py` holds these for ../shared/data; recompute them for a new data set.
  """
  log_scale, mouth = [], []
  for k in range(len(clips)):
    rec = clips[k]
    log_scale.append(np.log(np.maximum(np.asarray(rec["face_scale"], np.float64), 1e-6)))
    mouth.append(np.asarray(rec["mouth_open"], np.float64))
  log_scale, mouth = np.concatenate(log_scale), np.concatenate(mouth)
  log_scale, mouth = log_scale[np.isfinite(log_scale)], mouth[np.isfinite(mouth)]
  if not log_scale.size or not mouth.size:
    return LabelStats()
  return LabelStats(float(log_scale.mean()), float(mouth.mean()), float(max(mouth.std(), 1e-6)))


@dataclasses.dataclass
class _LatentElement:
  """(frame index, rng) -> stage-1 element; a picklable callable for grain workers."""
  clips: object  # ClipSource | SyntheticFaces
  offsets: np.ndarray  # (num_clips + 1,) cumulative frame counts
  resolution: int
  augment: bool
  label_cfg: object = None  # config.model with label_* statistics; None: no labels (synthetic)

  def _frames_and_labels(self, k: int, indices: list[int]):
    """Frames (n, R, R, 3) uint8, label vectors (n, 5), valid (n,) and mouth boxes (n, 4)
    (`face_labels.mouth_box`; zeros without labels) of frames `indices`."""
    if self.label_cfg is None:
      return (self.clips.frames(k, indices), *motion_labels.no_labels(len(indices)),
              np.zeros((len(indices), 4), np.float32))
    rec = self.clips[k]
    idx = np.asarray(indices, np.int64)
    labels, valid = motion_labels.motion_labels(
        np.asarray(rec["head_pose"])[idx], np.asarray(rec["face_scale"])[idx],
        np.asarray(rec["mouth_open"])[idx], self.label_cfg)
    frames = records.decode_frames(rec, indices)
    if "mouth_box" in rec:  # precomputed: slim records (no landmarks) for a remote trainer
      boxes = np.asarray(rec["mouth_box"], np.float32)[idx]
    else:
      boxes = face_labels.mouth_box(np.asarray(rec["landmarks"])[idx], frames.shape[1])
    return frames, labels, valid, boxes

  def __call__(self, index, rng: np.random.Generator) -> dict:
    index = int(index)
    k = int(np.searchsorted(self.offsets, index, side="right") - 1)
    f = index - int(self.offsets[k])
    n = int(self.offsets[k + 1] - self.offsets[k])
    d = d2 = f
    if n > 1:  # drivers differ from the source frame
      d, d2 = [int(x) + (int(x) >= f) for x in rng.integers(0, n - 1, 2)]
    (src, drv, drv2), labels, valid, boxes = self._frames_and_labels(k, [f, d, d2])
    other = self._other(k, rng)
    imgs = _resize(np.stack([src, drv, drv2, other]), self.resolution)
    if self.augment:
      imgs[:3] = augment.colour_jitter(imgs[:3], rng)
      for i in (1, 2):  # the drivers
        imgs[i], moved = augment.scale_shift(imgs[i], rng, return_transform=True)
        labels[i, 3] += valid[i] * np.float32(np.log(moved[0]))  # face zoomed
        if valid[i]:  # unlabelled rows keep the all-zero box
          boxes[i] = augment.move_box(boxes[i], moved)
    return {"source": imgs[0], "driver": imgs[1], "driver2": imgs[2], "other": imgs[3],
            "motion_labels": labels, "labels_valid": valid, "mouth_box": boxes}

  def _other(self, k: int, rng: np.random.Generator) -> np.ndarray:
    entries = self.clips.entries
    person = entries[k]["person"]
    candidates = [j for j, e in enumerate(entries) if e["person"] != person]
    if not candidates:
      candidates = [j for j in range(len(entries)) if j != k]
    if not candidates:
      f = int(rng.integers(0, entries[k]["frames"]))
      return self.clips.frames(k, [f])[0][:, ::-1]  # mirrored: see the module docstring
    j = candidates[int(rng.integers(0, len(candidates)))]
    f = int(rng.integers(0, entries[j]["frames"]))
    return self.clips.frames(j, [f])[0]


# --------------------------------------------------------------------------- stage 2 elements


def window_starts(num_frames: int, window: int, context: int) -> list[int]:
  if num_frames < window:
    return []
  stride = max(1, window // 2)
  return [0] + list(range(max(context, 1), num_frames - window + 1, stride))


@dataclasses.dataclass
class _MotionElement:
  """(window index, rng) -> stage-2 element; a picklable callable for grain workers."""
  clips: object  # ClipSource | SyntheticMotion
  windows: np.ndarray  # (N, 2) int64: clip, start
  window: int
  context: int
  motion_mean: np.ndarray  # (Dm,)
  motion_std: np.ndarray  # (Dm,)
  scale_mean: float
  scale_std: float
  emotion_dim: int
  # (gain, tilt, freq_mask) of `augment_log_mel`, or None: features as recorded.
  audio_augment: tuple[float, float, int] | None = None
  # Clips without a file-name emotion take the window's mean emotion-network probabilities
  # (`emotion_labels.control_vector`) where their record has them.
  network_emotions: bool = False

  def __call__(self, index, rng: np.random.Generator) -> dict:
    k, start = (int(x) for x in self.windows[int(index)])
    rec = self.clips[k]
    motion = np.concatenate([rec["z_pose"], rec["z_dyn"]], -1).astype(np.float32)  # (T, Dm)
    if motion.shape[-1] != self.motion_mean.shape[0]:
      raise VasaInputError(f"Clip {rec.get('clip')} has motion size {motion.shape[-1]}, the "
                           f"config expects {self.motion_mean.shape[0]} (model.motion_dim); "
                           "extract the motion with the matching stage-1 model.")
    motion = (motion - self.motion_mean) / self.motion_std
    feats = np.asarray(rec["audio_feats"], np.float32)  # (T, 4, 80)
    t, w, c = motion.shape[0], self.window, self.context
    if start > 0:  # jitter all but the first window so windows do not always start on a grid
      start = int(min(start + rng.integers(0, max(1, w // 2)), t - w))
    has_prev = start >= c and start > 0
    lo = max(start - c, 0)
    audio = feats[lo:start + w]  # (<= K + W, 4, 80): the context, then the window
    if self.audio_augment is not None:  # the same change for the window and its context
      audio = augment.augment_log_mel(audio, rng, *self.audio_augment)
    if has_prev:
      motion_prev, audio_prev = motion[start - c:start], audio[:c]
    else:
      motion_prev = np.zeros((c, motion.shape[-1]), np.float32)
      audio_prev = np.zeros((c,) + feats.shape[1:], np.float32)
    distance = distance_control(rec["face_scale"][start:start + w], self.scale_mean,
                                self.scale_std)
    emotion = np.zeros((self.emotion_dim,), np.float32)
    label = clip_labels.emotion_from_name(str(rec.get("clip", "")))
    has_emotion = label is not None and label < self.emotion_dim
    if has_emotion:
      emotion[label] = 1.0
    elif self.network_emotions and emotion_labels.KEY in rec:
      emotion = emotion_labels.control_vector(rec[emotion_labels.KEY][start:start + w],
                                              clip_labels.EMOTIONS[:self.emotion_dim])
      has_emotion = True
    return {
        "motion": motion[start:start + w],  # (W, Dm)
        "motion_prev": motion_prev,  # (K, Dm)
        "audio": audio[start - lo:],  # (W, 4, 80)
        "audio_prev": audio_prev,  # (K, 4, 80)
        "has_prev": np.asarray(has_prev),
        "gaze": (np.asarray(rec["main_gaze"], np.float32).reshape(2) if "main_gaze" in rec
                 else clip_labels.main_gaze(rec["gaze"])),  # (2,)
        "distance": np.asarray([distance], np.float32),  # (1,)
        "emotion": emotion,  # (E,)
        "emotion_mask": np.asarray(has_emotion),
    }


# --------------------------------------------------------------------------- assembly


def _host_batch_size(config, process_count: int) -> int:
  batch = int(config.train.batch_size)
  if batch % process_count:
    raise VasaInputError(f"train.batch_size={batch} must be divisible by the number of "
                         f"processes ({process_count}).")
  return batch // process_count


def _finish(elements_fn, num_elements: int, config, process_index: int, process_count: int,
            seed_offset: int = 0):
  """range -> host shard -> shuffle -> random_map -> repeat -> iter -> batch (see docstring)."""
  if num_elements < process_count:
    raise VasaInputError(f"Only {num_elements} training elements for {process_count} "
                         "processes; add data.")
  seed = int(config.data.get("shuffle_seed", 0)) + seed_offset
  ds = grain.MapDataset.range(num_elements)[process_index::process_count]
  ds = ds.shuffle(seed=seed)
  # Different hosts draw different random partners / augmentations for their i-th element.
  ds = ds.random_map(elements_fn, seed=seed + 7919 * (process_index + 1))
  ds = ds.repeat()
  batch = _host_batch_size(config, process_count)
  # grain's default (16 threads, 500 elements read ahead) swamps a small CPU host and holds
  # hundreds of images in memory; two batches ahead on a few threads keeps the trainer fed.
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=int(config.data.get("read_threads", 2) or 2),
      prefetch_buffer_size=2 * batch))
  ds = ds.batch(batch, drop_remainder=True)
  workers = int(config.data.get("worker_count", 0) or 0)
  if workers > 0:
    from absl import flags  # pylint: disable=import-outside-toplevel
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()  # grain reads absl flags in its workers
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return ds


def latent_element_dataset(config, split: str = "train", process_index: int = 0,
                           process_count: int = 1, *, synthetic: bool | None = None):
  """The finite, unshuffled MapDataset of this host's stage-1 elements (for tests/inspection).

  Returns:
    (grain.MapDataset of elements, number of elements over all hosts).
  """
  make, n = _latent_parts(config, split, synthetic)
  ds = grain.MapDataset.range(n)[process_index::process_count]
  return ds.random_map(make, seed=int(config.data.get("shuffle_seed", 0))), n


def _use_synthetic(config, path_key: str, synthetic: bool | None) -> bool:
  if synthetic is not None:
    return synthetic
  return bool(config.data.get("synthetic", False)) or not config.data.get(path_key, "")


def _latent_parts(config, split: str, synthetic: bool | None):
  resolution = int(config.model.resolution)
  if _use_synthetic(config, "shards", synthetic):
    clips = SyntheticFaces(int(config.data.get("synthetic_clips", 8)),
                           int(config.data.get("synthetic_frames", 16)), resolution,
                           seed=int(config.seed) + (0 if split == "train" else 1))
  else:
    index = records.ClipIndex.load(config.data.shards)
    clips = ClipSource(index, entries=splits.split_entries(index, split,
                                                         **splits.split_args(config.data)))
  counts = np.array([e["frames"] for e in clips.entries], np.int64)
  offsets = np.concatenate([[0], np.cumsum(counts)])
  label_cfg = None
  if isinstance(clips, ClipSource) and config.model.get("label_motion", False):
    label_cfg = layers.as_face_config(config.model)
  make = _LatentElement(clips, offsets, resolution, bool(config.data.get("augment", False)),
                        label_cfg)
  return make, int(offsets[-1])


def make_latent_dataset(config, split: str = "train", process_index: int = 0,
                        process_count: int = 1, *, synthetic: bool | None = None):
  """Stage-1 pipeline: host-local batches of {source, driver, driver2, other} (B, R, R, 3) uint8.

  Args:
    config: a `configs/latent.py` config (data.shards, data.synthetic, data.augment,
      data.val_persons / val_fraction_persons, data.shuffle_seed, data.worker_count,
      model.resolution, train.batch_size (global)).
    split: "train", "val" or "all" (persons split by `split_persons`).
    process_index: this host (jax.process_index()).
    process_count: number of hosts.
    synthetic: force synthetic (True) or real (False) data; None follows the config.

  Returns:
    A grain IterDataset; `iter(ds)` has `get_state()` / `set_state()`.
  """
  make, n = _latent_parts(config, split, synthetic)
  return _finish(make, n, config, process_index, process_count)


def make_synthetic_latent_dataset(config, split: str = "train", process_index: int = 0,
                                  process_count: int = 1):
  """`make_latent_dataset` on cartoon faces (same element spec), for tests and throughput."""
  return make_latent_dataset(config, split, process_index, process_count, synthetic=True)


def _load_motion_stats(root: pathlib.Path) -> dict | None:
  path = root / "motion_stats.json"
  if not path.is_file():
    return None
  return json.loads(path.read_text())


def distance_control(face_scale, scale_mean: float, scale_std: float) -> float:
  """Normalised head-to-camera distance of a stretch of frames from their face scale.

  The apparent face size shrinks as the head moves away, so the distance is the negated z-score
  of the mean face scale: +1 = one std further than the dataset average; 0 without labels.
  """
  scale = np.asarray(face_scale, np.float64)
  scale = scale[np.isfinite(scale)]
  if not scale.size:
    return 0.0
  return -(float(scale.mean()) - scale_mean) / max(scale_std, 1e-6)


def face_scale_stats(clips) -> tuple[float, float]:
  """Mean and std of the per-frame face scale over all clips (pooled from index statistics
  when present, else read from the records)."""
  entries = clips.entries
  if entries and all("face_scale_mean" in e and "face_scale_std" in e for e in entries):
    n = np.array([e["frames"] for e in entries], np.float64)
    m = np.array([e["face_scale_mean"] for e in entries], np.float64)
    s = np.array([e["face_scale_std"] for e in entries], np.float64)
    mean = float((n * m).sum() / n.sum())
    var = float((n * (s ** 2 + m ** 2)).sum() / n.sum() - mean ** 2)
    return mean, float(np.sqrt(max(var, 0.0)))
  scales = np.concatenate([np.asarray(clips[k]["face_scale"], np.float64)
                           for k in range(len(clips))])
  return float(scales.mean()), float(scales.std())


def _motion_parts(config, split: str, synthetic: bool | None):
  window, context = int(config.data.window), int(config.data.context)
  if _use_synthetic(config, "motion", synthetic):
    clips = SyntheticMotion(int(config.data.get("synthetic_clips", 8)),
                            int(config.data.get("synthetic_frames", 64)),
                            int(config.model.z_pose_dim), int(config.model.z_dyn_dim),
                            seed=int(config.seed) + (0 if split == "train" else 1))
    stats, scale_stats = clips.stats, clips.face_scale_stats
  else:
    index = records.ClipIndex.load(config.data.motion)
    clips = ClipSource(index, entries=splits.split_entries(index, split,
                                                         **splits.split_args(config.data)))
    stats = _load_motion_stats(index.root)
    if stats is None:
      # No stats file: compute them from this split's clips (extract-motion normally writes it).
      allm = np.concatenate([np.concatenate([clips[k]["z_pose"], clips[k]["z_dyn"]], -1)
                             for k in range(len(clips))])
      stats = {"mean": allm.mean(0).tolist(), "std": allm.std(0).tolist()}
    scale_stats = face_scale_stats(ClipSource(index))
  mean = np.asarray(stats["mean"], np.float32)
  std = np.maximum(np.asarray(stats["std"], np.float32), 1e-6)
  if mean.shape[0] != int(config.model.motion_dim):
    raise VasaInputError(f"motion_stats has {mean.shape[0]} dimensions but model.motion_dim is "
                         f"{config.model.motion_dim}; set latent_variant to the stage-1 model "
                         "that extracted the motion.")
  windows = [(k, s) for k, e in enumerate(clips.entries)
             for s in window_starts(int(e["frames"]), window, context)]
  if not windows:
    raise VasaInputError(f"No clip of the {split!r} split has at least {window} frames "
                         "(data.window); lower data.window or add longer clips.")
  augment = None
  if split == "train" and config.data.get("audio_augment", False):
    augment = (float(config.data.audio_gain), float(config.data.audio_tilt),
               int(config.data.audio_freq_mask))
  make = _MotionElement(clips, np.asarray(windows, np.int64), window, context, mean, std,
                        scale_stats[0], scale_stats[1], int(config.model.emotion_dim), augment,
                        bool(config.data.get("network_emotions", False)))
  return make, len(windows)


def make_motion_dataset(config, split: str = "train", process_index: int = 0,
                        process_count: int = 1, *, synthetic: bool | None = None):
  """Stage-2 pipeline: host-local batches of motion windows with audio and controls.

  Element (before batching): motion (W, Dm), motion_prev (K, Dm), audio (W, 4, 80),
  audio_prev (K, 4, 80), has_prev () bool, gaze (2,), distance (1,), emotion (E,),
  emotion_mask () bool; all float32 except the masks; motion normalised by motion_stats.json.

  Args:
    config: a `configs/motion.py` config (data.motion, data.window, data.context, ...).
    split: "train", "val" or "all".
    process_index: this host.
    process_count: number of hosts.
    synthetic: force synthetic (True) or real (False) data; None follows the config.

  Returns:
    A grain IterDataset of host-local batches.
  """
  make, n = _motion_parts(config, split, synthetic)
  return _finish(make, n, config, process_index, process_count, seed_offset=1)


def make_synthetic_motion_dataset(config, split: str = "train", process_index: int = 0,
                                  process_count: int = 1):
  """`make_motion_dataset` on synthetic smooth motion (same element spec)."""
  return make_motion_dataset(config, split, process_index, process_count, synthetic=True)


def make_dataset(config, split: str = "train", process_index: int | None = None,
                 process_count: int | None = None):
  """The pipeline of `config.stage` ("latent" or "motion"), real or synthetic per the config.

  Args:
    config: a stage config.
    split: "train", "val" or "all".
    process_index: defaults to jax.process_index().
    process_count: defaults to jax.process_count().

  Returns:
    A grain IterDataset of host-local batches.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if config.stage == "latent":
    return make_latent_dataset(config, split, process_index, process_count)
  if config.stage == "motion":
    return make_motion_dataset(config, split, process_index, process_count)
  raise ValueError(f"Unknown config.stage {config.stage!r}; expected 'latent' or 'motion'")
