"""`vasa-jax preprocess`: talking-face videos -> cropped, labelled clip records in ArrayRecord.

For each video: read at 25 fps (capped at `max_seconds`), crop the face track to R x R
(`face_crop.crop_clip`), derive per-frame labels from the landmarks (`face_labels.label_clip`),
read the audio at 16 kHz (the video's own track, or a `.wav` beside it when it has none), compute
log-mel features with exactly 4 rows per frame, and decide `has_speech` with an energy-based
voice-activity measure (`voice_activity`). Each clip becomes one record in its own shard
`OUT/shards/clips-XXXXX.array_record`, written atomically; `OUT/index.json` is rewritten
(atomically) after every clip, so a crash loses at most the clip in progress and a rerun skips
every clip already in the index (and every file already listed as skipped).

Several hosts can split the work: each runs with its own `shard_index` / `num_shards` and its own
`out_dir`; `merge_indices([out0, out1, ...], merged)` then writes one index whose shard paths
point (relatively) into the per-host directories, without copying any shard. For many workers,
`beam_preprocess` runs the same per-clip transforms (`plan`, `run_clip`, `add_result`) on
Apache Beam and writes the same output.
"""
from __future__ import annotations

import csv
import glob
import itertools
import os
import pathlib
import time
from typing import Iterable, NamedTuple, Sequence

import numpy as np
from tqdm import tqdm

from vasa_jax.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from vasa_jax.data import audio_features, emotion_labels, face_crop, face_labels, media, records
from vasa_jax.errors import NoFaceError, VasaInputError

VIDEO_EXTS = (".mp4", ".mov", ".mpg", ".avi", ".webm", ".flv", ".mkv")
MIN_SECONDS = 1.0
# A clip counts as speech when more than this share of its 40 ms frames is voiced and at least
# MIN_DIP_SHARE of them are pauses (see `voice_activity`). The shared talking clips measure
# 0.3-1.0 voiced and 0.24-0.75 pauses; silent clips 0-0.01 voiced; music-only clips 0.99 voiced
# but <= 0.18 pauses.
SPEECH_SHARE_THRESHOLD = 0.2
MIN_DIP_SHARE = 0.2
# Below this share of frames with a detected face, the crop is mostly interpolated: skip the clip.
MIN_DETECTED_SHARE = 0.5


class _Skip(Exception):
  """A clip that cannot become a record; the message is the reason stored in the index."""


# --------------------------------------------------------------------------- inputs


def list_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[pathlib.Path]:
  """Expands directories (recursively), globs and files into a sorted list of video files.

  Args:
    inputs: a directory, a glob pattern, a file, or a list of these.

  Returns:
    Sorted, de-duplicated paths with a video extension (VIDEO_EXTS).

  Raises:
    VasaInputError: an input matches nothing.
  """
  if isinstance(inputs, (str, os.PathLike)):
    inputs = [inputs]
  found: set[pathlib.Path] = set()
  for item in inputs:
    item = os.fspath(item)
    if os.path.isdir(item):
      paths = [p for p in pathlib.Path(item).rglob("*") if p.is_file()]
    elif os.path.isfile(item):
      paths = [pathlib.Path(item)]
    else:
      paths = [pathlib.Path(p) for p in glob.glob(item, recursive=True) if os.path.isfile(p)]
      if not paths:
        raise VasaInputError(f"Input {item!r} is not a file, a directory or a glob that matches "
                             "anything. Check the path.")
    found.update(p.resolve() for p in paths if p.suffix.lower() in VIDEO_EXTS)
  return sorted(found)


