"""`vasa-jax bench`: the speed of each part and of the whole, printed as a table.

Every timing is taken after compilation (compile time is reported on its own), on the default
JAX device, and blocks on the result. FLOPs come from XLA's cost analysis of the compiled
functions. On a shared CPU compare ratios within one run; absolute numbers mean something only on
a dedicated accelerator, which the table names.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax import config_utils
from vasa_jax.constants import SAMPLE_RATE
from vasa_jax.data import audio_features
from vasa_jax.diffusion import sampler as sampler_lib
from vasa_jax.inference import pipeline as pipeline_lib
from vasa_jax.models import motion_labels


def _block(x):
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def time_fn(fn, *args, repeats: int = 3):
  """(compile-inclusive first call seconds, best of `repeats` later calls seconds, output)."""
  t0 = time.perf_counter()
  out = _block(fn(*args))
  first = time.perf_counter() - t0
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = _block(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return first, best, out


def flops_of(jitted, *args) -> float | None:
  """FLOPs of one call from XLA's cost analysis (None where it gives none).

  The analysis runs on the HLO lowered for the host CPU, whatever the default device: XLA:GPU's
  analysis skips the convolutions it hands to cuDNN (measured on an H100 and an H200: 0.7 GFLOP
  per frame for a decoder that does 114), XLA:CPU's counts every op of the same program.
  """
  cpu = jax.devices("cpu")[0]
  on_cpu = jax.sharding.SingleDeviceSharding(cpu)
  abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on_cpu)
      if hasattr(a, "dtype") and hasattr(a, "shape") else a, args)
  try:
    cost = jitted.lower(*abstract).cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and cost.get("flops") else None


def stream_latency(pipe, portrait, wav: np.ndarray, first_window: int | None = None, *,
                   repeats: int = 3, chunk_ms: float = 20.0, paste_back: bool = False,
                   max_size: int | None = 1024) -> dict:
  """Streaming first-frame latency and sustained rate for one `first_window` setting.

  `chunk_ms` chunks are fed as fast as they are consumed, so the measured first-frame time is
  compute only (incremental log-mel, audio encoding, one window, one decoder call), and an upper
  bound on the compute left once the last chunk it needs has arrived. The audio a live source must
  deliver first, (first_window + look-ahead) frames plus the last frame's log-mel reach, in whole
  chunks, is added as buffering time. `paste_back` (the portrait needs a photo) streams full
  frames.
  """
  chunk = max(1, int(round(SAMPLE_RATE * chunk_ms / 1000)))

  def one(stop_at_first: bool):
    chunks = (wav[i:i + chunk] for i in range(0, wav.shape[0], chunk))
    t_start, first_frame, count = time.perf_counter(), None, 0
    for _ in pipe.stream(portrait, chunks, gaze=(0.0, 0.0), distance=0.0, seed=0,
                         first_window=first_window, paste_back=paste_back, max_size=max_size):
      if first_frame is None:
        first_frame = time.perf_counter() - t_start
        if stop_at_first:
          break
      count += 1
    return first_frame, count / (time.perf_counter() - t_start)

  one(False)  # compiles whatever the streaming path has not compiled yet
  first_frame_s, stream_fps = one(False)
  for _ in range(repeats - 1):  # the first frame is short and noisy on a shared CPU: best of
    first_frame_s = min(first_frame_s, one(True)[0])
  buffering_s = pipe.stream_buffering_s(first_window, chunk)
  return {"first_window": first_window or pipe.window, "chunk_ms": chunk_ms,
          "audio_buffering_s": buffering_s,
          "first_frame_compute_s": first_frame_s,
          "first_frame_latency_s": buffering_s + first_frame_s, "stream_fps": stream_fps}


def run(config_spec: str = "configs/demo.py:demo", overrides=(), *, checkpoint=None,
        seconds: float = 4.0, out: str | None = None, repeats: int = 3,
        first_window: int = 5, chunk_ms: float = 20.0, paste_size: int = 1024) -> dict:
  """Benchmarks a pipeline (random weights unless `checkpoint`) and prints a table.

  Streaming latency is measured for the default (first window = W) and for a short first
  window of `first_window` frames (capped at W), one row each. Paste-back is measured into a
  `paste_size` square photo whose middle half is the crop (the decoder + paste-back call, and
  offline and streaming rates with it on, next to the crop-only ones).
  """
  config = config_utils.load_config(config_spec, overrides)
  t0 = time.perf_counter()
  pipe = (pipeline_lib.load_pipeline(checkpoint, **pipeline_lib.inference_knobs(config))
          if checkpoint else pipeline_lib.random_pipeline(config))
  build_s = time.perf_counter() - t0
  device = jax.devices()[0]
  r, w = pipe.resolution, pipe.window
  rng = np.random.default_rng(0)
  wav = (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)
  n_frames = audio_features.frames_for_audio(wav.shape[0])
  feats = jnp.asarray(audio_features.log_mel(wav, num_frames=n_frames))[None]
  rows = []

  def add(name, first, best, per, unit, flops=None):
    rows.append({"part": name, "compile_s": max(first - best, 0.0), "time_s": best,
                 "per": per, "unit": unit, "flops": flops})

  # Portrait: encoder + canonical volume (once per clip). Random pixels: no face detection here.
  img = jnp.asarray(rng.integers(0, 255, (1, r, r, 3), dtype=np.uint8))
  pargs = (pipe.latent_params, img, *map(jnp.asarray, motion_labels.no_labels(1)))
  first, best, enc = time_fn(pipe.encode_portrait, *pargs, repeats=repeats)
  add("portrait encode + canonicalize", first, best, best, "s/clip",
      flops_of(pipe.encode_portrait, *pargs))
  portrait = pipeline_lib.Portrait(crop=np.asarray(img[0]), v_can=enc[0], z_id=enc[1],
                                   z_pose=enc[2], z_dyn=enc[3])

  first, best, encoded = time_fn(pipe.encode_audio, pipe.motion_params, feats, repeats=repeats)
  add(f"audio encoder ({n_frames} frames)", first, best, best / n_frames, "s/frame",
      flops_of(pipe.encode_audio, pipe.motion_params, feats))

  controls = pipe.controls(gaze=(0.0, 0.0), distance=0.0)
  carry = sampler_lib.initial_carry(1, pipe.context, pipe.motion_dim, encoded.shape[-1])
  seg, mask = sampler_lib.pad_window(encoded[0], 0, w)
  # XLA's cost analysis counts a while loop's body once, so a window's FLOPs are those of one
  # guided denoising call (3 CFG branches in one batch) times the number of steps.
  cond = sampler_lib.build_cond(carry, seg[None], mask[None], controls)
  guided = jax.jit(lambda p, x, t, c: sampler_lib.guided_x0(pipe.denoise_fn, p, x, t, c, 0.5,
                                                            1.0))
  x_t = jnp.zeros((1, w, pipe.motion_dim), jnp.float32)
  step_flops = flops_of(guided, pipe.motion_params, x_t, jnp.zeros((1,), jnp.int32), cond)
  window_flops = {}
  for steps in sorted({50, 10, pipe.steps}, reverse=True):
    fn = pipe.sample_window_fn(steps)
    args = (pipe.motion_params, carry, seg[None], mask[None], controls, jax.random.key(0),
            0.5, 1.0)
    first, best, _ = time_fn(fn, *args, repeats=repeats)
    window_flops[steps] = step_flops * steps if step_flops is not None else None
    add(f"motion window W={w}, {steps} steps", first, best, best / w, "s/frame",
        window_flops[steps])

  z = jnp.zeros((w, pipe.motion_dim), jnp.float32)
  rargs = (pipe.latent_params, portrait.v_can, portrait.z_id, z[:, :pipe.z_pose_dim],
           z[:, pipe.z_pose_dim:])
  first, best, _ = time_fn(pipe.render, *rargs, repeats=repeats)
  render_flops = flops_of(pipe.render, *rargs)
  add(f"decoder ({w} frames per call)", first, best, best / w, "s/frame", render_flops)
  decoder_s = best
  # Paste-back: a synthetic photo whose middle half is the crop; the same jitted call as
  # generation (decoder + paste-back), so its extra time is paste-back's cost.
  photo = rng.integers(0, 255, (paste_size, paste_size, 3), dtype=np.uint8)
  q = paste_size / 4
  pasted = dataclasses.replace(portrait, photo=photo,
                               box=np.array([q, q, 3 * q, 3 * q], np.float32))
  target = pipe.paste_target(pasted, paste_size)
  first, best, _ = time_fn(pipe.render_paste, *rargs, target.tree(), repeats=repeats)
  add(f"decoder + paste-back to {paste_size}x{paste_size} ({w})", first, best, best / w,
      "s/frame")
  paste_s = max(best - decoder_s, 0.0) / w
  rows.append({"part": "  paste-back alone (difference)", "compile_s": 0.0,
               "time_s": paste_s * w, "per": paste_s, "unit": "s/frame", "flops": None})
  rb = pipe.render_batch
  if rb != w:  # the streaming latency lever: what one smaller call costs
    sargs = rargs[:3] + (rargs[3][:rb], rargs[4][:rb])
    first, best, _ = time_fn(pipe.render, *sargs, repeats=repeats)
    add(f"decoder ({rb} frames per call)", first, best, best / rb, "s/frame",
        flops_of(pipe.render, *sargs))

  # End to end, offline and streaming: the pipeline's own paths, on the encoded portrait (no
  # face detection), everything compiled by the calls above or by a first untimed run.
  def offline(p=portrait, paste=False):
    return pipe.generate(p, wav, gaze=(0.0, 0.0), distance=0.0, seed=0, paste_back=paste,
                         max_size=paste_size).frames

  first, best, _ = time_fn(offline, repeats=repeats)
  offline_fps = n_frames / best
  add(f"end to end offline ({pipe.steps} steps)", first, best, best / n_frames, "s/frame")
  first, best, _ = time_fn(lambda: offline(pasted, True), repeats=repeats)
  offline_paste_fps = n_frames / best
  add(f"end to end offline, paste-back {paste_size} px", first, best, best / n_frames,
      "s/frame")

  stream_rows = [stream_latency(pipe, portrait, wav, fw, repeats=repeats, chunk_ms=chunk_ms)
                 for fw in (None, min(first_window, w))]
  default = stream_rows[0]
  stream_paste = stream_latency(pipe, pasted, wav, None, repeats=repeats, chunk_ms=chunk_ms,
                                paste_back=True, max_size=paste_size)

  flops_frame = None
  if render_flops is not None and window_flops.get(pipe.steps) is not None:
    flops_frame = (render_flops + window_flops[pipe.steps]) / w
  result = {
      "device": f"{device.platform}:{device.device_kind}", "num_devices": jax.device_count(),
      "config": config_spec, "overrides": list(overrides), "resolution": r, "window": w,
      "compute_dtype": str(pipe.compute_dtype), "render_batch": pipe.render_batch,
      "steps": pipe.steps, "audio_seconds": seconds, "frames": n_frames,
      "pipeline_build_s": build_s, "rows": rows,
      "offline_fps": offline_fps, "stream_first_frame_compute_s": default["first_frame_compute_s"],
      "stream_audio_buffering_s": default["audio_buffering_s"],
      "stream_fps": default["stream_fps"], "stream_latency": stream_rows,
      "paste_size": paste_size, "paste_s_per_frame": paste_s,
      "offline_paste_fps": offline_paste_fps, "stream_paste_fps": stream_paste["stream_fps"],
      "stream_paste_first_frame_compute_s": stream_paste["first_frame_compute_s"],
      "flops_per_frame": flops_frame,
      "achieved_flops_per_s": (flops_frame * offline_fps) if flops_frame else None,
  }
  print_table(result)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      json.dump(result, f, indent=1)
  return result


def print_table(result: dict):
  print(f"\nvasa-jax bench: {result['config']} {' '.join(result['overrides'])} on "
        f"{result['device']} x{result['num_devices']}, {result['resolution']}x"
        f"{result['resolution']}, W={result['window']}, {result['frames']} frames, "
        f"{result.get('compute_dtype', 'float32')}, {result.get('render_batch', result['window'])}"
        " frames per decoder call")
  print(f"| {'part':42s} | {'compile s':>9s} | {'time s':>9s} | {'per unit':>10s} | unit     "
        f"| {'GFLOP':>9s} |")
  print(f"|{'-' * 44}|{'-' * 11}|{'-' * 11}|{'-' * 12}|----------|{'-' * 11}|")
  for row in result["rows"]:
    g = f"{row['flops'] / 1e9:9.2f}" if row["flops"] else f"{'-':>9s}"
    print(f"| {row['part']:42s} | {row['compile_s']:9.2f} | {row['time_s']:9.4f} | "
          f"{row['per']:10.5f} | {row['unit']:8s} | {g} |")
  print(f"\noffline: {result['offline_fps']:.1f} frames/s; streaming: "
        f"{result['stream_fps']:.1f} frames/s sustained, first frame after "
        f"{1000 * result['stream_first_frame_compute_s']:.0f} ms of compute + "
        f"{1000 * result['stream_audio_buffering_s']:.0f} ms of audio buffering")
  print_stream_latency(result.get("stream_latency", []), result["window"])
  if result.get("paste_size"):
    print_paste_back(result)
  if result.get("flops_per_frame"):
    print(f"model FLOPs per frame (sampling + rendering): {result['flops_per_frame'] / 1e9:.2f} "
          f"GFLOP; achieved {result['achieved_flops_per_s'] / 1e12:.3f} TFLOP/s offline")


def print_paste_back(result: dict):
  """Crop-only vs paste-back rates, measured in the same run."""
  n = result["paste_size"]
  print(f"\npaste-back to {n}x{n}: {1000 * result['paste_s_per_frame']:.2f} ms per frame")
  print(f"| {'rate, frames/s':24s} | {'crop only':>9s} | {f'paste {n}':>10s} | {'ratio':>6s} |")
  print(f"|{'-' * 26}|{'-' * 11}|{'-' * 12}|{'-' * 8}|")
  for label, crop, paste in (("offline", result["offline_fps"], result["offline_paste_fps"]),
                             ("streaming (first window W)", result["stream_fps"],
                              result["stream_paste_fps"])):
    print(f"| {label:24s} | {crop:9.1f} | {paste:10.1f} | {paste / max(crop, 1e-9):6.2f} |")


def print_stream_latency(rows: list[dict], window: int):
  """Streaming first-frame latency per first-window setting (buffering and compute apart)."""
  if not rows:
    return
  print(f"\nstreaming: audio fed in {rows[0].get('chunk_ms', 40):g} ms chunks")
  print(f"| {'streaming, first window':24s} | {'buffering ms':>12s} | {'compute ms':>10s} | "
        f"{'first frame ms':>14s} | {'frames/s':>8s} |")
  print(f"|{'-' * 26}|{'-' * 14}|{'-' * 12}|{'-' * 16}|{'-' * 10}|")
  for row in rows:
    label = f"{row['first_window']} frames" + (" (= W)" if row["first_window"] == window else "")
    print(f"| {label:24s} | {1000 * row['audio_buffering_s']:12.0f} "
          f"| {1000 * row['first_frame_compute_s']:10.0f} | "
          f"{1000 * row['first_frame_latency_s']:14.0f} | {row['stream_fps']:8.1f} |")
