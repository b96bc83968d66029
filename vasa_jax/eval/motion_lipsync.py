"""`vasa-jax eval-motion`: does stage 2 move the mouth with the speech? Measured on motion only.

No rendering and no face detector: the test works in the motion space of stage 1.

1. A "mouth signal" read out of motion: a ridge regression from [z_pose, z_dyn] to the face-mesh
   mouth-opening label (`mouth_open` of the motion records), fitted on the real motion of the
   TRAINING persons' clips, with motion and label centred within each clip (every figure below
   is per clip and blind to offsets, so the readout should explain mouth opening and closing,
   not each person's resting mouth or framing). Its within-clip R^2 on the held-out persons'
   real motion says how much mouth opening the latent motion carries at all, an upper bound
   for everything below; the R^2 of a plain (uncentred) fit is reported next to it.
2. For every clip of the evaluated split (default: the unseen persons), motion is generated from
   the clip's own audio features with the stage 2 model (`sampler.sample_sequence`, DDIM with
   `steps` steps, guidance 0.5 / 1.0, the clip's controls as the training pipeline builds them:
   main gaze, `input_pipeline.distance_control` of the clip's face scale, emotion from the clip
   name), de-normalised with `motion_stats.json`, and passed through the same regression.
3. Figures per clip, then means over clips:
   - `gen_vs_label`: correlation of the generated mouth signal with the real `mouth_open`
     (raw and detrended, lag 0): the generated mouth follows the real one;
   - `gen_vs_real`: the same against the real motion's mouth signal;
   - `sync_*`: `lipsync.lipsync_scores` (best lag in +-5 frames, raw and detrended) of a mouth
     series against the audio energy envelope (`audio_features.energy_envelope`), for the
     generated mouth signal, the real motion's mouth signal, the real `mouth_open` label, and
     the label against the next clip's audio (`mismatched`: the no-sync reference);
   - spread: std of the generated and real mouth signals (raw and detrended) and their ratio
     `spread_ratio`; a calm generated mouth can correlate and still barely move, and a wild one
     can correlate for the wrong reason: a model whose output simply follows the loudness of
     its audio input scores a high sync correlation even when its motion is far outside the
     real range (an untrained, random-weight model measured 0.74 detrended on the demo data, at
     6x the real motion spread). Sync figures mean "lips follow speech" only next to
     `gen_vs_label` > 0 and a `spread_ratio` near 1; the markdown flags ratios outside [0.5, 2];
   - `pose_std_ratio`, `dyn_std_ratio`: std of generated over real motion, per dimension in
     normalised units, averaged over the pose and the dynamics dimensions.
   Sync means use the clips with `has_speech` (all clips when none has it).
4. The validation diffusion loss: `MotionTask.eval_step` (x0 and velocity MSE at random t with a
   fixed key, no condition dropout) over the split's windows (`input_pipeline.make_motion_dataset`).

Outputs (when `out` is given): `motion_lipsync.json` (figures, per clip, with the per-frame
series) and `motion_lipsync.md`.
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vasa_jax import config_utils, fileio, params_io
from vasa_jax.data import audio_features, clip_labels, input_pipeline, records, splits
from vasa_jax.diffusion import sampler
from vasa_jax.errors import VasaInputError
from vasa_jax.eval import lipsync, report
from vasa_jax.eval.report import fmt
from vasa_jax.eval.lipsync_stats import correlation, fit_ridge, predict_ridge, r2_score
from vasa_jax.models import motion_dit
from vasa_jax.train.motion_task import MotionTask
from vasa_jax.train.state import TrainState

JSON_NAME = "motion_lipsync.json"
MD_NAME = "motion_lipsync.md"
SYNC_KEYS = ("corr_detrended", "lag_detrended", "corr_raw", "lag_raw", "mouth_std_detrended",
             "mouth_std_raw")
SIGNALS = ("generated", "real_motion", "label", "mismatched")


# ------------------------------------------------------------------------------- ridge readout


def readout_r2(ridge: dict, recs: Sequence[dict], name: str, *, within: bool) -> dict:
  """R^2 of a mouth readout on real motion records.

  Args:
    ridge: from `fit_ridge`.
    recs: motion records (z_pose, z_dyn, mouth_open).
    name: "train" or "val" (key names).
    within: remove each clip's mean from label and prediction first (the figure for a readout
      fitted with `groups`: does it follow the mouth opening and closing?).

  Returns:
    {f"r2_{name}" or f"r2_{name}_within_clip", f"{name}_frames"}.
  """
  ys, hs = [], []
  for r in recs:
    y = np.asarray(r["mouth_open"], np.float64)
    h = predict_ridge(ridge, _motion(r))
    ok = np.isfinite(y)
    if within and ok.any():
      y, h = y - y[ok].mean(), h - h[ok].mean()
    ys.append(y)
    hs.append(h)
  y, h = np.concatenate(ys), np.concatenate(hs)
  key = f"r2_{name}_within_clip" if within else f"r2_{name}"
  return {key: r2_score(y, h), f"{name}_frames": int(np.isfinite(y).sum())}


# ------------------------------------------------------------------------------- data


def _motion(rec: dict) -> np.ndarray:
  return np.concatenate([rec["z_pose"], rec["z_dyn"]], -1).astype(np.float64)  # (T, Dm)


def _envelope(rec: dict, t: int) -> np.ndarray:
  env = np.asarray(audio_features.energy_envelope(np.asarray(rec["audio"], np.float32)),
                   np.float64)
  return lipsync.fit_length(env, t)


def _controls(rec: dict, scale_stats: tuple[float, float], emotion_dim: int) -> dict:
  """The clip's controls as `input_pipeline._MotionElement` builds them for training."""
  gaze = None
  if "main_gaze" in rec:
    gaze = np.asarray(rec["main_gaze"], np.float32).reshape(2)
  elif "gaze" in rec:
    gaze = clip_labels.main_gaze(rec["gaze"])
  distance = None
  if "face_scale" in rec:
    # One control for the whole sequence: the clip's mean face scale (training uses each
    # window's), with the pipeline's sign convention (further away = larger).
    distance = np.asarray([input_pipeline.distance_control(rec["face_scale"], *scale_stats)],
                          np.float32)
  emotion = None
  label = clip_labels.emotion_from_name(str(rec.get("clip", "")))
  if label is not None and label < emotion_dim:
    emotion = np.zeros((emotion_dim,), np.float32)
    emotion[label] = 1.0
  return {"gaze": gaze, "distance": distance, "emotion": emotion}


