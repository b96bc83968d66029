"""`vasa-jax eval`: lip-sync and head-motion report for generated videos against real clips.

`run(videos, real, out_dir)` evaluates every generated video and every real clip with its own
audio track (`lipsync.evaluate_video`), adds the "driven by another clip's audio" reference
(`mismatched_baseline`: each real clip's frames against the next real clip's audio), and writes

  out_dir/metrics.json     every figure, per video and as means per group, plus per-frame series
  out_dir/report.md        one table row per video, mean rows for generated / real / mismatched
  out_dir/plots/NAME.png   z-scored mouth opening and audio envelope over time, one per clip

How to read it: a generated video syncs when its detrended correlation is near the real clips'
and clearly above the mismatched reference, at a lag near 0-2 frames, with a mouth spread like
real footage (a frozen mouth cannot sync even if its correlation is not 0); delta-P and the pose
spread compare the amount of head motion (see `pose.py`).
"""
from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np

from vasa_jax.constants import FPS
from vasa_jax.data import media
from vasa_jax.data.face_crop import FaceAnalyzer
from vasa_jax.errors import NoFaceError, VasaInputError
from vasa_jax.eval import lipsync, viewer
from vasa_jax.fileio import atomic_path, atomic_write_text

# (key, column header, format) of the markdown table, in order.
COLUMNS = (
    ("corr_detrended", "sync corr (detrended)", "{:.3f}"),
    ("lag_detrended", "lag (frames)", "{:+.1f}"),
    ("corr_raw", "sync corr (raw)", "{:.3f}"),
    ("mouth_std_detrended", "mouth spread", "{:.4f}"),
    ("delta_p", "delta-P (deg)", "{:.3f}"),
    ("pose_std", "pose spread (deg)", "{:.2f}"),
    ("face_found_frac", "face found", "{:.2f}"),
) + viewer.VIEWER_COLUMNS
# Figures whose mean is reported per group (COLUMNS plus a few more in metrics.json).
SUMMARY_KEYS = tuple(k for k, _, _ in COLUMNS) + (
    "lag_raw", "corr_detrended_lag0", "corr_raw_lag0", "mouth_std_raw")
# Figures that exist for the mismatched reference (its frames are a real clip's: no new pose).
LIPSYNC_KEYS = ("corr_detrended", "lag_detrended", "corr_raw", "lag_raw", "corr_detrended_lag0",
                "corr_raw_lag0", "mouth_std_detrended", "mouth_std_raw")


# ----------------------------------------------------------------------------------------------
# Evaluation.


def check_has_audio(paths: Sequence[str]) -> None:
  """Raises VasaInputError naming every video that has no audio stream (before any slow work).

  Args:
    paths: video files.
  """
  missing = [p for p in paths if not media.probe(p).has_audio]
  if missing:
    raise VasaInputError(
        f"No audio track in {', '.join(repr(p) for p in missing)}: lip sync needs the driving "
        f"audio inside the video. Write it with its audio (vasa-jax generate muxes it) or mux it "
        f"with ffmpeg -i video.mp4 -i audio.wav -c:v copy -c:a aac -shortest out.mp4.")


def _unique_names(paths: Sequence[str]) -> list[str]:
  """File stems, made unique with -2, -3, ... (they name the plots and table rows)."""
  seen: dict[str, int] = {}
  out = []
  for p in paths:
    stem = os.path.splitext(os.path.basename(p))[0] or "video"
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
    n = seen.get(stem, 0) + 1
    seen[stem] = n
    out.append(stem if n == 1 else f"{stem}-{n}")
  return out


def _evaluate(path: str, name: str, group: str, analyzer, max_seconds, max_lag) -> dict:
  """`evaluate_video` plus name and group; a video without a face gets NaN figures + `error`."""
  try:
    res = lipsync.evaluate_video(path, analyzer, max_seconds=max_seconds, max_lag=max_lag)
  except NoFaceError as e:
    # A broken generated video must not stop the report: it shows up with face found = 0.
    res = {k: float("nan") for k in SUMMARY_KEYS}
    res.update({"face_found_frac": 0.0, "path": path, "error": str(e), "series": None})
  res["name"] = name
  res["group"] = group
  return res


def _add_viewer(row: dict, portrait, analyzer, max_seconds, max_lag) -> None:
  """Adds the viewer figures (`viewer.py`: face size, sharpness and identity against the
  portrait, first vs last 10 s) to an evaluated row, measured on its own frames."""
  if row.get("error"):
    return
  frames, times, duration = viewer.read_sampled(row["path"])
  if max_seconds is not None:
    keep = times < max_seconds
    frames, times, duration = frames[keep], times[keep], min(duration, max_seconds)
  try:
    v = viewer.viewer_scores(frames, times, duration, portrait, analyzer,
                             series=row.get("series"), max_lag=max_lag)
  except VasaInputError as e:  # no face in the first frame of a real clip
    v = {k: float("nan") for k, _, _ in viewer.VIEWER_COLUMNS}
    v["identity_error"] = str(e)
  row["viewer"] = v
  row.update({k: v[k] for k, _, _ in viewer.VIEWER_COLUMNS})


