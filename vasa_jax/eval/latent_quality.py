"""`vasa-jax eval-latent`: stage 1 quality on real clips, training persons versus unseen persons.

For every evaluated clip, `frames_per_clip` (source, driver) pairs are taken from the clip at
fixed positions (source t_i = floor((i + 0.5) T / n), driver (t_i + T // 2) mod T: far apart in
time, and the same on every run). Per pair the model renders

  recon   the source's appearance with the driver's pose and dynamics; target = the driver
  cross   the source's appearance with the motion of a frame of *another person* (the next
          evaluated clip of a different person, at the same relative position)

and the figures are:

  psnr, ssim, l1            recon against the driver (rendered images clipped to [-1, 1])
  psnr_copy, ssim_copy      the source frame itself against the driver: the "no motion transfer"
                            floor; recon must beat it to show that motion is transferred
  beats_copy                the share of pairs where recon's PSNR beats psnr_copy
  id_cross                  cos(z_id(cross), z_id(source)): identity kept under cross-identity
                            reenactment (VASA-1's cross-identity criterion)
  id_recon                  cos(z_id(recon), z_id(source))
  id_same_person            cos(z_id(driver), z_id(source)): two real frames of one person
  id_other_person           cos(z_id(other person's frame), z_id(source)): two different people

All identity codes come from this model's own identity encoder (no external face-recognition
network), so `id_cross` means "the encoder still sees the source person" and reads best next to
`id_same_person` (same person, real) and `id_other_person` (different people, real). The decoder
was trained to keep this z_id (the cross-identity loss), so a high `id_cross` is necessary, not
sufficient, for a kept identity: look at the grid too.

Clips are split into training persons and unseen persons by the run's `config.data.val_persons`
(`splits.split_persons`); `compare_splits` reports both and their gap.

Outputs (when `out` is given): `latent_quality.json` (every figure, per clip and per split),
`latent_quality.md` (tables) and `latent_grid.png` (columns source | driver | reconstruction |
other person's frame | cross-identity transfer; a few rows per split, train first).
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from vasa_jax import fileio
from vasa_jax.data import records, splits
from vasa_jax.data.input_pipeline import ClipSource
from vasa_jax.eval import report
from vasa_jax.eval.report import fmt
from vasa_jax.errors import VasaInputError
from vasa_jax.image_ops import psnr, ssim, to_float_image, to_uint8_image
from vasa_jax.inference import extract_motion
from vasa_jax.inference.extract_motion import resize_frames
from vasa_jax.models.face_model import FaceModel
from vasa_jax.models.layers import cosine_similarity

JSON_NAME = "latent_quality.json"
MD_NAME = "latent_quality.md"
GRID_NAME = "latent_grid.png"
SPLITS = ("train", "val")
# Per-pair figures computed by the jitted evaluator (means per clip, then per split).
PAIR_KEYS = ("psnr", "ssim", "l1", "psnr_copy", "ssim_copy", "beats_copy", "id_cross",
             "id_recon", "id_same_person", "id_other_person")
# (key, markdown header, format) of the tables.
COLUMNS = (
    ("psnr", "PSNR dB", "{:.2f}"),
    ("psnr_copy", "PSNR copy-source", "{:.2f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("ssim_copy", "SSIM copy-source", "{:.3f}"),
    ("beats_copy", "PSNR > copy (share)", "{:.2f}"),
    ("l1", "L1", "{:.4f}"),
    ("id_cross", "id cos cross", "{:.3f}"),
    ("id_recon", "id cos recon", "{:.3f}"),
    ("id_same_person", "id cos same person (real)", "{:.3f}"),
    ("id_other_person", "id cos other person (real)", "{:.3f}"),
)


# ------------------------------------------------------------------------------- selection


def pair_frames(num_frames: int, n: int) -> list[tuple[int, int]]:
  """Deterministic (source, driver) frame pairs of one clip.

  Args:
    num_frames: T.
    n: pairs wanted (capped at T).

  Returns:
    n pairs (s_i, d_i): s_i = floor((i + 0.5) T / n), d_i = (s_i + T // 2) mod T, so source and
    driver are about half a clip apart; d_i == s_i only when T == 1.
  """
  t = int(num_frames)
  n = max(1, min(int(n), t))
  out = []
  for i in range(n):
    s = min(int((i + 0.5) * t / n), t - 1)
    d = (s + t // 2) % t
    out.append((s, d))
  return out


def select_clips(entries: Sequence[dict], max_clips: int | None, seed: int = 0) -> list[dict]:
  """Up to `max_clips` entries, spread over persons: round robin over persons (in an order
  shuffled by `seed`), each person's clips in index order.

  Args:
    entries: index clip entries.
    max_clips: cap (None: all, in that round-robin order).
    seed: changes which persons come first.

  Returns:
    The chosen entries.
  """
  by_person: dict[str, list[dict]] = {}
  for e in entries:
    by_person.setdefault(e["person"], []).append(e)
  persons = sorted(by_person)
  order = np.random.default_rng(seed).permutation(len(persons))
  queues = [list(by_person[persons[i]]) for i in order]
  out = []
  while any(queues) and (max_clips is None or len(out) < max_clips):
    for q in queues:
      if q and (max_clips is None or len(out) < max_clips):
        out.append(q.pop(0))
  return out


def _val_persons(config, index: records.ClipIndex, val_persons) -> tuple[list[str], list[str]]:
  """(validation persons present in the shards, configured ones that are missing): the run's
  own split (`splits.split_args`, val_fraction_persons included) unless `val_persons` names
  them."""
  kw = (splits.split_args(config.data) if val_persons is None
        else {"val_persons": val_persons})
  known = set(index.persons)
  missing = sorted(p for p in kw["val_persons"] if p not in known)
  kw["val_persons"] = [p for p in kw["val_persons"] if p in known]
  return splits.split_persons(index, **kw)[1], missing


def plan_pairs(chosen: Sequence[dict], frames_per_clip: int) -> list[tuple]:
  """Deterministic evaluation pairs over the chosen clips.

  The cross-identity partner of a clip is the next chosen clip of another person; with one
  person, another clip of theirs; with a single clip, a mirrored frame (as the training
  pipeline does). The partner frame sits at the driver's relative position in its clip.

  Args:
    chosen: clip entries (with `person`, `frames`).
    frames_per_clip: pairs per clip (`pair_frames`).

  Returns:
    Tuples (clip position, source frame, driver frame, partner position, partner frame or None
    for the mirrored-frame case).
  """
  pairs = []
  for k, e in enumerate(chosen):
    others = [j % len(chosen) for j in range(k + 1, k + len(chosen))]
    partner = next((j for j in others if chosen[j]["person"] != e["person"]),
                   others[0] if others else None)
    t = int(e["frames"])
    for s, d in pair_frames(t, frames_per_clip):
      if partner is None:
        pairs.append((k, s, d, k, None))
      else:
        tp = int(chosen[partner]["frames"])
        pairs.append((k, s, d, partner, min(int(d / max(t, 1) * tp), tp - 1)))
  return pairs


def _load_images(index: records.ClipIndex, chosen: Sequence[dict], pairs: Sequence[tuple],
                 resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(source, driver, other) frames of every pair, each (n, R, R, 3) uint8."""
  source = ClipSource(index, entries=list(chosen))
  cache: dict[int, dict] = {}

  def frame(k: int, f: int | None, mirror_of: int = 0) -> np.ndarray:
    rec = cache.get(k)
    if rec is None:  # read a clip's record once; only the requested JPEGs are decoded
      rec = cache[k] = source[k]
      if len(cache) > 4:
        cache.pop(next(iter(cache)))
    if f is None:
      return records.decode_frames(rec, [mirror_of])[0][:, ::-1]
    return records.decode_frames(rec, [f])[0]

  # One pass over the pairs, so the small record cache sees each clip's frames together.
  triples = [(frame(k, s), frame(k, d), frame(j, f, mirror_of=d)) for k, s, d, j, f in pairs]
  return tuple(resize_frames(np.stack(x), resolution) for x in zip(*triples))


# ------------------------------------------------------------------------------- model


def make_pair_evaluator(model):
  """A jitted fn(params, src, drv, oth) on uint8 (B, R, R, 3) batches -> per-pair figures.

  Returns:
    fn returning a dict of (B,) float32 figures (`PAIR_KEYS`) plus `recon` and `cross`
    (B, R, R, 3) uint8 renderings.
  """
  def apply(params, *args, method):
    return model.apply({"params": params}, *args, method=method)

  @jax.jit
  def fn(params, src, drv, oth):
    s, d, o = (to_float_image(x) for x in (src, drv, oth))
    b = s.shape[0]
    lat = apply(params, s, method=FaceModel.encode)
    z_pose, z_dyn = apply(params, jnp.concatenate([d, o]), method=FaceModel.encode_motion)
    two = lambda x: jnp.concatenate([x, x])  # noqa: E731
    out = apply(params, two(lat["v_app"]), two(lat["z_id"]), two(lat["z_pose"]),
                two(lat["z_dyn"]), z_pose, z_dyn, two(s), method=FaceModel.decode)
    # Judge what a viewer gets: the rendering as it is written to uint8.
    out = jnp.clip(out, -1.0, 1.0)  # (2B, R, R, 3)
    recon, cross = out[:b], out[b:]
    z = apply(params, jnp.concatenate([recon, cross, d, o]), method=FaceModel.encode_identity)
    z_recon, z_cross, z_drv, z_oth = jnp.split(z, 4)
    cos = lambda a: cosine_similarity(a, lat["z_id"])  # noqa: E731
    return {
        "psnr": psnr(recon, d), "ssim": ssim(recon, d),
        "l1": jnp.mean(jnp.abs(recon - d), axis=(1, 2, 3)),
        "psnr_copy": psnr(s, d), "ssim_copy": ssim(s, d),
        "id_cross": cos(z_cross), "id_recon": cos(z_recon),
        "id_same_person": cos(z_drv), "id_other_person": cos(z_oth),
        "recon": to_uint8_image(recon), "cross": to_uint8_image(cross),
    }

  return fn


def _checkpoint_step(path) -> int | None:
  """The latest step of a training workdir (None for an export)."""
  p = pathlib.Path(path)
  ckpt = p / "checkpoints" if (p / "checkpoints").is_dir() else p
  steps = [int(c.name) for c in ckpt.iterdir() if c.name.isdigit()] if ckpt.is_dir() else []
  return max(steps) if steps else None


# ------------------------------------------------------------------------------- evaluation


def _summary(rows: Sequence[dict]) -> dict:
  """Means (and std over clips) of the per-clip figures."""
  out = {"clips": len(rows), "persons": len({r["person"] for r in rows}),
         "pairs": int(sum(r["pairs"] for r in rows))}
  for k in PAIR_KEYS:
    v = np.array([r[k] for r in rows], np.float64)
    out[k] = float(v.mean()) if v.size else float("nan")
    out[f"{k}_std_over_clips"] = float(v.std()) if v.size else float("nan")
  return out


def _evaluate(checkpoint, shards, *, persons, max_clips, frames_per_clip, batch, seed,
              val_persons, both_splits: bool = False, grid_rows: int = 3):
  t0 = time.perf_counter()
  config, model, params = extract_motion.load_face_model(checkpoint)
  resolution = int(config.model.resolution)
  index = records.ClipIndex.load(shards)
  val, missing = _val_persons(config, index, val_persons)
  entries = index.clips
  if persons is not None:
    unknown = sorted(set(persons) - set(index.persons))
    if unknown:
      raise VasaInputError(f"Persons {unknown} are not in {index.root}/index.json; known persons "
                           f"include {index.persons[:10]}.")
    entries = [e for e in entries if e["person"] in set(persons)]
  split_of = lambda e: "val" if e["person"] in val else "train"  # noqa: E731
  chosen = []
  for split in SPLITS:
    chosen += select_clips([e for e in entries if split_of(e) == split], max_clips, seed)
  if not chosen:
    raise VasaInputError(f"No clips to evaluate in {index.root} (persons={persons}).")
  empty = [s for s in SPLITS if not any(split_of(e) == s for e in chosen)]
  if both_splits and empty:
    raise VasaInputError(
        f"The {empty} split has no clips in {index.root} (validation persons {val}, configured "
        f"but absent {missing}). Pass shards with both training and held-out persons, or set "
        "config.data.val_persons in the run.")

  pairs = plan_pairs(chosen, frames_per_clip)
  src, drv, oth = _load_images(index, chosen, pairs, resolution)

  # Grid rows: the first pair of the first `grid_rows` clips of each split.
  grid_pairs = []
  for split in SPLITS:
    ks = [k for k, e in enumerate(chosen) if split_of(e) == split][:grid_rows]
    grid_pairs += [(split, next(i for i, p in enumerate(pairs) if p[0] == k)) for k in ks]
  want = {i for _, i in grid_pairs}

  fn = make_pair_evaluator(model)
  n = len(pairs)
  figures = {k: np.zeros((n,), np.float64) for k in PAIR_KEYS}
  renders = {}
  t1 = time.perf_counter()
  for i in range(0, n, batch):
    idx = np.arange(i, min(i + batch, n))
    take = np.concatenate([idx, np.repeat(idx[-1:], batch - idx.size)])  # one compiled shape
    out = fn(params, src[take], drv[take], oth[take])
    out = jax.device_get(out)
    for k in PAIR_KEYS:
      if k in out:
        figures[k][idx] = np.asarray(out[k])[:idx.size]
    for j, p in enumerate(idx):
      if int(p) in want:
        renders[int(p)] = (np.asarray(out["recon"][j]), np.asarray(out["cross"][j]))
  t2 = time.perf_counter()
  figures["beats_copy"] = (figures["psnr"] > figures["psnr_copy"]).astype(np.float64)

  clips = []
  pos = np.array([p[0] for p in pairs])
  for k, e in enumerate(chosen):
    sel = pos == k
    row = {"clip": e["clip"], "person": e["person"], "split": split_of(e),
           "frames": int(e["frames"]), "pairs": int(sel.sum()),
           "partner": None if pairs[np.argmax(sel)][4] is None
           else chosen[pairs[np.argmax(sel)][3]]["clip"],
           "frame_pairs": [[int(p[1]), int(p[2])] for p in pairs if p[0] == k]}
    row.update({key: float(figures[key][sel].mean()) for key in PAIR_KEYS})
    clips.append(row)

  result = {
      "checkpoint": str(checkpoint), "step": _checkpoint_step(checkpoint),
      "shards": str(index.root), "resolution": resolution,
      "frames_per_clip": int(frames_per_clip), "max_clips_per_split": max_clips,
      "seed": int(seed), "val_persons": val, "val_persons_missing": missing,
      "splits": {split: _summary([c for c in clips if c["split"] == split]) for split in SPLITS
                 if any(c["split"] == split for c in clips)},
      "clips": clips,
      "timing": {"load_s": t1 - t0, "eval_s": t2 - t1,
                 "pairs_per_s": n / max(t2 - t1, 1e-9)},
  }
  grid = [(split, src[i], drv[i], renders[i][0], oth[i], renders[i][1])
          for split, i in grid_pairs]
  return result, grid


def evaluate_latent(workdir_or_export, shards, *, persons: Sequence[str] | None = None,
                    max_clips: int | None = None, frames_per_clip: int = 8, batch: int = 8,
                    seed: int = 0, val_persons: Sequence[str] | None = None,
                    out: str | os.PathLike | None = None) -> dict:
  """Self-reconstruction and cross-identity figures of a stage 1 model on preprocessed clips.

  Args:
    workdir_or_export: a stage 1 training workdir (latest step) or an export directory.
    shards: the output directory of `vasa-jax preprocess` (frames at any resolution; resized).
    persons: evaluate only these persons (None: all).
    max_clips: at most this many clips per split, spread over persons (None: all).
    frames_per_clip: (source, driver) pairs per clip (see `pair_frames`).
    batch: pairs per model call.
    seed: the person order of the clip selection.
    val_persons: unseen persons (default: the run's `config.data.val_persons`; configured
      persons missing from the shards are listed in `val_persons_missing`).
    out: when given, write the JSON, markdown and PNG grid there.

  Returns:
    dict with `splits` ({"train", "val"} present ones: means and stds over clips of
    `PAIR_KEYS`, counts), `clips` (per-clip figures and frame pairs), `val_persons`, `step`, ...
  """
  result, grid = _evaluate(workdir_or_export, shards, persons=persons, max_clips=max_clips,
                           frames_per_clip=frames_per_clip, batch=batch, seed=seed,
                           val_persons=val_persons)
  if out is not None:
    write_outputs(result, grid, out)
  return result


def compare_splits(workdir, shards, *, max_clips: int | None = 24, frames_per_clip: int = 8,
                   batch: int = 8, seed: int = 0, val_persons: Sequence[str] | None = None,
                   out: str | os.PathLike | None = None) -> dict:
  """`evaluate_latent` on training persons and unseen persons, with the generalisation gap.

  Args:
    workdir: stage 1 workdir or export.
    shards: preprocessed clips holding both training and validation persons.
    max_clips: clips per split (training persons are many; unseen ones usually few).
    frames_per_clip, batch, seed, val_persons, out: as in `evaluate_latent`.

  Returns:
    The `evaluate_latent` dict plus `gap`: train minus val for every figure in `PAIR_KEYS`.

  Raises:
    VasaInputError: a split is empty (no validation persons configured or present).
  """
  result, grid = _evaluate(workdir, shards, persons=None, max_clips=max_clips,
                           frames_per_clip=frames_per_clip, batch=batch, seed=seed,
                           val_persons=val_persons, both_splits=True)
  tr, va = result["splits"]["train"], result["splits"]["val"]
  result["gap"] = {k: tr[k] - va[k] for k in PAIR_KEYS}
  if out is not None:
    write_outputs(result, grid, out)
  return result


# ------------------------------------------------------------------------------- writing


def render_markdown(result: dict) -> str:
  """The report: a table per split, the gap, then one row per clip."""
  head = "| " + " | ".join(["split", "clips", "persons", "pairs"]
                          + [h for _, h, _ in COLUMNS]) + " |"
  rule = "|" + "---|" * (4 + len(COLUMNS))
  lines = [f"# Stage 1 latent quality: {result['checkpoint']} (step {result['step']})", "",
           f"Shards `{result['shards']}`, {result['frames_per_clip']} source/driver pairs per "
           f"clip, at most {result['max_clips_per_split']} clips per split. Unseen persons: "
           f"{', '.join(result['val_persons']) or 'none'}"
           + (f" (configured but absent: {', '.join(result['val_persons_missing'])})"
              if result["val_persons_missing"] else "") + ".", "",
           "PSNR/SSIM/L1: reconstruction vs driver; copy-source: the source frame itself vs the "
           "driver (no-transfer floor). id cos: cosine of the model's own z_id with the "
           "source's, for the cross-identity transfer, the reconstruction, a real frame of the "
           "same person and a real frame of another person.", "", head, rule]
  for split, s in result["splits"].items():
    cells = [split, str(s["clips"]), str(s["persons"]), str(s["pairs"])]
    cells += [fmt(s[k], f) + " ± " + fmt(s[f"{k}_std_over_clips"], f) for k, _, f in COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  if "gap" in result:
    cells = ["train − val", "", "", ""] + [fmt(result["gap"][k], f) for k, _, f in COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "(± = std over clips)", "", "## Per clip", "",
            "| clip | person | split | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
            "|" + "---|" * (3 + len(COLUMNS))]
  for c in result["clips"]:
    lines.append("| " + " | ".join([c["clip"], c["person"], c["split"]]
                                   + [fmt(c[k], f) for k, _, f in COLUMNS]) + " |")
  lines += ["", f"Grid: `{GRID_NAME}`, columns source | driver | reconstruction | other person's "
            "frame | cross-identity transfer; training persons first, then unseen persons.", ""]
  return "\n".join(lines)


GRID_COLUMNS = ("source", "driver", "recon", "other", "cross")


def _text(width: int, height: int, text: str) -> np.ndarray:
  img = Image.new("RGB", (width, height), (255, 255, 255))
  ImageDraw.Draw(img).text((2, 2), text, fill=(0, 0, 0))
  return np.asarray(img)


def grid_image(grid) -> np.ndarray:
  """(rows of (split, 5 images)) -> one uint8 image: a title strip with the column names
  (`GRID_COLUMNS`), then one row per pair with its split written on the left."""
  if not grid:
    return np.zeros((1, 1, 3), np.uint8)
  r = grid[0][1].shape[0]
  lw = max(24, r // 3)
  title = np.concatenate([_text(lw, 14, "")] + [_text(r, 14, c) for c in GRID_COLUMNS], axis=1)
  rows = [title]
  for split, *imgs in grid:
    rows.append(np.concatenate([_text(lw, r, split)] + [np.asarray(i, np.uint8) for i in imgs],
                               axis=1))
  return np.concatenate(rows, axis=0)


def write_outputs(result: dict, grid, out) -> pathlib.Path:
  """Writes `latent_quality.json`, `latent_quality.md` and `latent_grid.png` into `out`."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  fileio.atomic_write_text(out / JSON_NAME, json.dumps(report.to_jsonable(result), indent=1))
  fileio.atomic_write_text(out / MD_NAME, render_markdown(result))
  with fileio.atomic_path(out / GRID_NAME) as tmp:
    Image.fromarray(grid_image(grid)).save(tmp, format="PNG")
  return out
