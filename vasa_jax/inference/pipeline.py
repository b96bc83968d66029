"""The generation pipeline: portrait + speech -> talking-face frames (offline and streaming).

    pipe = load_pipeline()                       # the bundled demo checkpoint
    result = pipe.generate("me.jpg", "speech.wav", steps=10)
    for frame in pipe.stream("me.jpg", chunks): ...

Per clip: the portrait is cropped as in training and encoded once (`v_app`, `z_id`, its pose and
dynamics), then canonicalised once (the source warp); the speech becomes log-mel rows, then
encoded audio; motion is sampled window by window by one jitted `sample_window`; each window of
motion is rendered by jitted decoder calls of `render_batch` frames (default W). Offline
generation dispatches window i + 1 before it copies window i's frames to the host, so the copy
and the Python loop overlap the accelerator's work. Streaming runs the same jitted functions per
window as audio arrives, so for the same seed it gives the same frames.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax import params_io
from vasa_jax.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from vasa_jax.data import face_crop, face_labels, media
from vasa_jax.diffusion import sampler as sampler_lib
from vasa_jax.errors import CheckpointError, VasaInputError
from vasa_jax.fileio import atomic_write_text
from vasa_jax.image_ops import to_uint8_image
from vasa_jax.inference.controls import check_controls
from vasa_jax.inference.streaming import SAMPLE_LOOKAHEAD
from vasa_jax.models import face_model, layers, motion_dit, motion_labels
from vasa_jax.models.face_model import FaceModel
from vasa_jax.models.layers import fast_init_key

PIPELINE_FILE = "pipeline.json"
DEFAULT_CHECKPOINT = pathlib.Path(__file__).resolve().parent.parent / "assets" / "demo"
EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")


@dataclasses.dataclass
class GenerationResult:
  """Frames (T, H, W, 3) uint8 at `fps`, the 16 kHz audio they follow, and the motion used."""
  frames: np.ndarray
  fps: float
  audio: np.ndarray
  sample_rate: int
  motion: np.ndarray  # (T, 6 + Dz) denormalised [z_pose, z_dyn]
  timings: dict


@dataclasses.dataclass
class Portrait:
  """A portrait encoded once: the crop, its canonical volume and its own latents."""
  crop: np.ndarray  # (R, R, 3) uint8
  v_can: Any  # (1, D, S, S, C), or a dict of such leaves (`FaceDecoder.canonicalize`)
  z_id: jax.Array  # (1, Zi)
  z_pose: jax.Array  # (1, 6)
  z_dyn: jax.Array  # (1, Zd)


def check_mouth_scale(scale) -> float:
  """A mouth scale as a float, or a clear error (it must be a finite number >= 0)."""
  try:
    value = float(scale)
  except (TypeError, ValueError):
    value = float("nan")
  if not (np.isfinite(value) and value >= 0):
    raise VasaInputError(f"mouth_scale must be a finite number >= 0 (1 = as sampled), got "
                         f"{scale!r}.")
  return value


def broadcast_batch(tree, n: int):
  """Repeats every leaf of a batch-1 pytree (a portrait's v_can, z_id) to batch n."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape[1:]), tree)


def parse_emotion(emotion, emotion_dim: int) -> np.ndarray | None:
  """None, an emotion name or a vector (sequence or comma-separated text) -> (E,) or None."""
  if emotion is None or (isinstance(emotion, str) and not emotion.strip()):
    return None
  if isinstance(emotion, str):
    name = emotion.strip().lower()
    if name in EMOTIONS:
      vec = np.zeros((emotion_dim,), np.float32)
      vec[EMOTIONS.index(name)] = 1.0
      return vec
    try:
      emotion = [float(v) for v in name.split(",")]
    except ValueError:
      raise VasaInputError(f"Unknown emotion {emotion!r}: use one of {', '.join(EMOTIONS)} or a "
                           f"comma-separated vector of {emotion_dim} numbers.") from None
  vec = np.asarray(emotion, np.float32).reshape(-1)
  if vec.shape != (emotion_dim,):
    raise VasaInputError(f"Emotion vector has {vec.size} values; this model expects "
                         f"{emotion_dim}.")
  return vec


class Pipeline:
  """Stage 1 + stage 2 models with their jitted inference functions.

  Args:
    latent_config, latent_params: the stage 1 run (config with `.model`).
    motion_config, motion_params: the stage 2 run.
    motion_stats: {"mean": [...], "std": [...]} of [z_pose, z_dyn] used in training.
    steps: default sampling steps (None: the motion config's `diffusion.sample_steps`).
    cfg_audio, cfg_gaze: default guidance scales (None: the motion config's `diffusion.cfg_*`,
      the paper's 0.5 and 1.0; `vasa-jax export --cfg-audio` stores a checkpoint's own).
    pose_mode: "relative" adds the generated head motion (relative to the training mean pose)
      to the portrait's own pose, so the portrait keeps its framing; "absolute" uses it as is.
    compute_dtype: activation dtype of both models ("bfloat16" halves the decoder's memory
      traffic on accelerators; parameters are cast at use, outputs stay float32).
    render_batch: frames per decoder call (0 = W). Fewer frames per call make the first
      streamed frame leave sooner (it waits for its call only, not the whole window).
    mouth_scale: default gain on the generated mouth-opening entry's departure from the
      portrait's own (1 = as sampled; None: 1). A decoder that renders mouth changes too weakly
      (the demo's) shows more of the sampled speech motion with a gain above 1; like SadTalker's
      `expression_scale`, but on the one entry the face mesh labels (`motion_labels`).
  """

  def __init__(self, latent_config, latent_params, motion_config, motion_params, motion_stats,
               *, steps: int | None = None, cfg_audio: float | None = None,
               cfg_gaze: float | None = None, pose_mode: str = "relative",
               compute_dtype: str = "float32", render_batch: int = 0,
               mouth_scale: float | None = None):
    if pose_mode not in ("relative", "absolute"):
      raise ValueError(f"pose_mode must be 'relative' or 'absolute', got {pose_mode!r}")
    self.latent_config, self.motion_config = latent_config, motion_config
    self.latent_params, self.motion_params = latent_params, motion_params
    self.resolution = int(latent_config.model.resolution)
    self.z_pose_dim = int(latent_config.model.z_pose_dim)
    self._mouth_index = motion_labels.MOUTH_INDEX  # the z_dyn entry `mouth_scale` acts on
    m = motion_config.model
    if int(m.motion_dim) != self.z_pose_dim + int(latent_config.model.z_dyn_dim):
      raise CheckpointError(
          f"Stage 2 motion_dim {m.motion_dim} does not match stage 1 z_pose + z_dyn "
          f"({self.z_pose_dim} + {latent_config.model.z_dyn_dim}): the two checkpoints were not "
          "trained together.")
    self.window, self.context = int(m.window), int(m.context)
    self.motion_dim, self.emotion_dim = int(m.motion_dim), int(m.emotion_dim)
    self.steps = int(steps or motion_config.diffusion.sample_steps)
    d = motion_config.diffusion
    self.cfg_audio = float(d.cfg_audio if cfg_audio is None else cfg_audio)
    self.cfg_gaze = float(d.cfg_gaze if cfg_gaze is None else cfg_gaze)
    self.pose_mode = pose_mode
    self.mouth_scale = check_mouth_scale(1.0 if mouth_scale is None else mouth_scale)
    self.compute_dtype = jnp.dtype(compute_dtype)
    if int(render_batch) < 0:
      raise ValueError(f"render_batch must be >= 0 (0 = one window), got {render_batch}")
    self.render_batch = int(render_batch) or self.window
    self.mean = np.asarray(motion_stats["mean"], np.float32)
    self.std = np.asarray(motion_stats["std"], np.float32)
    self._sampler_lib = sampler_lib

    self.face_model = FaceModel(latent_config.model, dtype=self.compute_dtype)
    self._face_cfg = layers.as_face_config(latent_config.model)
    self.motion_model = motion_dit.build_motion_model(motion_config, dtype=self.compute_dtype)
    self._denoise_fn, encode_fn = motion_dit.make_apply_fns(self.motion_model)
    self.audio_receptive_past = int(self.motion_model.audio_encoder.receptive_past)
    self.audio_lookahead = int(self.motion_model.audio_encoder.lookahead)
    self._encode_audio = jax.jit(encode_fn)
    self._samplers: dict[int, Any] = {}
    face = self.face_model

    @jax.jit
    def encode_portrait(params, img, labels, valid):  # (1, R, R, 3) uint8, (1, 5), (1,)
      return face_model.encode_portrait(face, params, img, labels, valid)

    @jax.jit
    def render(params, v_can, z_id, z_pose, z_dyn):  # (1, ...) portrait, (n, 6), (n, Zd)
      n = z_pose.shape[0]
      v, zi = broadcast_batch((v_can, z_id), n)
      img = face.apply({"params": params}, v, zi, z_pose, z_dyn, method=FaceModel.render)
      return to_uint8_image(img)

    self._encode_portrait, self._render = encode_portrait, render

  # -- building blocks ---------------------------------------------------------------------

  def sample_window_fn(self, steps: int | None = None):
    """The jitted window sampler for `steps` (compiled once per step count, then reused)."""
    steps = int(steps or self.steps)
    if steps not in self._samplers:
      self._samplers[steps] = self._sampler_lib.make_sample_window(
          self._denoise_fn, self.motion_config, steps=steps)
    return self._samplers[steps]

  def stream_buffering_s(self, first_window: int | None = None,
                         chunk_samples: int | None = None) -> float:
    """Seconds of audio `stream` waits for before its first frame can exist.

    That is the first window (W, or `first_window`) plus the audio encoder's look-ahead, at 25
    fps, plus the 176 samples (11 ms) the last frame's log-mel rows reach past it; with a source
    that delivers `chunk_samples` at a time, rounded up to whole chunks.
    """
    frames = (first_window or self.window) + self.audio_lookahead
    need = frames * SAMPLES_PER_FRAME + SAMPLE_LOOKAHEAD
    if chunk_samples:
      need = -(-need // int(chunk_samples)) * int(chunk_samples)
    return need / SAMPLE_RATE

  def _guidance(self, cfg_audio, cfg_gaze) -> tuple[float, float]:
    return (self.cfg_audio if cfg_audio is None else float(cfg_audio),
            self.cfg_gaze if cfg_gaze is None else float(cfg_gaze))

  def controls(self, gaze=None, distance=None, emotion=None) -> dict:
    """Control inputs; None = dropped (the model's unconditional null token)."""
    if gaze is not None and np.asarray(gaze).shape != (2,):
      raise VasaInputError(f"gaze must be (theta, phi) in radians, got {gaze!r}")
    dist = None if distance is None else np.asarray([float(np.asarray(distance).ravel()[0])])
    return self._sampler_lib.make_controls(
        self.emotion_dim, gaze=None if gaze is None else np.asarray(gaze, np.float32),
        distance=dist, emotion=parse_emotion(emotion, self.emotion_dim))

  def prepare_portrait(self, image, *, source: str | None = None) -> Portrait:
    """Reads, crops (as in training) and encodes a portrait once."""
    if source is None:
      source = str(image) if isinstance(image, (str, os.PathLike)) else "<array>"
    img = media.read_image(image)
    face = face_crop.crop_image(img, self.resolution, source=source)
    labels, valid = face_labels.landmark_labels(face.landmarks[None], self.resolution,
                                                self._face_cfg)
    v_can, z_id, z_pose, z_dyn = self._encode_portrait(self.latent_params, face.image[None],
                                                       labels, valid)
    return Portrait(crop=face.image, v_can=v_can, z_id=z_id, z_pose=z_pose, z_dyn=z_dyn)

  def denormalize(self, motion: np.ndarray, portrait: Portrait,
                  mouth_scale: float | None = None) -> np.ndarray:
    """Normalised sampler output (T, Dm) -> [z_pose, z_dyn] the decoder takes."""
    out = np.asarray(motion, np.float32) * self.std + self.mean
    p = self.z_pose_dim
    if self.pose_mode == "relative":
      out[:, :p] += np.asarray(portrait.z_pose[0]) - self.mean[:p]
    scale = self._mouth_scale(mouth_scale)
    return out if scale == 1.0 else self.scale_mouth(out, portrait, scale)

  def scale_mouth(self, motion: np.ndarray, portrait: Portrait, scale: float) -> np.ndarray:
    """Denormalised (T, Dm) motion with the mouth entry's departure from the portrait's own
    value multiplied by `scale` (a copy)."""
    out = np.array(motion, np.float32)
    i = self._mouth_index
    own = float(np.asarray(portrait.z_dyn[0, i]))
    out[:, self.z_pose_dim + i] = own + check_mouth_scale(scale) * (
        out[:, self.z_pose_dim + i] - own)
    return out

  def _mouth_scale(self, value) -> float:
    return self.mouth_scale if value is None else check_mouth_scale(value)

  def render_chunks(self, portrait: Portrait, motion: np.ndarray) -> list[jax.Array]:
    """Dispatches the decoder on (T, Dm) denormalised motion without waiting for it.

    Returns device arrays of `render_batch` frames each, (B, R, R, 3) uint8; the last is padded
    by repeating its last frame (one compiled shape), so together they hold >= T frames.
    """
    b, p = self.render_batch, self.z_pose_dim
    chunks = []
    for start in range(0, motion.shape[0], b):
      chunk = motion[start:start + b]
      if chunk.shape[0] < b:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - chunk.shape[0], 0)])
      chunks.append(self._render(self.latent_params, portrait.v_can, portrait.z_id,
                                 jnp.asarray(chunk[:, :p]), jnp.asarray(chunk[:, p:])))
    return chunks

  def host_frames(self, chunks: list[jax.Array], n: int) -> Iterator[np.ndarray]:
    """The first `n` frames of `render_chunks`' output, one host array per chunk, each as soon
    as its decoder call is done (the padding of the last chunk dropped)."""
    for j, c in enumerate(chunks):
      yield np.asarray(c)[:n - j * self.render_batch]

  def render_frames(self, portrait: Portrait, motion: np.ndarray) -> np.ndarray:
    """(T, Dm) denormalised motion -> (T, R, R, 3) uint8."""
    n, r = motion.shape[0], self.resolution
    chunks = list(self.host_frames(self.render_chunks(portrait, motion), n))
    return np.concatenate(chunks) if chunks else np.zeros((0, r, r, 3), np.uint8)

  # -- public API --------------------------------------------------------------------------

  def generate(self, image, audio, *, gaze=None, distance=None, emotion=None,
               cfg_audio: float | None = None, cfg_gaze: float | None = None,
               steps: int | None = None, mouth_scale: float | None = None,
               seed: int = 0, sample_rate: int | None = None,
               progress: bool = False) -> GenerationResult:
    """Offline generation of a whole clip.

    Args:
      image: portrait path or array (any size, RGB/RGBA/grey; EXIF rotation applied), or a
        `Portrait` from `prepare_portrait`.
      audio: speech path (wav/mp3/flac/m4a or a video's track) or a float array.
      gaze: (theta, phi) main gaze in radians, or None (dropped).
      distance: normalised head-to-camera distance (0 = training average) or None.
      emotion: an emotion name, an (E,) vector or None.
      cfg_audio, cfg_gaze: guidance scales (default: the pipeline's; paper: 0.5 and 1.0).
      steps: sampling steps (default: the pipeline's).
      mouth_scale: gain on the mouth opening's departure from the portrait's (default: the
        pipeline's; 1 = as sampled).
      seed: random seed (same seed, same video).
      sample_rate: the rate of an audio array (default SAMPLE_RATE).
      progress: show a progress bar over windows.

    Returns:
      GenerationResult with frames (T, R, R, 3), T = ceil(audio seconds * 25).
    """
    # pylint: disable=import-outside-toplevel
    from tqdm import tqdm
    from vasa_jax.data import audio_features, media

    t0 = time.perf_counter()
    check_controls(gaze=gaze, distance=distance, emotion=emotion, cfg_audio=cfg_audio,
                   cfg_gaze=cfg_gaze, steps=steps, mouth_scale=mouth_scale, seed=seed)
    mouth_scale = self._mouth_scale(mouth_scale)  # checked before any slow work
    wav = media.read_audio(audio, sr=SAMPLE_RATE, orig_sr=sample_rate or SAMPLE_RATE)
    portrait = image if isinstance(image, Portrait) else self.prepare_portrait(image)
    t1 = time.perf_counter()
    num_frames = audio_features.frames_for_audio(wav.shape[0])
    feats = audio_features.log_mel(wav, num_frames=num_frames)  # (T, 4, 80)
    encoded = self._encode_audio(self.motion_params, jnp.asarray(feats)[None])[0]  # (T, Da)
    controls = self.controls(gaze, distance, emotion)
    cfg_audio, cfg_gaze = self._guidance(cfg_audio, cfg_gaze)
    sample = self.sample_window_fn(steps)
    sl = self._sampler_lib
    carry = sl.initial_carry(1, self.context, self.motion_dim, encoded.shape[-1])
    rng = jax.random.key(seed)
    r = self.resolution
    # Filled in place: one host copy per frame after the device's, and no second clip in memory
    # (a list of windows plus their concatenation held two).
    frames = np.empty((num_frames, r, r, 3), np.uint8)
    motions = []
    n_windows = sl.window_count(num_frames, self.window)
    bar = tqdm(total=num_frames, unit="frame", desc="generate", disable=not progress)

    def collect(chunks, start, m):  # waits for one window's frames; the next one is queued
      for block in self.host_frames(chunks, m):
        frames[start:start + len(block)] = block
        start += len(block)
      bar.update(m)
      bar.set_postfix(fps=f"{bar.n / max(time.perf_counter() - t1, 1e-9):.1f}")

    pending = None
    for i in range(n_windows):
      seg, mask = sl.pad_window(encoded, i * self.window, self.window)
      carry, motion = sample(self.motion_params, carry, seg[None], mask[None], controls,
                             jax.random.fold_in(rng, i), cfg_audio, cfg_gaze)
      m = min(self.window, num_frames - i * self.window)
      motion = self.denormalize(np.asarray(motion[0, :m]), portrait, mouth_scale)
      motions.append(motion)
      chunks = self.render_chunks(portrait, motion)
      if pending is not None:
        collect(*pending)
      pending = (chunks, i * self.window, m)
    if pending is not None:
      collect(*pending)
    bar.close()
    t2 = time.perf_counter()
    return GenerationResult(
        frames=frames, fps=float(FPS), audio=wav, sample_rate=SAMPLE_RATE,
        motion=np.concatenate(motions),
        timings={"prepare_s": t1 - t0, "generate_s": t2 - t1,
                 "fps": num_frames / max(t2 - t1, 1e-9)})

  def stream(self, image, audio_chunks: Iterable, *, gaze=None, distance=None, emotion=None,
             cfg_audio: float | None = None, cfg_gaze: float | None = None,
             steps: int | None = None, mouth_scale: float | None = None, seed: int = 0,
             first_window: int | None = None) -> Iterator[np.ndarray]:
    """Streaming generation: yields (R, R, 3) uint8 frames as soon as they exist.

    Args:
      image: portrait path or array, or a `Portrait` from `prepare_portrait` (a live session
        prepares it before the audio starts).
      audio_chunks: an iterable of float32 16 kHz sample arrays (any chunk size), e.g. from a
        microphone; frames follow with a bounded delay of one window plus the audio encoder's
        look-ahead.
      first_window: latency lever: the first frames leave after this many frames of audio
        (1..W) instead of a whole window; later windows still need W frames each, so a player
        that must not stall waits once after them. None (default) = W, and then the same seed
        gives the same frames as `generate`; otherwise the window boundaries differ. See
        `vasa_jax.inference.streaming`.
      Other arguments as in `generate`.
    """
    from vasa_jax.inference.streaming import MotionStream  # pylint: disable=import-outside-toplevel

    check_controls(gaze=gaze, distance=distance, emotion=emotion, cfg_audio=cfg_audio,
                   cfg_gaze=cfg_gaze, steps=steps, mouth_scale=mouth_scale, seed=seed)
    mouth_scale = self._mouth_scale(mouth_scale)
    portrait = image if isinstance(image, Portrait) else self.prepare_portrait(image)
    da = int(self.motion_config.model.audio_width)
    cfg_audio, cfg_gaze = self._guidance(cfg_audio, cfg_gaze)
    stream = MotionStream(
        self.sample_window_fn(steps), self.motion_params, self._encode_audio,
        self.controls(gaze, distance, emotion), jax.random.key(seed), window=self.window,
        context=self.context, motion_dim=self.motion_dim, audio_dim=da,
        receptive_past=self.audio_receptive_past, lookahead=self.audio_lookahead,
        cfg_audio=cfg_audio, cfg_gaze=cfg_gaze, first_window=first_window)

    def emit(motion):  # every chunk is dispatched first; each is yielded as soon as it is done
      n = motion.shape[0]
      if n:
        chunks = self.render_chunks(portrait, self.denormalize(motion, portrait, mouth_scale))
        for block in self.host_frames(chunks, n):
          yield from block

    for chunk in audio_chunks:
      chunk = np.asarray(chunk, np.float32).reshape(-1)
      if not np.all(np.isfinite(chunk)):
        raise VasaInputError("An audio chunk holds NaN or inf samples.")
      yield from emit(stream.push(chunk))
    yield from emit(stream.flush())