def _num_windows(frames: Sequence[int], window: int, context: int) -> int:
  """How many windows the stage 2 pipeline cuts from clips of these lengths."""
  return sum(len(input_pipeline.window_starts(t, window, context)) for t in frames)


def _check_latent(latent_checkpoint, motion_config, index: records.ClipIndex) -> dict:
  """The stage 1 run must be the one whose motion space stage 2 was trained in."""
  p = pathlib.Path(latent_checkpoint)
  cfg_path = next((c for c in (p / "config.json", p.parent / "config.json") if c.is_file()), None)
  if cfg_path is not None:
    config = config_utils.config_from_json(cfg_path.read_text())
  else:
    config, _ = params_io.load_params(p)
  if config is None or config.get("stage") != "latent":
    raise VasaInputError(f"{latent_checkpoint} is not a stage 1 (latent) checkpoint.")
  dz = int(config.model.z_dyn_dim)
  want = {"motion config": int(motion_config.model.z_dyn_dim),
          "motion directory": int(index.extra.get("z_dyn_dim", dz))}
  bad = {k: v for k, v in want.items() if v != dz}
  if bad:
    raise VasaInputError(f"Stage 1 run {latent_checkpoint} has z_dyn_dim {dz} but the {bad}; "
                         "pass the stage 1 run that extracted the motion.")
  return {"latent_checkpoint": str(latent_checkpoint), "z_dyn_dim": dz}


def _load_motion_model(motion_workdir):
  config, params = params_io.load_params(motion_workdir, ema=True)
  if config is None or config.get("stage") != "motion":
    raise VasaInputError(f"{motion_workdir} is not a stage 2 (motion) checkpoint; pass the "
                         "workdir of `vasa-jax train --config configs/motion.py:...`.")
  # A writable copy: the loss pipeline points it at the motion directory.
  return ml_collections.ConfigDict(config.to_dict()), params


# ------------------------------------------------------------------------------- evaluation