def mismatched_baseline(real_clips: Sequence, *, max_lag: int = 5, analyzer=None,
                        max_seconds: float | None = None, fps: float = FPS) -> list[dict]:
  """Lip-sync figures of real clips' frames driven by another clip's audio (the chance level).

  Clip i's mouth opening is scored against clip (i + 1) mod n's audio envelope, both cut to the
  shorter length. Real speech has similar rhythm everywhere, so this reference is above 0; a
  generated video has learnt sync only where it beats this clearly.

  Args:
    real_clips: paths of real clips, or results of `lipsync.evaluate_video` (reused, so nothing is
      decoded twice); clips without a face are skipped.
    max_lag: lag search range in frames.
    analyzer: a `face_crop.FaceAnalyzer` to reuse when paths are given.
    max_seconds: evaluate only the first seconds of clips given as paths.
    fps: frame rate of the series.

  Returns:
    One dict per usable clip: `name` ("frames + audio"), `frames_of`, `audio_of` (paths) and the
    `lipsync.lipsync_scores` entries. Empty when fewer than two usable clips are given.
  """
  results = []
  for clip in real_clips:
    if isinstance(clip, dict):
      results.append(clip)
    else:
      results.append(lipsync.evaluate_video(clip, analyzer, max_seconds=max_seconds,
                                            max_lag=max_lag))
  results = [r for r in results if r.get("series")]
  n = len(results)
  out = []
  if n < 2:
    return out
  for i, frames_of in enumerate(results):
    audio_of = results[(i + 1) % n]
    mouth = np.asarray(frames_of["series"]["mouth_open"], np.float64)
    env = np.asarray(audio_of["series"]["envelope"], np.float64)
    t = min(len(mouth), len(env))
    row = lipsync.lipsync_scores(mouth[:t], env[:t], max_lag, fps)
    name_f = frames_of.get("name") or os.path.basename(frames_of["path"])
    name_a = audio_of.get("name") or os.path.basename(audio_of["path"])
    row.update({"name": f"{name_f} + audio of {name_a}", "frames_of": frames_of["path"],
                "audio_of": audio_of["path"], "group": "mismatched"})
    out.append(row)
  return out


def group_means(rows: Sequence[dict], keys: Sequence[str]) -> dict:
  """NaN-ignoring mean of each key over rows (NaN when no row has a finite value), plus `count`."""
  out: dict = {"count": len(rows)}
  for k in keys:
    vals = np.array([r.get(k, np.nan) for r in rows], np.float64)
    vals = vals[np.isfinite(vals)]
    out[k] = float(vals.mean()) if vals.size else float("nan")
  return out


# ----------------------------------------------------------------------------------------------
# Writing.


def to_jsonable(x):
  """Numpy -> Python, NaN/inf -> None (strict JSON)."""
  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return to_jsonable(x.tolist())
  if isinstance(x, (np.bool_, bool)):
    return bool(x)
  if isinstance(x, (np.integer, int)):
    return int(x)
  if isinstance(x, (np.floating, float)):
    return float(x) if math.isfinite(x) else None
  return x


def fmt(value, spec: str = "{:.3f}") -> str:
  """A table cell: `spec` of the value, or a dash for None / NaN."""
  if value is None or not np.isfinite(value):
    return "–"
  return spec.format(value)


def _md_row(label: str, row: dict, keys: Sequence[str] | None = None) -> str:
  cells = [label]
  for key, _, spec in COLUMNS:
    cells.append(fmt(row.get(key), spec) if keys is None or key in keys else "–")
  return "| " + " | ".join(cells) + " |"


def render_markdown(generated: Sequence[dict], real: Sequence[dict],
                    mismatched: Sequence[dict], summary: dict) -> str:
  """The report as markdown: a table with one row per video and mean rows per group."""
  head = "| video | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
  rule = "|" + "---|" * (len(COLUMNS) + 1)
  lines = ["# vasa-jax eval", "",
           "Lip sync: Pearson correlation of the mouth opening with the 300-3000 Hz audio energy "
           "per frame, at the best lag in +-5 frames (positive lag = mouth after audio); "
           "*detrended* removes a 1 s moving average from both first. Mouth spread: std of the "
           "detrended mouth opening (inner-lip gap / inter-ocular distance). delta-P: mean "
           "|adjacent-frame change| of yaw/pitch/roll in degrees (VASA-1); pose spread: std of "
           "the angles, mean over the three.", "", head, rule]
  for group, rows in (("generated", generated), ("real", real)):
    for r in rows:
      label = f"{r['name']} ({group})" + (" — no face" if r.get("error") else "")
      lines.append(_md_row(label, r))
  for group, label in (("generated", "**mean generated**"), ("real", "**mean real**")):
    if summary[group]["count"]:
      lines.append(_md_row(f"{label} (n={summary[group]['count']})", summary[group]))
  if summary["mismatched"]["count"]:
    lines.append(_md_row(f"**mean real frames + other clip's audio** "
                         f"(n={summary['mismatched']['count']})", summary["mismatched"],
                         LIPSYNC_KEYS))
  if mismatched:
    lines += ["", "## Real clips driven by another clip's audio (chance reference)", "",
              head, rule]
    lines += [_md_row(r["name"], r, LIPSYNC_KEYS) for r in mismatched]
  errors = [r for r in list(generated) + list(real) if r.get("error")]
  if errors:
    lines += ["", "## Not evaluated", ""] + [f"- `{r['path']}`: {r['error']}" for r in errors]
  return "\n".join(lines) + "\n"