def save_pipeline(out_dir, latent_config, latent_params, motion_config, motion_params,
                  motion_stats, *, dtype: str = "bfloat16", steps: int | None = None,
                  cfg_audio: float | None = None, cfg_gaze: float | None = None,
                  mouth_scale: float | None = None):
  """Writes a self-describing pipeline directory (latent/, motion/, pipeline.json) with the
  default sampling steps and guidance scales (None: the motion config's) and mouth scale
  (None: 1)."""
  check_controls(steps=steps, cfg_audio=cfg_audio, cfg_gaze=cfg_gaze, mouth_scale=mouth_scale)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  params_io.export_params(latent_params, latent_config, out / "latent", dtype=dtype)
  params_io.export_params(motion_params, motion_config, out / "motion", dtype=dtype)
  meta = {"format": "vasa-jax-pipeline", "version": 1,
          "motion_stats": {"mean": [float(v) for v in motion_stats["mean"]],
                           "std": [float(v) for v in motion_stats["std"]]},
          "steps": int(steps or motion_config.diffusion.sample_steps),
          "cfg_audio": float(motion_config.diffusion.cfg_audio if cfg_audio is None
                             else cfg_audio),
          "cfg_gaze": float(motion_config.diffusion.cfg_gaze if cfg_gaze is None else cfg_gaze),
          "mouth_scale": check_mouth_scale(1.0 if mouth_scale is None else mouth_scale)}
  atomic_write_text(out / PIPELINE_FILE, json.dumps(meta, indent=1))
  return out