def validation_loss(config, params, motion_dir, split: str, val_persons: Sequence[str],
                    num_windows: int, max_batches: int = 8) -> dict:
  """Mean `MotionTask.eval_step` figures over about one pass of the split's windows.

  Args:
    config: the stage 2 config (copied; `data.motion` set to `motion_dir`).
    params: stage 2 parameters.
    motion_dir: the motion directory.
    split: "train", "val" or "all".
    val_persons: held-out persons.
    num_windows: windows in the split (sets the number of batches).
    max_batches: cap on batches.

  Returns:
    {"loss", "loss_x0", "loss_velocity", "batches", "batch_size"}.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.motion = str(motion_dir)
  config.data.synthetic = False
  config.data.worker_count = 0
  config.data.val_persons = list(val_persons)
  config.data.audio_augment = False  # measured on the audio as recorded, also for split=train
  task = MotionTask(config)
  bsz = int(config.train.batch_size)
  n = max(1, min(max_batches, -(-num_windows // bsz)))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None)
  step = jax.jit(task.eval_step)
  sums: dict[str, float] = {}
  it = iter(input_pipeline.make_motion_dataset(config, split, 0, 1))
  for _ in range(n):
    m = jax.device_get(step(state, next(it)))
    for k, v in m.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  return {**{k: v / n for k, v in sums.items()}, "batches": n, "batch_size": bsz}


def _dim_name(d: int, z_pose_dim: int) -> str:
  return f"z_pose[{d}]" if d < z_pose_dim else f"z_dyn[{d - z_pose_dim}]"


def _mean(rows: Sequence[dict], key: str) -> float:
  v = np.array([r[key] for r in rows if r.get(key) is not None], np.float64)
  v = v[np.isfinite(v)]
  return float(v.mean()) if v.size else float("nan")


def evaluate_motion(latent_ckpt_or_none, motion_workdir, motion_dir, *, split: str = "val",
                    steps: int = 10, seed: int = 0, out: str | os.PathLike | None = None,
                    max_clips: int | None = None, use_controls: bool = True,
                    cfg_audio: float = 0.5, cfg_gaze: float = 1.0, ridge_alpha: float = 1.0,
                    val_persons: Sequence[str] | None = None, loss_batches: int = 8) -> dict:
  """Lip-sync figures of stage 2 motion generated from real clips' audio (see module docstring).

  Args:
    latent_ckpt_or_none: the stage 1 run that extracted the motion (its z_dyn size is checked
      against the motion), or None.
    motion_workdir: stage 2 workdir (EMA parameters when kept) or export directory.
    motion_dir: the output of `vasa-jax extract-motion` (with `motion_stats.json`).
    split: clips to generate for: "val" (unseen persons), "train" or "all".
    steps: DDIM steps.
    seed: clip k uses `fold_in(key(seed), k)`.
    out: when given, write the JSON and markdown there.
    max_clips: evaluate only the first clips of the split.
    use_controls: condition on the clip's gaze / distance / emotion; False drops them.
    cfg_audio, cfg_gaze: guidance scales.
    ridge_alpha: L2 penalty of the mouth readout.
    val_persons: held-out persons (default: the stage 2 config's `data.val_persons`).
    loss_batches: cap on validation-loss batches.

  Returns:
    dict: `ridge` (R^2 train / held-out), `means` (figures averaged over clips), `loss`
    (validation diffusion loss), `clips` (per-clip figures and series), settings.
  """
  t0 = time.perf_counter()
  motion_dir = pathlib.Path(motion_dir)
  index = records.ClipIndex.load(motion_dir)
  stats_path = motion_dir / "motion_stats.json"
  if not stats_path.is_file():
    raise VasaInputError(f"No motion_stats.json in {motion_dir}; pass the output directory of "
                         "`vasa-jax extract-motion`.")
  stats = json.loads(stats_path.read_text())
  mean = np.asarray(stats["mean"], np.float64)
  std = np.maximum(np.asarray(stats["std"], np.float64), 1e-6)
  config, params = _load_motion_model(motion_workdir)
  m = config.model
  if mean.shape[0] != int(m.motion_dim):
    raise VasaInputError(f"{stats_path} has {mean.shape[0]} motion dimensions, the stage 2 model "
                         f"{m.motion_dim}; the motion and the model come from different runs.")
  latent_info = (_check_latent(latent_ckpt_or_none, config, index)
                 if latent_ckpt_or_none is not None else None)
  # The persons split as training split them (val_persons, val_fraction_persons, shuffle_seed),
  # unless `val_persons` names them; configured persons absent from this data are skipped.
  split_kw = (splits.split_args(config.data) if val_persons is None
              else {"val_persons": list(val_persons)})
  split_kw["val_persons"] = [p for p in split_kw["val_persons"] if p in set(index.persons)]
  val_persons = splits.split_persons(index, **split_kw)[1]
  split_kw = {"val_persons": val_persons}
  source = input_pipeline.ClipSource(index)
  pos = {e["clip"]: k for k, e in enumerate(index.clips)}

  # 1. Mouth readout on the training persons' real motion, fitted within clips (every figure
  # below is per clip and blind to a clip's offset); a plain fit gives the plain R^2 for
  # reference.
  train_recs = [source[pos[e["clip"]]]
                for e in splits.split_entries(index, "train", **split_kw)]
  x = np.concatenate([_motion(r) for r in train_recs])
  y = np.concatenate([np.asarray(r["mouth_open"], np.float64) for r in train_recs])
  groups = np.concatenate([np.full(len(r["mouth_open"]), k) for k, r in enumerate(train_recs)])
  ridge = fit_ridge(x, y, ridge_alpha, groups=groups)
  plain = fit_ridge(x, y, ridge_alpha)
  del x, y, groups
  ridge_info = {"alpha": ridge_alpha, "fit": "within clips",
                **readout_r2(ridge, train_recs, "train", within=True),
                **readout_r2(plain, train_recs, "train", within=False)}
  del train_recs
  if val_persons:
    val_recs = [source[pos[e["clip"]]]
                for e in splits.split_entries(index, "val", **split_kw)]
    ridge_info.update(readout_r2(ridge, val_recs, "val", within=True))
    ridge_info.update(readout_r2(plain, val_recs, "val", within=False))
  else:
    ridge_info.update(r2_val=None, r2_val_within_clip=None)
  # Which dimensions carry the mouth (largest standardised weights first).
  ridge_info["top_dims"] = [{"dim": _dim_name(int(d), int(m.z_pose_dim)),
                             "weight": float(ridge["w"][d])}
                            for d in np.argsort(-np.abs(ridge["w"]))[:5]]

  # 2. Generation for every clip of the split.
  entries = splits.split_entries(index, split, **split_kw)
  if max_clips is not None:
    entries = entries[:max_clips]
  model = motion_dit.build_motion_model(config)
  denoise_fn, encode_fn = motion_dit.make_apply_fns(model)
  sample_fn = sampler.make_sample_window(denoise_fn, config, steps=steps)
  encode = jax.jit(encode_fn)
  scale_stats = input_pipeline.face_scale_stats(source)
  rng = jax.random.key(seed)
  recs = [source[pos[e["clip"]]] for e in entries]
  envs = [_envelope(r, _motion(r).shape[0]) for r in recs]
  clips = []
  t1 = time.perf_counter()
  for k, (e, rec) in enumerate(zip(entries, recs)):
    real = _motion(rec)  # (T, Dm)
    t = real.shape[0]
    ctrl = _controls(rec, scale_stats, int(m.emotion_dim)) if use_controls else {}
    controls = sampler.make_controls(int(m.emotion_dim), **ctrl)
    gen_n = sampler.sample_sequence(
        sample_fn, params, np.asarray(rec["audio_feats"], np.float32), controls,
        jax.random.fold_in(rng, k), window=int(m.window), context=int(m.context),
        motion_dim=int(m.motion_dim), encode_fn=encode, cfg_audio=cfg_audio, cfg_gaze=cfg_gaze)
    gen = np.asarray(gen_n, np.float64) * std + mean  # (T, Dm) de-normalised
    mouth_gen, mouth_real = predict_ridge(ridge, gen), predict_ridge(ridge, real)
    label = np.asarray(rec["mouth_open"], np.float64)
    env = envs[k]
    row = {"clip": e["clip"], "person": e["person"], "frames": int(t),
           "has_speech": bool(rec.get("has_speech", True)),
           "controls": {key: (None if v is None else np.asarray(v).tolist())
                        for key, v in ctrl.items()}}
    row["gen_vs_label"] = correlation(mouth_gen, label)
    row["gen_vs_label_detrended"] = correlation(lipsync.detrend(mouth_gen),
                                                lipsync.detrend(label))
    row["gen_vs_real"] = correlation(mouth_gen, mouth_real)
    row["gen_vs_real_detrended"] = correlation(lipsync.detrend(mouth_gen),
                                               lipsync.detrend(mouth_real))
    row["real_vs_label"] = correlation(mouth_real, label)
    row["real_vs_label_detrended"] = correlation(lipsync.detrend(mouth_real),
                                                 lipsync.detrend(label))
    series = {"generated": mouth_gen, "real_motion": mouth_real, "label": label}
    for name, s in series.items():
      scores = lipsync.lipsync_scores(s, env)
      row.update({f"sync_{name}_{key}": scores[key] for key in SYNC_KEYS})
    if len(recs) > 1:  # the label against another clip's audio: correlation without sync
      scores = lipsync.lipsync_scores(label, envs[(k + 1) % len(recs)])
      row.update({f"sync_mismatched_{key}": scores[key] for key in SYNC_KEYS})
    row["std_generated"] = float(np.std(mouth_gen))
    row["std_real_motion"] = float(np.std(mouth_real))
    row["std_label"] = float(np.nanstd(label)) if np.isfinite(label).any() else float("nan")
    row["spread_ratio"] = row["std_generated"] / max(row["std_real_motion"], 1e-12)
    ratio = np.std((gen - mean) / std, 0) / np.maximum(np.std((real - mean) / std, 0), 1e-8)
    row["pose_std_ratio"] = float(ratio[:int(m.z_pose_dim)].mean())
    row["dyn_std_ratio"] = float(ratio[int(m.z_pose_dim):].mean())
    row["series"] = {"generated": mouth_gen.tolist(), "real_motion": mouth_real.tolist(),
                     "label": label.tolist(), "envelope": env.tolist()}
    clips.append(row)
  t2 = time.perf_counter()

  # 3. Means over clips (sync figures over clips with speech).
  speech = [c for c in clips if c["has_speech"]] or clips
  means = {}
  for key in ("gen_vs_label", "gen_vs_label_detrended", "gen_vs_real", "gen_vs_real_detrended",
              "real_vs_label", "real_vs_label_detrended", "std_generated", "std_real_motion",
              "std_label", "spread_ratio", "pose_std_ratio", "dyn_std_ratio"):
    means[key] = _mean(clips, key)
  for name in SIGNALS:
    for key in SYNC_KEYS:
      means[f"sync_{name}_{key}"] = _mean(speech, f"sync_{name}_{key}")

  # 4. Validation diffusion loss.
  frames = [int(e["frames"]) for e in entries]
  nw = _num_windows(frames, int(config.data.window), int(config.data.context))
  loss = (validation_loss(config, params, motion_dir, split, val_persons, nw, loss_batches)
          if nw else None)
  t3 = time.perf_counter()

  result = {
      "motion_checkpoint": str(motion_workdir), "motion_dir": str(motion_dir),
      "latent": latent_info, "split": split, "val_persons": val_persons, "steps": int(steps),
      "seed": int(seed), "cfg_audio": cfg_audio, "cfg_gaze": cfg_gaze,
      "use_controls": bool(use_controls), "clips_evaluated": len(clips),
      "clips_with_speech": sum(c["has_speech"] for c in clips),
      "ridge": ridge_info, "means": means, "loss": loss, "clips": clips,
      "timing": {"load_s": t1 - t0, "generate_s": t2 - t1, "loss_s": t3 - t2,
                 "frames_per_s": sum(frames) / max(t2 - t1, 1e-9)},
  }
  if out is not None:
    write_outputs(result, out)
  return result


# ------------------------------------------------------------------------------- writing


def render_markdown(result: dict) -> str:
  """Summary table (one row per mouth series), the readout's R^2 and the validation loss."""
  mn, r = result["means"], result["ridge"]
  rows = [("generated motion -> readout", "generated", mn["gen_vs_label"], mn["gen_vs_real"],
           mn["std_generated"]),
          ("real motion -> readout", "real_motion", mn["real_vs_label"], 1.0,
           mn["std_real_motion"]),
          ("real mouth_open label", "label", 1.0, mn["real_vs_label"], mn["std_label"]),
          ("label vs another clip's audio", "mismatched", None, None, None)]
  lines = [f"# Stage 2 lip sync: {result['motion_checkpoint']}", "",
           f"Split `{result['split']}` ({result['clips_evaluated']} clips, "
           f"{result['clips_with_speech']} with speech; unseen persons: "
           f"{', '.join(result['val_persons']) or 'none'}), {result['steps']} DDIM steps, "
           f"guidance audio {result['cfg_audio']} / gaze {result['cfg_gaze']}, controls "
           f"{'from each clip' if result['use_controls'] else 'dropped'}.", "",
           "Mouth readout (ridge [z_pose, z_dyn] -> mouth_open, fitted within the training "
           f"persons' clips): R^2 within clips train {fmt(r['r2_train_within_clip'])}, "
           f"held-out persons {fmt(r['r2_val_within_clip'])} (a plain fit: train "
           f"{fmt(r['r2_train'])}, held-out {fmt(r['r2_val'])}). Largest weights: "
           + ", ".join(f"{d['dim']} {d['weight']:+.3f}" for d in r["top_dims"][:3]) + ".", "",
           "| mouth series | corr w/ label | corr w/ real-motion readout | sync corr detrended "
           "| lag (frames) | sync corr raw | lag raw | spread (std) | spread detrended |",
           "|---|---|---|---|---|---|---|---|---|"]
  for label, name, c_label, c_real, spread in rows:
    p = f"sync_{name}_"
    lines.append(
        f"| {label} | {fmt(c_label)} | {fmt(c_real)} | {fmt(mn[p + 'corr_detrended'])} | "
        f"{fmt(mn[p + 'lag_detrended'], '{:+.1f}')} | {fmt(mn[p + 'corr_raw'])} | "
        f"{fmt(mn[p + 'lag_raw'], '{:+.1f}')} | {fmt(spread, '{:.4f}')} | "
        f"{fmt(mn[p + 'mouth_std_detrended'], '{:.4f}')} |")
  lines += ["", f"Detrended correlations of the generated readout: with the label "
            f"{fmt(mn['gen_vs_label_detrended'])}, with the real-motion readout "
            f"{fmt(mn['gen_vs_real_detrended'])} (real readout vs label "
            f"{fmt(mn['real_vs_label_detrended'])}).",
            f"Spread, generated / real: mouth readout {fmt(mn['spread_ratio'], '{:.2f}')}; "
            f"motion (normalised units) pose {fmt(mn['pose_std_ratio'], '{:.2f}')}, dynamics "
            f"{fmt(mn['dyn_std_ratio'], '{:.2f}')}.", ""]
  if not 0.5 <= mn["spread_ratio"] <= 2.0:
    lines += [f"**Warning**: the generated mouth signal moves {mn['spread_ratio']:.2f}x as much "
              "as the real one; its sync correlation is not comparable to the real rows (a "
              "model that passes audio loudness straight into motion correlates with the "
              "envelope without moving like a face).", ""]
  loss = result.get("loss")
  if loss:
    lines += [f"Validation diffusion loss ({loss['batches']} batches of {loss['batch_size']} "
              f"windows, random t with a fixed key): x0 MSE {fmt(loss.get('loss_x0'), '{:.4f}')}"
              f", velocity MSE {fmt(loss.get('loss_velocity'), '{:.4f}')}, total "
              f"{fmt(loss.get('loss'), '{:.4f}')}.", ""]
  lines += ["## Per clip", "",
            "| clip | person | frames | corr gen-label | corr gen-real | sync gen (det.) | "
            "sync real (det.) | sync label (det.) | std gen | std real |",
            "|---|---|---|---|---|---|---|---|---|---|"]
  for c in result["clips"]:
    lines.append(f"| {c['clip']} | {c['person']} | {c['frames']} | {fmt(c['gen_vs_label'])} | "
                 f"{fmt(c['gen_vs_real'])} | {fmt(c['sync_generated_corr_detrended'])} | "
                 f"{fmt(c['sync_real_motion_corr_detrended'])} | "
                 f"{fmt(c['sync_label_corr_detrended'])} | "
                 f"{fmt(c['std_generated'], '{:.4f}')} | {fmt(c['std_real_motion'], '{:.4f}')} |")
  lines.append("")
  return "\n".join(lines)


def write_outputs(result: dict, out) -> pathlib.Path:
  """Writes `motion_lipsync.json` and `motion_lipsync.md` into `out`."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  fileio.atomic_write_text(out / JSON_NAME, json.dumps(report.to_jsonable(result), indent=1))
  fileio.atomic_write_text(out / MD_NAME, render_markdown(result))
  return out