def _zscore(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  ok = np.isfinite(x)
  if not ok.any():
    return x
  sd = x[ok].std()
  return (x - x[ok].mean()) / (sd if sd > 0 else 1.0)


def plot_clip(result: dict, path: str) -> None:
  """Writes a PNG of the z-scored mouth opening and audio envelope of one evaluated clip.

  Uses matplotlib's object API on an Agg canvas (no pyplot, no global backend switch).

  Args:
    result: a `lipsync.evaluate_video` result with `series`.
    path: output .png file (written atomically).
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  series = result["series"]
  fps = float(result.get("fps", FPS))
  mouth = _zscore(series["mouth_open"])
  env = _zscore(series["envelope"])
  t = np.arange(len(mouth)) / fps
  fig = Figure(figsize=(10, 3.2), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  ax.plot(t, env[:len(t)], color="tab:orange", lw=1.0, label="audio energy 300-3000 Hz (z)")
  ax.plot(t, mouth, color="tab:blue", lw=1.2, label="mouth opening (z)")
  ax.set_xlabel("time (s)")
  ax.set_ylabel("z-score")
  ax.set_title(f"{result['name']} ({result.get('group', '')}): detrended corr "
               f"{fmt(result.get('corr_detrended'), '{:.3f}')} at lag "
               f"{result.get('lag_detrended')} frames, raw "
               f"{fmt(result.get('corr_raw'), '{:.3f}')}", fontsize=9)
  ax.legend(loc="upper right", fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png")


def run(videos: Sequence, real: Sequence = (), out_dir=".", *, analyzer=None,
        max_seconds: float | None = None, max_lag: int = 5, portrait=None) -> dict:
  """Evaluates generated videos and real clips and writes metrics.json, report.md and plots.

  This is what `vasa-jax eval --videos ... --real ... --out DIR` calls.

  Args:
    videos: generated videos (mp4 with their driving audio).
    real: real clips with their own audio, for the reference rows and the mismatched baseline.
    out_dir: report directory (created).
    analyzer: a `face_crop.FaceAnalyzer` to reuse.
    max_seconds: evaluate only the first seconds of each video.
    max_lag: lag search range in frames.
    portrait: the photo the generated videos animate (path or array), for the viewer figures
      (face size, sharpness and identity against it); None, and for real clips: each video's
      first frame.

  Returns:
    The metrics dict written to metrics.json: `generated`, `real`, `mismatched` (lists of
    per-video dicts) and `summary` (means per group).

  Raises:
    VasaInputError: no videos, a missing/unreadable file, or a video without audio (all named).
  """
  videos = [os.fspath(v) for v in videos]
  real = [os.fspath(v) for v in (real or ())]
  if not videos and not real:
    raise VasaInputError("Nothing to evaluate: pass generated videos with --videos.")
  check_has_audio(videos + real)
  out_dir = os.fspath(out_dir)
  os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
  if analyzer is None:
    analyzer = FaceAnalyzer()
  names = _unique_names(videos + real)
  generated = [_evaluate(p, n, "generated", analyzer, max_seconds, max_lag)
               for p, n in zip(videos, names[:len(videos)])]
  real_rows = [_evaluate(p, n, "real", analyzer, max_seconds, max_lag)
               for p, n in zip(real, names[len(videos):])]
  mismatched = mismatched_baseline(real_rows, max_lag=max_lag)
  if portrait is not None:
    from vasa_jax.data import media
    portrait = media.read_image(portrait)
  for r in generated:
    _add_viewer(r, portrait, analyzer, max_seconds, max_lag)
  for r in real_rows:
    _add_viewer(r, None, analyzer, max_seconds, max_lag)
  summary = {"generated": group_means(generated, SUMMARY_KEYS),
             "real": group_means(real_rows, SUMMARY_KEYS),
             "mismatched": group_means(mismatched, LIPSYNC_KEYS)}
  for r in generated + real_rows:
    if r.get("series"):
      r["plot"] = os.path.join("plots", f"{r['name']}.png")
      plot_clip(r, os.path.join(out_dir, r["plot"]))
  metrics = {"version": 1, "max_lag": max_lag, "max_seconds": max_seconds,
             "generated": generated, "real": real_rows, "mismatched": mismatched,
             "summary": summary}
  atomic_write_text(os.path.join(out_dir, "metrics.json"),
                     json.dumps(to_jsonable(metrics), indent=1, allow_nan=False))
  atomic_write_text(os.path.join(out_dir, "report.md"),
                    render_markdown(generated, real_rows, mismatched, summary)
                    + viewer.render_drift_markdown(generated + real_rows))
  return metrics


__all__ = ["COLUMNS", "check_has_audio", "group_means", "mismatched_baseline", "plot_clip",
           "render_markdown", "run"]