def load_pipeline(path: str | os.PathLike | None = None, **kwargs) -> Pipeline:
  """Loads a pipeline directory (default: the bundled demo checkpoint).

  Args:
    path: a directory written by `vasa-jax export` / `save_pipeline`.
    **kwargs: passed to `Pipeline` (steps, cfg_audio, cfg_gaze, mouth_scale, pose_mode,
      compute_dtype, render_batch); the first four default to the values stored with the
      pipeline.
  """
  p = pathlib.Path(path).expanduser() if path is not None else DEFAULT_CHECKPOINT
  meta_path = p / PIPELINE_FILE
  if not meta_path.is_file():
    hint = ("the bundled demo checkpoint is missing from this install; reinstall vasa-jax"
            if path is None else "pass a directory written by `vasa-jax export`")
    raise CheckpointError(f"No pipeline checkpoint at {p} ({PIPELINE_FILE} not found): {hint}.")
  meta = _read_pipeline_meta(meta_path)
  latent_config, latent_params = params_io.load_exported(p / "latent")
  motion_config, motion_params = params_io.load_exported(p / "motion")
  for k in ("steps", "cfg_audio", "cfg_gaze", "mouth_scale"):  # older directories lack some
    kwargs.setdefault(k, meta.get(k))
  try:
    return Pipeline(latent_config, latent_params, motion_config, motion_params,
                    meta["motion_stats"], **kwargs)
  except (KeyError, TypeError, AttributeError) as e:  # a config.json missing fields
    raise CheckpointError(f"{p} does not fit this version of vasa-jax: its config.json lacks or "
                          f"mistypes {e}. Re-export the checkpoint.") from None


