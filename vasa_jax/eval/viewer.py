"""What a viewer sees: face size, face sharpness and identity against the portrait, and whether
they hold over a long clip (first 10 s vs last 10 s).

The same code runs on generated videos and on real held-out clips, so a generated row is read
next to real footage measured the same way:

  face_px         the face box's longer side in the video's pixels (BlazeFace box, brows to chin)
  sharpness_rel   Laplacian variance of the face box, divided by the portrait's; both boxes are
                  resized to the same SHARP_SIDE square first, so a small face is not "sharp"
                  only because it has few pixels (1 = as sharp as the photo)
  identity_sim    cosine similarity of identity embeddings of the face and of the portrait
  first_10s / last_10s   the same figures and the lip-sync correlation over the first and the last
                  10 s, for clips longer than 30 s, with last/first ratios (drift: issue 18)

Identity: `identity_embedding(frames) -> (N, D)` takes face crops and returns one embedding per
crop. The default (`default_backend`) is the MobileFaceNet face-recognition network of
`vasa_jax.facenets` once `vasa-jax fetch-face-nets` has run: the cosine of its embeddings is the
CSIM of `vasa-jax eval --face-metrics` (common component removed, `nets.identity_cosine`), on the
same head crops. Without the networks, dlib's 128-d ResNet descriptor (`pip install
'vasa-jax[identity]'`: dlib-bin and face_recognition_models, offline) stands in; either can be
asked for by name. Another backend is one function added to `EMBEDDERS` (and, if it wants
another framing, to `ID_CROPS`). Without any, the identity figures are NaN and the report says
why (`identity_error`); nothing else stops. `identity_backend` names the one that measured.

For a real clip there is no portrait: its first frame stands in, as the photo a user would take
from that video.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from vasa_jax.constants import FPS
from vasa_jax.errors import VasaInputError

SHARP_SIDE = 128  # the common face box side for the sharpness ratio
SAMPLE_FPS = 5.0  # face boxes, sharpness and identity are measured on this many frames a second
SEGMENT_S = 10.0  # first / last segment length
LONG_CLIP_S = 30.0  # clips longer than this get first vs last figures
IDENTITY_MARGIN = 0.25  # crop around the face box for the identity network, per side


class IdentityUnavailable(RuntimeError):
  """The identity backend cannot run here (a missing optional package); the message says how to
  install it."""


def _dlib_models():
  try:
    import dlib  # pylint: disable=import-outside-toplevel
    import face_recognition_models as frm  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise IdentityUnavailable(
        f"The identity stand-in needs dlib's face descriptor ({e.name} is not installed): "
        "pip install 'vasa-jax[identity]' (dlib-bin, face_recognition_models; offline).") from None
  return (dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
          dlib.face_recognition_model_v1(frm.face_recognition_model_location()), dlib)


_DLIB = {}


def dlib_embedding(frames: np.ndarray) -> np.ndarray:
  """(N, H, W, 3) uint8 face crops (the face filling most of the crop) -> (N, 128) float32
  dlib ResNet descriptors, L2-normalised."""
  if not _DLIB:
    _DLIB["models"] = _dlib_models()
  shape_predictor, net, dlib = _DLIB["models"]
  out = []
  for crop in np.asarray(frames, np.uint8):
    h, w = crop.shape[:2]
    m = IDENTITY_MARGIN / (1 + 2 * IDENTITY_MARGIN)  # the face box inside the margin crop
    rect = dlib.rectangle(int(m * w), int(m * h), int((1 - m) * w), int((1 - m) * h))
    crop = np.ascontiguousarray(crop)
    out.append(np.asarray(net.compute_face_descriptor(crop, shape_predictor(crop, rect)),
                          np.float32))
  emb = np.stack(out) if out else np.zeros((0, 128), np.float32)
  return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-8)


_MFN = {}  # face-net directory -> jitted embedder: loading + compiling takes seconds
_MFN_BATCH = 16
HEAD_SIDE = 256  # head crops for MobileFaceNet, as `face_metrics` measures CSIM


def mobilefacenet_embedding(frames: np.ndarray) -> np.ndarray:
  """(N, S, S, 3) uint8 head crops (`face_crop.crop_image` framing, `_head_crop`) -> (N, 192)
  MobileFaceNet embeddings with the common component removed, L2-normalised, so their cosine is
  `nets.identity_cosine` (CSIM)."""
  from vasa_jax.facenets import nets as nets_lib  # pylint: disable=import-outside-toplevel
  from vasa_jax.facenets import store  # pylint: disable=import-outside-toplevel
  key = store.cache_dir()  # per directory: a changed $VASA_FACENETS must not reuse old nets
  if key not in _MFN:
    try:
      nets = nets_lib.FaceNets.load(("mobilefacenet", "facemesh"), why="identity figures")
    except store.FaceNetsMissing as e:
      raise IdentityUnavailable(str(e)) from None
    import jax  # pylint: disable=import-outside-toplevel
    mean = np.asarray(nets_lib.IDENTITY_MEAN, np.float32)
    _MFN[key] = jax.jit(
        lambda x: nets_lib.identity_embedding(nets, x.astype(np.float32) / 127.5 - 1) - mean)
  frames = np.asarray(frames, np.uint8)
  out = []
  for i in range(0, len(frames), _MFN_BATCH):
    chunk = frames[i:i + _MFN_BATCH]
    pad = _MFN_BATCH - len(chunk)  # one compiled shape
    out.append(np.asarray(_MFN[key](np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])))
               [:len(chunk)])
  emb = np.concatenate(out) if out else np.zeros((0, 192), np.float32)
  return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-8)


EMBEDDERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mobilefacenet": mobilefacenet_embedding, "dlib": dlib_embedding}


def default_backend() -> str:
  """"mobilefacenet" when its networks are fetched, else the dlib stand-in."""
  from vasa_jax.facenets import store  # pylint: disable=import-outside-toplevel
  return "mobilefacenet" if store.available(("mobilefacenet", "facemesh")) else "dlib"


def identity_embedding(frames: np.ndarray, backend: str | None = None) -> np.ndarray:
  """(N, H, W, 3) uint8 face crops -> (N, D) identity embeddings (see the module docstring).

  Args:
    frames: crops framed as the backend wants (`ID_CROPS`).
    backend: a name in `EMBEDDERS`; None: `default_backend()`.
  Raises:
    IdentityUnavailable: the backend's packages are missing (the message says what to install).
  """
  backend = backend or default_backend()
  if backend not in EMBEDDERS:
    raise VasaInputError(f"Unknown identity backend {backend!r}; use one of {sorted(EMBEDDERS)}.")
  return EMBEDDERS[backend](frames)


def laplacian_variance(image: np.ndarray, box: np.ndarray, side: int = SHARP_SIDE) -> float:
  """Variance of the Laplacian of the grey face box, resized to (side, side) first."""
  from skimage import color, filters, transform  # pylint: disable=import-outside-toplevel

  crop = _box_crop(image, box, 0.0)
  grey = color.rgb2gray(crop) if crop.ndim == 3 else crop / 255.0
  grey = transform.resize(grey, (side, side), anti_aliasing=True)
  return float(filters.laplace(grey).var())


def _box_crop(image: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
  """The xyxy box grown by `margin` of its size per side, clipped to the image."""
  x0, y0, x1, y1 = (float(v) for v in box)
  dx, dy = margin * (x1 - x0), margin * (y1 - y0)
  h, w = image.shape[:2]
  xa, ya = int(max(0, np.floor(x0 - dx))), int(max(0, np.floor(y0 - dy)))
  xb, yb = int(min(w, np.ceil(x1 + dx))), int(min(h, np.ceil(y1 + dy)))
  if xb - xa < 2 or yb - ya < 2:
    raise VasaInputError(f"Face box {box} lies outside the {w}x{h} image.")
  return image[ya:yb, xa:xb]


def face_box(image: np.ndarray, analyzer) -> np.ndarray | None:
  """(4,) xyxy box of the largest face, or None."""
  dets = analyzer.detect(image)
  if not dets:
    return None
  return np.asarray(max(dets, key=lambda d: d.size).box, np.float32)


def frame_figures(frames: np.ndarray, portrait: np.ndarray, analyzer, *,
                  backend: str | None = None) -> dict:
  """Per-frame face size, sharpness ratio and identity similarity (NaN where no face).

  Args:
    frames: (N, H, W, 3) uint8 (already subsampled).
    portrait: (H', W', 3) uint8 photo the video animates.
    analyzer: a `face_crop.FaceAnalyzer`.
    backend: identity backend (`EMBEDDERS`); None: `default_backend()`.

  Returns:
    {"face_px", "sharpness_rel", "identity_sim"} (N,) float64 arrays, "identity_error" (None,
    or why identity could not be measured) and "identity_backend".

  Raises:
    VasaInputError: no face in the portrait (the message names --portrait).
  """
  ref_box = face_box(portrait, analyzer)
  if ref_box is None:
    raise VasaInputError("No face found in the portrait given to the viewer figures; pass the "
                         "photo the video was generated from (--portrait).")
  ref_sharp = laplacian_variance(portrait, ref_box)
  n = len(frames)
  size = np.full(n, np.nan)
  sharp = np.full(n, np.nan)
  boxes = [face_box(f, analyzer) for f in frames]
  for i, (f, b) in enumerate(zip(frames, boxes)):
    if b is not None:
      size[i] = float(max(b[2] - b[0], b[3] - b[1]))
      sharp[i] = laplacian_variance(f, b) / max(ref_sharp, 1e-12)
  ident = np.full(n, np.nan)
  error = None
  found = [i for i, b in enumerate(boxes) if b is not None]
  backend = backend or default_backend()
  crop = ID_CROPS.get(backend, _id_crop)
  try:
    crops = [crop(portrait, ref_box)] + [crop(frames[i], boxes[i]) for i in found]
    emb = identity_embedding(np.stack(crops), backend)  # (1 + F, D)
    ident[found] = emb[1:] @ emb[0] / np.maximum(
        np.linalg.norm(emb[1:], axis=1) * np.linalg.norm(emb[0]), 1e-8)
  except IdentityUnavailable as e:
    error = str(e)
  return {"face_px": size, "sharpness_rel": sharp, "identity_sim": ident,
          "identity_error": error, "identity_backend": backend}


def _id_crop(image: np.ndarray, box: np.ndarray, side: int = 150) -> np.ndarray:
  from skimage import transform  # pylint: disable=import-outside-toplevel

  crop = _box_crop(image, box, IDENTITY_MARGIN)
  return (transform.resize(crop, (side, side), anti_aliasing=True) * 255).round().astype(np.uint8)


def _head_crop(image: np.ndarray, box: np.ndarray, side: int = HEAD_SIDE) -> np.ndarray:
  """The head crop of `face_crop.crop_image` (its margin and lift) around a face box, edges
  repeated where the square leaves the image."""
  from skimage import transform  # pylint: disable=import-outside-toplevel

  from vasa_jax.data import face_crop  # pylint: disable=import-outside-toplevel
  from vasa_jax.facenets import nets  # pylint: disable=import-outside-toplevel
  x0, y0, x1, y1 = face_crop.crop_square(np.asarray(box, np.float32), 1.0 / nets.FACE_SIZE,
                                         (nets.FACE_CENTRE[1] - 0.5) / nets.FACE_SIZE)
  h, w = image.shape[:2]
  pad = int(max(0, -np.floor(min(x0, y0)), np.ceil(max(x1 - w, y1 - h)))) + 1
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
  ya, yb, xa, xb = (int(round(v)) + pad for v in (y0, y1, x0, x1))
  crop = padded[ya:yb, xa:xb]
  return (transform.resize(crop, (side, side), anti_aliasing=True) * 255).round().astype(np.uint8)


# How each backend wants its faces framed (others: `_id_crop`).
ID_CROPS = {"mobilefacenet": _head_crop, "dlib": _id_crop}


def _nanmean(x) -> float:
  x = np.asarray(x, np.float64)
  return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def segment_figures(per_frame: dict, times: np.ndarray, lo: float, hi: float,
                    mouth: np.ndarray | None = None, envelope: np.ndarray | None = None,
                    fps: float = FPS, max_lag: int = 5) -> dict:
  """Means of the per-frame figures at `times` in [lo, hi) s, and the lip-sync correlation of
  the full-rate `mouth` / `envelope` series over the same span."""
  keep = (times >= lo) & (times < hi)
  out = {k: _nanmean(np.asarray(per_frame[k])[keep])
         for k in ("face_px", "sharpness_rel", "identity_sim")}
  if mouth is not None and envelope is not None:
    from vasa_jax.eval import lipsync  # pylint: disable=import-outside-toplevel
    a, b = int(round(lo * fps)), int(round(hi * fps))
    try:
      out["corr_detrended"] = float(lipsync.lipsync_scores(
          np.asarray(mouth[a:b], np.float64), np.asarray(envelope[a:b], np.float64), max_lag,
          fps)["corr_detrended"])
    except VasaInputError:
      out["corr_detrended"] = float("nan")
  return out


def read_sampled(path, sample_fps: float = SAMPLE_FPS, fps: float = FPS,
                 max_side: int | None = 2048) -> tuple[np.ndarray, np.ndarray, float]:
  """Every (fps / sample_fps)-th frame of a video at full size, streamed (a minute of 1024 px
  video is never held whole). Returns (N, H, W, 3) uint8 frames, (N,) times in s, duration s."""
  from vasa_jax.data import media  # pylint: disable=import-outside-toplevel

  step = max(1, int(round(fps / sample_fps)))
  kept, n = [], 0
  for i, frame in enumerate(media.iter_video_frames(path, fps=fps, max_side=max_side)):
    if i % step == 0:
      kept.append(frame)
    n = i + 1
  if not kept:
    raise VasaInputError(f"{path}: no video frames to measure.")
  return np.stack(kept), np.arange(0, n, step) / fps, n / fps


def viewer_scores(frames: np.ndarray, times: np.ndarray, duration: float,
                  portrait: np.ndarray | None, analyzer, *, fps: float = FPS,
                  series: dict | None = None, backend: str | None = None,
                  max_lag: int = 5) -> dict:
  """Viewer figures of one video (see the module docstring).

  Args:
    frames: (N, H, W, 3) uint8 frames sampled from the video (`read_sampled`).
    times: (N,) their times in s.
    duration: the video's length in s.
    portrait: the photo it animates; None uses the first sampled frame (real clips).
    analyzer: a `face_crop.FaceAnalyzer`.
    fps: frame rate of `series`.
    series: `lipsync.evaluate_video`'s "series" (mouth_open, envelope) for the segment lip sync.
    backend: identity backend (`EMBEDDERS`); None: `default_backend()`.
    max_lag: lip-sync lag search range.

  Returns:
    {"face_px", "sharpness_rel", "identity_sim" (clip means), "identity_error", and for clips
    longer than LONG_CLIP_S: "first_10s", "last_10s" (dicts of those figures and
    corr_detrended) and "last_over_first" (their ratios)}.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or not len(frames) or len(times) != len(frames):
    raise VasaInputError(f"viewer_scores expects (N, H, W, 3) frames with N times, got "
                         f"{frames.shape} and {len(times)} times.")
  ref = frames[0] if portrait is None else np.asarray(portrait)
  per = frame_figures(frames, ref, analyzer, backend=backend)
  out = {k: _nanmean(per[k]) for k in ("face_px", "sharpness_rel", "identity_sim")}
  out["identity_error"] = per["identity_error"]
  out["identity_backend"] = per["identity_backend"]
  if duration > LONG_CLIP_S:
    mouth = env = None
    if series is not None:
      mouth = np.asarray(series["mouth_open"], np.float64)
      env = np.asarray(series["envelope"], np.float64)
    times = np.asarray(times, np.float64)
    first = segment_figures(per, times, 0.0, SEGMENT_S, mouth, env, fps, max_lag)
    last = segment_figures(per, times, duration - SEGMENT_S, duration + 1.0, mouth, env, fps,
                           max_lag)
    out["first_10s"], out["last_10s"] = first, last
    out["last_over_first"] = {k: (last[k] / first[k] if np.isfinite(first[k]) and first[k]
                                  else float("nan")) for k in first}
  return out