def read_persons_csv(path: str | os.PathLike) -> dict[str, dict]:
  """Reads a manifest (columns `path`, `person`, optionally `audio`) keyed by file name.

  Args:
    path: a CSV like `../shared/data/manifest.csv`; `path` is relative to the data directory
      (`clips/X.mp4`) and only its file name is matched.

  Returns:
    {file name: row dict}.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise VasaInputError(f"Persons CSV {path} not found; pass the data set's manifest.csv.")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or "path" not in reader.fieldnames or (
        "person" not in reader.fieldnames):
      raise VasaInputError(f"{path} needs the columns `path` and `person` "
                           f"(found {reader.fieldnames}).")
    return {os.path.basename(row["path"]): row for row in reader if row.get("path")}


def paired_audio(video: pathlib.Path, row: dict | None = None) -> pathlib.Path | None:
  """The separate audio file of a video, if any.

  A `.wav` with the video's stem in the same directory wins; otherwise a manifest `audio` column
  of the form `paired wav ...: NAME.wav` names a file in that directory ending with NAME.wav.
  """
  same_stem = video.with_suffix(".wav")
  if same_stem.is_file():
    return same_stem
  note = (row or {}).get("audio", "") or ""
  if note.startswith("paired") and ":" in note:
    name = note.split(":", 1)[1].strip()
    for cand in sorted(video.parent.glob("*" + name)):
      if cand.is_file():
        return cand
  return None


def shard_inputs(paths: Sequence[pathlib.Path], shard_index: int, num_shards: int):
  """Host `shard_index` of `num_shards` takes every num_shards-th file of the sorted list."""
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise VasaInputError(f"Need 0 <= shard_index < num_shards, got {shard_index}/{num_shards}.")
  return list(paths)[shard_index::num_shards]


# --------------------------------------------------------------------------- audio


def voice_activity(audio: np.ndarray | None, sr: int = SAMPLE_RATE) -> tuple[float, float]:
  """A simple energy voice-activity measure on 40 ms frames (one per video frame).

  A frame is voiced when its 300-3400 Hz energy is within 30 dB of the clip's loud level (95th
  percentile of frames) and above -50 dB (full scale). Energy alone cannot tell speech from
  music, so the second number measures pauses: the share of frames more than 15 dB below the
  loud level. On the shared data (whole clips) speech measured 0.24-0.75 and the music-only or
  noise-only clips of `silent/` 0-0.18. On segments of 2 s or less it is less reliable (speech
  down to 0.18), so very short clips may be marked as silent.

  Args:
    audio: (N,) float32 at `sr`, or None.
    sr: sample rate.

  Returns:
    (voiced share, dip share), both in [0, 1]; (0, 0) for None, empty or silent audio.
  """
  if audio is None:
    return 0.0, 0.0
  hop = sr // FPS
  n = len(audio) // hop
  if n == 0:
    return 0.0, 0.0
  win = np.hanning(hop)
  frames = np.asarray(audio[:n * hop], np.float32).reshape(n, hop) * win
  spec = np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # (n, hop // 2 + 1)
  freqs = np.fft.rfftfreq(hop, 1.0 / sr)
  band = (freqs >= 300) & (freqs <= 3400)
  # Normalised so a full-scale in-band sine is about 0 dB.
  power = spec[:, band].sum(-1) / (hop * win.mean()) ** 2 * 2
  db = 10 * np.log10(power + 1e-12)  # (n,)
  loud = np.percentile(db, 95)
  if loud < -50.0:
    return 0.0, 0.0
  voiced = (db > loud - 30.0) & (db > -50.0)
  dips = db < loud - 15.0
  return float(voiced.mean()), float(dips.mean())


def is_speech(share: float, dips: float) -> bool:
  """`has_speech`: more than SPEECH_SHARE_THRESHOLD voiced frames, with speech-like pauses."""
  return share > SPEECH_SHARE_THRESHOLD and dips >= MIN_DIP_SHARE


def _fit_audio(audio: np.ndarray | None, num_frames: int) -> np.ndarray:
  """Trims or zero-pads audio to exactly num_frames * 640 samples (zeros when missing)."""
  n = num_frames * SAMPLES_PER_FRAME
  if audio is None:
    return np.zeros((n,), np.float32)
  audio = np.asarray(audio, np.float32).reshape(-1)[:n]
  return np.pad(audio, (0, n - audio.shape[0]))


# --------------------------------------------------------------------------- one clip


def _read_frames(path: pathlib.Path, max_frames: int, max_side: int | None) -> np.ndarray:
  frames = list(itertools.islice(media.iter_video_frames(path, fps=FPS, max_side=max_side),
                                 max_frames))
  if not frames:
    raise _Skip("no decodable video frames")
  return np.stack(frames)  # (T, H, W, 3)


def _read_clip_audio(path: pathlib.Path, audio_path: pathlib.Path | None) -> np.ndarray | None:
  if media.probe(path).has_audio:
    return media.read_audio(path, sr=SAMPLE_RATE)
  if audio_path is not None:
    return media.read_audio(audio_path, sr=SAMPLE_RATE)
  return None


def process_clip(path: str | os.PathLike, *, person: str, resolution: int = 128,
                 analyzer=None, audio_path: str | os.PathLike | None = None,
                 max_seconds: float = 60.0, max_side: int | None = None,
                 emotion_nets=None) -> dict:
  """Turns one video into a clip record (the dict of docs/design.md, frames not yet JPEG).

  Args:
    path: the video.
    person: identity label.
    resolution: crop size R.
    analyzer: a shared `face_crop.FaceAnalyzer` (created when None).
    audio_path: separate audio used when the video has no audio stream.
    max_seconds: only the first max_seconds are kept (bounds memory on long clips).
    max_side: decode with the longer side downscaled to this (default max(720, 4 R)).
    emotion_nets: the emotion network (`emotion_labels.load_nets`): adds `emotion_probs`
      (T, 7) float16, its per-frame probabilities; None: no emotion labels.

  Returns:
    The record dict with `frames` (T, R, R, 3) uint8 plus the labels and audio features, and the
    extra keys `main_gaze` (2,), `detected` (T,) bool, `speech_share` and `speech_dips`.

  Raises:
    VasaInputError (NoFaceError included) for unreadable media or no face; `_Skip` for clips
    that are too short or whose face is mostly missed.
  """
  path = pathlib.Path(path)
  max_side = max_side or max(720, 4 * resolution)
  frames = _read_frames(path, int(max_seconds * FPS), max_side)
  t = frames.shape[0]
  if t < MIN_SECONDS * FPS:
    raise _Skip(f"too short ({t} frames < {MIN_SECONDS:g} s)")
  audio = _read_clip_audio(path, pathlib.Path(audio_path) if audio_path else None)
  crop = face_crop.crop_clip(frames, resolution, analyzer=analyzer, source=str(path))
  del frames
  detected = np.asarray(crop.detected, bool)
  if detected.mean() < MIN_DETECTED_SHARE:
    raise _Skip(f"face detected in only {100 * detected.mean():.0f}% of frames")
  labels = face_labels.label_clip(np.asarray(crop.landmarks, np.float32), resolution)
  fitted = _fit_audio(audio, t)  # (T*640,): the kept part of the clip decides has_speech
  share, dips = voice_activity(fitted if audio is not None else None)
  has_speech = is_speech(share, dips)
  audio = fitted
  if not has_speech:
    # Silent or missing audio is stored as zeros, so "no speech" looks the same for every clip.
    audio = np.zeros_like(audio)
  feats = np.asarray(audio_features.log_mel(audio, num_frames=t), np.float32)  # (T, 4, 80)
  record = {
      "clip": path.stem, "person": person, "fps": float(FPS),
      "frames": np.asarray(crop.frames, np.uint8),  # (T, R, R, 3)
      "audio": audio,  # (T*640,)
      "audio_feats": feats,
      "landmarks": np.asarray(crop.landmarks, np.float32),  # (T, 478, 3)
      "head_pose": np.asarray(labels["head_pose"], np.float32),  # (T, 3)
      "gaze": np.asarray(labels["gaze"], np.float32),  # (T, 2)
      "face_scale": np.asarray(labels["face_scale"], np.float32),  # (T,)
      "mouth_open": np.asarray(labels["mouth_open"], np.float32),  # (T,)
      "main_gaze": np.asarray(labels["main_gaze"], np.float32).reshape(2),  # (2,)
      "has_speech": bool(has_speech),
      "detected": detected,
      "speech_share": float(share),
      "speech_dips": float(dips),
  }
  if emotion_nets is not None:
    record[emotion_labels.KEY] = emotion_labels.clip_probs(
        emotion_nets, record["frames"]).astype(np.float16)  # (T, 7)
  return record


# --------------------------------------------------------------------------- the run


def _next_shard_number(index: records.ClipIndex) -> int:
  numbers = [-1]
  for c in index.clips:
    stem = pathlib.Path(c["shard"]).stem  # clips-00012
    if stem.startswith("clips-") and stem[6:].isdigit():
      numbers.append(int(stem[6:]))
  return max(numbers) + 1


def _entry(record: dict, source: pathlib.Path, shard: str, resolution: int) -> dict:
  scale = np.asarray(record["face_scale"], np.float64)
  scale = scale[np.isfinite(scale)] if np.isfinite(scale).any() else np.zeros(1)
  return {
      "clip": record["clip"], "person": record["person"], "frames": int(len(record["face_scale"])),
      "fps": float(FPS), "resolution": int(resolution), "has_speech": bool(record["has_speech"]),
      "shard": shard, "record": 0, "source": str(source),
      "speech_share": round(float(record["speech_share"]), 4),
      "speech_dips": round(float(record["speech_dips"]), 4),
      "detected_share": round(float(np.mean(record["detected"])), 4),
      # Per-clip statistics so pipelines can z-score the head distance without reading records.
      "face_scale_mean": float(scale.mean()), "face_scale_std": float(scale.std()),
  }


class ClipTask(NamedTuple):
  """One input video and what its record needs besides the pixels."""
  path: pathlib.Path
  person: str
  audio_path: pathlib.Path | None


class ClipResult(NamedTuple):
  """What one clip gives: a record (its encoded bytes and index entry, shard not yet named) or
  the reason it was skipped."""
  task: ClipTask
  payload: bytes | None
  entry: dict | None
  skipped: dict | None


def plan(inputs, *, persons_csv=None, shard_index: int = 0, num_shards: int = 1
         ) -> list[ClipTask]:
  """The sorted input videos of this shard, each with its person and separate audio."""
  persons = read_persons_csv(persons_csv) if persons_csv else {}
  tasks = []
  for path in shard_inputs(list_inputs(inputs), shard_index, num_shards):
    row = persons.get(path.name)
    tasks.append(ClipTask(path, (row or {}).get("person") or path.stem, paired_audio(path, row)))
  return tasks


def pending(tasks: Sequence[ClipTask], index: records.ClipIndex, retry_skipped: bool = False
            ) -> tuple[list[ClipTask], int]:
  """The tasks an existing index does not cover yet, and how many it already holds.

  With `retry_skipped`, the index forgets its skips among `tasks` (they run again).
  """
  done_sources = {c.get("source") for c in index.clips}
  done_names = index.clip_names
  if retry_skipped:
    index.skipped = [s for s in index.skipped if s["path"] not in {str(t.path) for t in tasks}]
  skipped_paths = {s["path"] for s in index.skipped}
  todo, already = [], 0
  for t in tasks:
    if str(t.path) in done_sources or t.path.stem in done_names:
      already += 1
    elif str(t.path) not in skipped_paths:
      todo.append(t)
  return todo, already


def run_clip(task: ClipTask, *, resolution: int, analyzer, max_seconds: float = 60.0,
             emotion_nets=None) -> ClipResult:
  """Crops, labels and encodes one clip; any failure becomes a skip with its reason (one bad
  file must not stop a long run; the reason is kept for the user to inspect)."""
  path = task.path
  try:
    record = process_clip(path, person=task.person, resolution=resolution, analyzer=analyzer,
                          audio_path=task.audio_path, max_seconds=max_seconds,
                          emotion_nets=emotion_nets)
  except NoFaceError as e:
    reason = f"no face: {e}"
  except _Skip as e:
    reason = str(e)
  except VasaInputError as e:
    reason = f"unreadable: {e}"
  except Exception as e:  # pylint: disable=broad-except
    reason = f"error: {type(e).__name__}: {e}"
  else:
    return ClipResult(task, records.encode_clip(record), _entry(record, path, "", resolution),
                      None)
  return ClipResult(task, None, None, {"path": str(path), "reason": reason})


def duplicate(result: ClipResult) -> ClipResult:
  """A written clip whose name an earlier clip already took, as a skip."""
  return result._replace(payload=None, entry=None, skipped={
      "path": str(result.task.path),
      "reason": f"duplicate clip name {result.task.path.stem!r} (file names must be unique)"})


def open_index(out_dir: pathlib.Path, resolution: int) -> records.ClipIndex:
  """The index in `out_dir` (new, or an earlier run's to resume), checked for `resolution`."""
  (out_dir / records.SHARD_DIR).mkdir(parents=True, exist_ok=True)
  index = records.ClipIndex.load_or_new(out_dir, resolution=resolution, fps=FPS)
  if index.resolution not in (None, resolution):
    raise VasaInputError(f"{out_dir} holds clips at resolution {index.resolution}, not "
                         f"{resolution}; use another output directory.")
  index.resolution = resolution
  return index


def add_result(index: records.ClipIndex, result: ClipResult, shard_no: int, seen: set[str],
               write) -> bool:
  """Adds one result to the index in input order (the shard is written by `write(shard,
  payload)`); returns whether it took shard number `shard_no`."""
  path = str(result.task.path)
  if result.entry is not None and result.task.path.stem in seen:
    result = duplicate(result)
  index.skipped = [s for s in index.skipped if s["path"] != path]
  if result.entry is None:
    index.skipped.append(result.skipped)
    return False
  shard = f"{records.SHARD_DIR}/clips-{shard_no:05d}.array_record"
  write(shard, result.payload)
  index.clips.append(dict(result.entry, shard=shard))
  seen.add(result.task.path.stem)
  return True


def summarize(index: records.ClipIndex, results: Sequence[ClipResult], already: int,
              seconds: float, out_dir: pathlib.Path) -> dict:
  """The run's summary (see `preprocess`) from the index after `results` were added."""
  ran = {str(r.task.path) for r in results}
  written = [c for c in index.clips if c.get("source") in ran]
  frames_now = sum(int(c["frames"]) for c in written)
  return {
      "written": len(written), "already_done": already,
      "skipped": [s for s in index.skipped if s["path"] in ran],
      "frames": frames_now, "seconds": round(seconds, 2),
      "frames_per_second": round(frames_now / seconds, 2) if seconds > 0 and frames_now else 0.0,
      "total_clips": len(index.clips), "total_frames": index.num_frames,
      "index": str(out_dir / records.INDEX_NAME),
  }


def preprocess(inputs, out_dir: str | os.PathLike, *, persons_csv: str | os.PathLike | None = None,
               resolution: int = 128, shard_index: int = 0, num_shards: int = 1,
               progress: bool = True, max_seconds: float = 60.0, retry_skipped: bool = False,
               num_threads: int = 1, label_emotions: bool | None = None) -> dict:
  """Preprocesses videos into `out_dir/shards/*.array_record` + `out_dir/index.json`.

  The single-process path (and, with `shard_index`/`num_shards`, the home-made multi-host
  one): the same per-clip transforms (`plan`, `run_clip`, `add_result`) as the Apache Beam
  pipeline of `beam_preprocess`, run in a loop.

  Args:
    inputs: a directory, a glob, a video file, or a list of these.
    out_dir: output directory (created); an existing index there is resumed.
    persons_csv: manifest with `path` and `person` columns (file names are matched); without
      it, or for files it does not list, the person is the file stem.
    resolution: face crop size R.
    shard_index: which part of the sorted input list this host processes ...
    num_shards: ... out of this many (each host writes its own out_dir; see merge_indices).
    progress: show a tqdm bar and print the summary.
    max_seconds: cap on the clip length kept (bounds memory).
    retry_skipped: also retry files the index lists as skipped.
    num_threads: threads for the face models.
    label_emotions: store per-frame emotion probabilities (`emotion_labels`); None: when the
      emotion network is fetched (`vasa-jax fetch-face-nets`), else skipped with a note.

  Returns:
    Summary dict: `written` (clips added now), `already_done`, `skipped` (list of
    {path, reason} from this run), `frames` (written now), `seconds`, `frames_per_second`,
    `total_clips`, `total_frames`, `index` (path).
  """
  out_dir = pathlib.Path(out_dir)
  index = open_index(out_dir, resolution)
  tasks = plan(inputs, persons_csv=persons_csv, shard_index=shard_index, num_shards=num_shards)
  todo, already = pending(tasks, index, retry_skipped)

  analyzer = face_crop.FaceAnalyzer(num_threads=num_threads) if todo else None
  emotion_nets = None
  if todo and label_emotions is None:
    label_emotions = emotion_labels.available()
    if not label_emotions and progress:
      print("preprocess: no emotion labels (the emotion network is not fetched; run "
            "`vasa-jax fetch-face-nets`, then `vasa-jax label-emotions` adds them)")
  if todo and label_emotions:
    emotion_nets = emotion_labels.load_nets()  # fails at once, naming the fetch command
  results: list[ClipResult] = []
  frames_now = n_skipped = 0
  start = time.time()
  bar = None
  if progress:
    bar = tqdm(total=len(todo), unit="clip", desc="preprocess")
  shard_no = _next_shard_number(index)
  seen = set(index.clip_names)
  write = lambda shard, payload: records.write_shard(out_dir / shard, [payload])  # noqa: E731
  for task in todo:
    result = run_clip(task, resolution=resolution, analyzer=analyzer, max_seconds=max_seconds,
                      emotion_nets=emotion_nets)
    results.append(result)
    if add_result(index, result, shard_no, seen, write):
      shard_no += 1
      frames_now += result.entry["frames"]
    else:
      n_skipped += 1
    index.save()  # after every clip: a crash leaves only complete shards behind
    if bar is not None:
      elapsed = max(time.time() - start, 1e-6)
      bar.set_postfix(frames_per_s=f"{frames_now / elapsed:.1f}", skipped=n_skipped)
      bar.update(1)
  if bar is not None:
    bar.close()
  index.save()
  summary = summarize(index, results, already, time.time() - start, out_dir)
  if progress:
    print(format_summary(summary))
  return summary


def format_summary(summary: dict) -> str:
  """A human-readable summary of a `preprocess` run."""
  lines = [f"preprocess: wrote {summary['written']} clips ({summary['frames']} frames, "
           f"{summary['frames_per_second']} frames/s, {summary['seconds']} s); "
           f"{summary['already_done']} already done; index has {summary['total_clips']} clips, "
           f"{summary['total_frames']} frames -> {summary['index']}"]
  if summary["skipped"]:
    lines.append(f"skipped {len(summary['skipped'])} files:")
    lines += [f"  {os.path.basename(s['path'])}: {s['reason']}" for s in summary["skipped"]]
  return "\n".join(lines)


def merge_indices(out_dirs: Iterable[str | os.PathLike],
                  merged_out: str | os.PathLike) -> records.ClipIndex:
  """Writes `merged_out/index.json` over the shards of several preprocess output directories.

  Shards are not copied: the merged index refers to them by paths relative to `merged_out`,
  so keep the directories side by side (e.g. data/host0, data/host1 -> data/all).

  Args:
    out_dirs: directories written by `preprocess` (e.g. one per host / shard_index).
    merged_out: where to write the merged index.json.

  Returns:
    The merged ClipIndex.
  """
  merged_out = pathlib.Path(merged_out)
  merged_out.mkdir(parents=True, exist_ok=True)
  merged = records.ClipIndex(root=merged_out.resolve(), fps=FPS)
  names: set[str] = set()
  for d in out_dirs:
    idx = records.ClipIndex.load(d)
    if merged.resolution is None:
      merged.resolution = idx.resolution
    elif idx.resolution not in (None, merged.resolution):
      raise VasaInputError(f"{d} has resolution {idx.resolution}, the others "
                           f"{merged.resolution}: merge only runs made at one resolution.")
    for c in idx.clips:
      if c["clip"] in names:
        merged.skipped.append({"path": c.get("source", c["clip"]),
                               "reason": f"duplicate clip name in {d}"})
        continue
      names.add(c["clip"])
      merged.clips.append(dict(c, shard=os.path.relpath(idx.shard_path(c), merged.root)))
    merged.skipped += idx.skipped
  merged.save()
  return merged