def _read_pipeline_meta(meta_path: pathlib.Path) -> dict:
  """pipeline.json, checked: valid JSON, motion statistics of equal length, sane defaults."""
  fix = "Re-export the checkpoint (vasa-jax export) or restore the file."
  try:
    meta = json.loads(meta_path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{meta_path} is not valid JSON ({e}). {fix}") from None
  stats = meta.get("motion_stats") if isinstance(meta, dict) else None
  try:
    ok = (len(stats["mean"]) == len(stats["std"]) > 0
          and np.all(np.isfinite(np.asarray(stats["mean"] + stats["std"], np.float64)))
          and min(stats["std"]) > 0)
  except (TypeError, KeyError, ValueError):
    ok = False
  if not ok:
    raise CheckpointError(f"{meta_path} lacks valid motion_stats (mean and std lists of equal "
                          f"length, std > 0). {fix}")
  try:
    check_controls(steps=meta.get("steps"), cfg_audio=meta.get("cfg_audio"),
                   cfg_gaze=meta.get("cfg_gaze"), mouth_scale=meta.get("mouth_scale"))
  except VasaInputError as e:
    raise CheckpointError(f"{meta_path}: stored default {e} {fix}") from None
  return meta


def init_random_params(latent_config, motion_config, seed: int = 0):
  """Randomly initialised (unboxed) stage 1 and stage 2 parameters, for tests and benchmarks."""
  r = int(latent_config.model.resolution)
  img = jnp.zeros((1, r, r, 3), jnp.float32)
  k_lat, k_mot = jax.random.split(fast_init_key(jax.random.key(seed)))
  latent_params = jax.jit(FaceModel(latent_config.model).init)(k_lat, img, img)["params"]
  motion_params = init_motion_params(motion_config, k_mot)
  return nn.unbox(latent_params), nn.unbox(motion_params)


def init_motion_params(motion_config, rng):
  """Randomly initialised (boxed) MotionModel parameters for a `configs/motion.py` config."""
  m, e = motion_config.model, int(motion_config.model.emotion_dim)
  w, k = int(m.window), int(m.context)
  batch = {"motion": np.zeros((1, w, int(m.motion_dim)), np.float32),
           "motion_prev": np.zeros((1, k, int(m.motion_dim)), np.float32),
           "audio": np.zeros((1, w, 4, 80), np.float32),
           "audio_prev": np.zeros((1, k, 4, 80), np.float32),
           "has_prev": np.zeros((1,), bool), "gaze": np.zeros((1, 2), np.float32),
           "distance": np.zeros((1, 1), np.float32), "emotion": np.zeros((1, e), np.float32),
           "emotion_mask": np.zeros((1,), bool)}
  cond = motion_dit.batch_cond(batch, motion_dit.full_masks(batch, w))
  model = motion_dit.build_motion_model(motion_config)
  return jax.jit(model.init)(rng, jnp.asarray(batch["motion"]), jnp.zeros((1,), jnp.int32),
                             cond)["params"]


def inference_knobs(config) -> dict:
  """`Pipeline` keyword arguments a `configs/demo.py` config sets (compute_dtype,
  render_batch)."""
  inf = config.inference
  return {"compute_dtype": inf.get("compute_dtype", "float32"),
          "render_batch": inf.get("render_batch", 0)}


def random_pipeline(config, seed: int = 0, **kwargs) -> Pipeline:
  """A pipeline with random weights from a `configs/demo.py` config (speed and shape checks)."""
  latent_params, motion_params = init_random_params(config.latent, config.motion, seed)
  dm = int(config.motion.model.motion_dim)
  stats = {"mean": [0.0] * dm, "std": [1.0] * dm}
  kwargs.setdefault("steps", config.inference.steps)
  for k, v in inference_knobs(config).items():
    kwargs.setdefault(k, v)
  return Pipeline(config.latent, latent_params, config.motion, motion_params, stats, **kwargs)