VIEWER_COLUMNS = (("face_px", "face (px)", "{:.0f}"),
                  ("sharpness_rel", "sharpness vs photo", "{:.2f}"),
                  ("identity_sim", "identity vs photo", "{:.3f}"))
DRIFT_KEYS = ("identity_sim", "sharpness_rel", "corr_detrended", "face_px")


def render_drift_markdown(rows: Sequence[dict]) -> str:
  """The first-10 s vs last-10 s table for the rows that have it ('' if none)."""
  long_rows = [r for r in rows if r.get("viewer", {}).get("first_10s")]
  if not long_rows:
    return ""
  head = " | ".join(f"{k} first / last (ratio)" for k in DRIFT_KEYS)
  lines = ["", "## First 10 s vs last 10 s (clips longer than 30 s)", "",
           "A clip that does not drift has ratios near 1 (issue 18 asks for within 10 %).", "",
           f"| video | group | {head} |", "|---" * (2 + len(DRIFT_KEYS)) + "|"]
  for r in long_rows:
    v = r["viewer"]
    cells = [f"{v['first_10s'][k]:.3f} / {v['last_10s'][k]:.3f} ({v['last_over_first'][k]:.2f})"
             if k in v["first_10s"] else "-" for k in DRIFT_KEYS]
    lines.append(f"| {r['name']} | {r['group']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


__all__ = ["EMBEDDERS", "ID_CROPS", "IdentityUnavailable", "VIEWER_COLUMNS", "default_backend",
           "dlib_embedding", "mobilefacenet_embedding",
           "face_box", "frame_figures", "identity_embedding", "laplacian_variance",
           "read_sampled", "render_drift_markdown", "segment_figures", "viewer_scores"]
