"""VoxCeleb-style square head crops of photos and clips, from the faces and landmarks
`mediapipe_face.FaceAnalyzer` finds (MediaPipe's BlazeFace, face mesh and iris).

Coordinates: pixels, continuous convention (pixel (i, j) covers [i, i+1) x [j, j+1)); boxes are
xyxy; landmarks are (x, y, z) in crop pixels, in `mediapipe_face`'s landmark order.
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
from PIL import Image
from scipy import ndimage

from vasa_jax.data.mediapipe_face import (NUM_LANDMARKS, NUM_MESH, Detection, FaceAnalyzer,
                                          box_iou, box_size, check_image)
from vasa_jax.errors import NoFaceError, VasaInputError

__all__ = ["ClipCrop", "Detection", "FaceAnalyzer", "FaceCrop", "crop_affine", "crop_clip",
           "crop_image", "crop_square", "smooth_boxes"]  # the analyzer re-exported for callers


@dataclasses.dataclass(frozen=True)
class FaceCrop:
  """A square head crop.

  Attributes:
    image: (R, R, 3) uint8 crop.
    box: (4,) float32 xyxy of the crop square in the source image's pixels (it may extend past
      the image borders; the outside was filled by padding).
    landmarks: (478, 3) float32 landmarks in crop pixels.
  """
  image: np.ndarray
  box: np.ndarray
  landmarks: np.ndarray

  @property
  def affine(self) -> np.ndarray:
    """(2, 3) float64 map from crop pixels to source pixels (see `crop_affine`)."""
    return crop_affine(self.box, self.image.shape[0])


@dataclasses.dataclass(frozen=True)
class ClipCrop:
  """Square head crops of every frame of a clip, with a temporally smoothed crop box.

  Attributes:
    frames: (T, R, R, 3) uint8 crops.
    boxes: (T, 4) float32 xyxy crop squares in source pixels.
    landmarks: (T, 478, 3) float32 landmarks in crop pixels.
    detected: (T,) bool, True where the face was really seen (see `crop_clip`).
  """
  frames: np.ndarray
  boxes: np.ndarray
  landmarks: np.ndarray
  detected: np.ndarray


def crop_square(face_box: np.ndarray, margin: float, lift: float) -> np.ndarray:
  """The head crop square (4,) xyxy for a BlazeFace face box.

  Args:
    face_box: (4,) xyxy face box in pixels.
    margin: crop side / face box size (long side).
    lift: how far the centre moves up, as a fraction of the face box size (BlazeFace boxes start
      at the brows; lifting brings the hair in and keeps only a bit of neck).

  Returns:
    (4,) float32 xyxy square.
  """
  size = box_size(face_box)
  cx = (face_box[0] + face_box[2]) / 2
  cy = (face_box[1] + face_box[3]) / 2 - lift * size
  half = margin * size / 2
  return np.array([cx - half, cy - half, cx + half, cy + half], np.float32)


def crop_affine(square: np.ndarray, resolution: int) -> np.ndarray:
  """(2, 3) float64 map from crop pixels (u, v, 1) to source pixels of a square crop.

  Continuous coordinates (pixel i covers [i, i + 1)) on both sides, as `_crop_resize` samples:
  a scale of side / R and the square's corner as offset, no rotation. Its inverse is exact, so
  paste-back (`vasa_jax.inference.paste_back`) puts a crop pixel where it was cut from.
  """
  k = float(square[2] - square[0]) / resolution
  return np.array([[k, 0.0, float(square[0])], [0.0, k, float(square[1])]])


def _blurred_mirror_pad(region: np.ndarray, pads: tuple, sigma: float) -> np.ndarray:
  """Pads with the mirror image of the region, blurred, the region itself kept exactly.

  Edge padding smears the border pixels into streaks; a plain mirror copies half a face into
  the crop, which the models then see as a second face. The blurred mirror continues the
  colours and light of the photo without its details. The blur grows with the distance from the
  image so the border itself stays continuous.
  """
  mirrored = np.pad(region, pads, mode="symmetric").astype(np.float32)
  blurred = ndimage.gaussian_filter(mirrored, (sigma, sigma, 0), mode="mirror")
  (t, b), (l, r) = pads[0], pads[1]
  h, w = mirrored.shape[:2]
  yy = np.arange(h, dtype=np.float32)[:, None]
  xx = np.arange(w, dtype=np.float32)[None, :]
  dist = np.maximum(np.maximum(t - yy, yy - (h - 1 - b)),
                    np.maximum(l - xx, xx - (w - 1 - r)))  # (h, w) px outside the region
  weight = np.clip(dist / max(sigma, 1.0), 0.0, 1.0)[..., None]
  out = mirrored * (1.0 - weight) + blurred * weight
  out = np.clip(np.round(out), 0, 255).astype(np.uint8)
  out[t:h - b, l:w - r] = region  # the photo's own pixels stay untouched
  return out


def _crop_resize(image: np.ndarray, square: np.ndarray, resolution: int, pad_mode: str
                 ) -> np.ndarray:
  """Cuts `square` (xyxy, may leave the image) from `image`, pads, resizes to R x R.

  pad_mode: a numpy pad mode, or "blurred_mirror" (`_blurred_mirror_pad`).
  """
  h, w = image.shape[:2]
  x0, y0 = int(np.floor(square[0])), int(np.floor(square[1]))
  x1, y1 = int(np.ceil(square[2])), int(np.ceil(square[3]))
  region = image[max(y0, 0):max(min(y1, h), 0), max(x0, 0):max(min(x1, w), 0)]
  if region.size == 0:  # Square entirely outside the image: nothing to pad from.
    region = np.zeros((1, 1, 3), np.uint8)
    pads = ((0, y1 - y0 - 1), (0, x1 - x0 - 1), (0, 0))
    pad_mode = "constant"
  else:
    pads = ((max(-y0, 0), max(y1 - h, 0)), (max(-x0, 0), max(x1 - w, 0)), (0, 0))
  if any(p for pair in pads for p in pair):
    if pad_mode == "blurred_mirror":
      region = _blurred_mirror_pad(region, pads, sigma=0.04 * float(square[2] - square[0]))
    else:
      region = np.pad(region, pads, mode=pad_mode)
  box = (square[0] - x0, square[1] - y0, square[2] - x0, square[3] - y0)
  # Area averaging (like OpenCV's INTER_AREA) for strong downscaling: as sharp as LANCZOS there
  # without ringing, and 4x faster on HD frames; LANCZOS when upscaling or scaling mildly.
  shrink = (square[2] - square[0]) / resolution
  resample = Image.Resampling.BOX if shrink >= 2.0 else Image.Resampling.LANCZOS
  out = Image.fromarray(region).resize((resolution, resolution), resample,
                                       box=tuple(float(b) for b in box))
  return np.asarray(out)


# ----------------------------------------------------------------------------------------------
# Crops.


def _pick_face(dets: list[Detection], source: str, what: str,
               face_index: int | None = None) -> Detection:
  """The face to use: `face_index` (0 = largest) or, when None, the largest with a warning."""
  if not dets:
    raise NoFaceError(
        f"{source}: no face found in {what}. Use a frontal, well-lit portrait where the face is "
        "clearly visible (not too small, not cut by the image border).")
  if face_index is not None:
    if not 0 <= int(face_index) < len(dets):
      raise VasaInputError(
          f"{source}: face index {face_index} is out of range: {len(dets)} "
          f"face{'s' if len(dets) > 1 else ''} found in {what}; use --face-index 0.."
          f"{len(dets) - 1} (0 = the largest, ordered by size).")
    return dets[int(face_index)]
  if len(dets) > 1:
    warnings.warn(f"{source}: {len(dets)} faces found in {what}; using the largest "
                  f"(--face-index 0..{len(dets) - 1} picks another, ordered by size).",
                  stacklevel=3)
  return dets[0]


def _warn_if_cut_off(landmarks: np.ndarray, square: np.ndarray, resolution: int,
                     shape: tuple, source: str):
  """Warns when part of the face mesh (crop pixels) lies outside the photo."""
  affine = crop_affine(square, resolution)
  xy = landmarks[:NUM_MESH, :2] @ affine[:, :2].T + affine[:, 2]  # (468, 2) photo pixels
  h, w = shape[:2]
  outside = ((xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)).mean()
  if outside > 0.01:
    warnings.warn(f"{source}: the face is cut off by the photo's border ({100 * outside:.0f} % "
                  "of it outside); the missing part is filled with a blurred mirror of the "
                  "photo. A photo with the whole face and some space around it looks better.",
                  stacklevel=3)


def _to_crop(points: np.ndarray, square: np.ndarray, resolution: int) -> np.ndarray:
  """Maps (..., >=2) source-pixel points into crop pixels of a square crop."""
  k = resolution / float(square[2] - square[0])
  out = np.array(points, np.float32)
  out[..., 0] = (out[..., 0] - square[0]) * k
  out[..., 1] = (out[..., 1] - square[1]) * k
  if out.shape[-1] > 2:
    out[..., 2] *= k
  return out


def crop_image(image: np.ndarray, resolution: int, *, margin: float = 1.9, lift: float = 0.12,
               pad_mode: str = "blurred_mirror", analyzer: FaceAnalyzer | None = None,
               source: str = "<array>", face_index: int | None = None) -> FaceCrop:
  """Square head crop of the largest face in a portrait, VoxCeleb/FOMM style.

  Args:
    image: (H, W, 3) uint8 RGB.
    resolution: output side R in pixels.
    margin: crop side / face box size; 1.9 keeps the hair and a bit of neck.
    lift: upward shift of the crop centre, in face box sizes.
    pad_mode: how to fill where the square leaves the image: "blurred_mirror" (default; a
      blurred mirror image of the photo, see `_blurred_mirror_pad`) or a numpy pad mode. Plain
      "reflect" can mirror half a face into the crop, which later looks like a second face;
      "edge" smears the border pixels into streaks.
    analyzer: a FaceAnalyzer to reuse (one is created otherwise).
    source: name of the image for error messages (its file path).
    face_index: which face when there are several, 0 = the largest (faces ordered by size);
      None: the largest, with a warning when there are several.

  Returns:
    FaceCrop with the (R, R, 3) crop, its square in source pixels and (478, 3) landmarks in crop
    pixels (from a mesh run on the crop itself).

  Raises:
    NoFaceError: no face was found.
    VasaInputError: `face_index` is out of range (the message names the number of faces).

  Warns when the face is cut off by the photo's border.
  """
  image = check_image(image, source)
  analyzer = analyzer or FaceAnalyzer()
  det = _pick_face(analyzer.detect(image), source, "the image", face_index)
  square = crop_square(det.box, margin, lift)
  crop = _crop_resize(image, square, resolution, pad_mode)
  det_crop = Detection(box=_to_crop(det.box.reshape(2, 2), square, resolution).ravel(),
                       score=det.score, keypoints=_to_crop(det.keypoints, square, resolution))
  landmarks = analyzer.landmarks(crop, det_crop)
  _warn_if_cut_off(landmarks, square, resolution, image.shape, source)
  return FaceCrop(image=crop, box=square, landmarks=landmarks)


def _interp_rows(t: np.ndarray, known: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Linear interpolation over time of (K, D) values known at frames `known`; ends held."""
  return np.stack([np.interp(t, known, values[:, d]) for d in range(values.shape[1])], 1)


def _track_detections(frames: np.ndarray, analyzer: FaceAnalyzer, detect_every: int,
                      source: str, progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Detects every `detect_every`-th frame and follows one face by overlap.

  Returns:
    examined (K,) frame indices, found (K,) bool, rows (K, 16) box xyxy + 6 keypoints (zeros where
    not found).
  """
  examined = np.arange(0, len(frames), detect_every)
  if examined[-1] != len(frames) - 1:
    examined = np.append(examined, len(frames) - 1)
  found = np.zeros(len(examined), bool)
  rows = np.zeros((len(examined), 16), np.float32)
  previous = None
  crowded = 0
  it = examined
  if progress:
    from tqdm import tqdm
    it = tqdm(examined, desc=f"detect {os.path.basename(source)}", unit="frame")
  for k, t in enumerate(it):
    dets = analyzer.detect(frames[t])
    if not dets:
      continue
    crowded += len(dets) > 1
    det = dets[0]
    if previous is not None and len(dets) > 1:
      # Follow the same person: the face overlapping the last one most (largest on ties).
      overlaps = [box_iou(previous, d.box[None])[0] for d in dets]
      if max(overlaps) > 0:
        det = dets[int(np.argmax(overlaps))]
    previous = det.box
    found[k] = True
    rows[k] = np.concatenate([det.box, det.keypoints.ravel()])
  if crowded:
    warnings.warn(f"{source}: several faces in {crowded} of {len(examined)} examined frames; "
                  "following the largest one.", stacklevel=3)
  return examined, found, rows


def smooth_boxes(face_boxes: np.ndarray, margin: float, lift: float, smoothing: float,
                 size_percentile: float = 90.0) -> np.ndarray:
  """Crop squares (T, 4) for a clip: one fixed size and a slowly moving centre.

  Args:
    face_boxes: (T, 4) per-frame face boxes (xyxy pixels), gaps already filled.
    margin, lift: as in `crop_square`.
    smoothing: Gaussian sigma in frames for the centre path (0 = no smoothing).
    size_percentile: the fixed face size is this percentile of the per-frame sizes, so that a
      face moving towards the camera still fits and a few oversized detections are ignored.

  Returns:
    (T, 4) float32 xyxy squares.
  """
  sizes = np.maximum(face_boxes[:, 2] - face_boxes[:, 0], face_boxes[:, 3] - face_boxes[:, 1])
  size = float(np.percentile(sizes, size_percentile))
  centres = (face_boxes[:, :2] + face_boxes[:, 2:]) / 2
  if smoothing > 0 and len(centres) > 1:
    centres = ndimage.gaussian_filter1d(centres.astype(np.float64), smoothing, axis=0,
                                        mode="nearest")
  half = margin * size / 2
  cy = centres[:, 1] - lift * size
  return np.stack([centres[:, 0] - half, cy - half, centres[:, 0] + half, cy + half],
                  1).astype(np.float32)


def crop_clip(frames: np.ndarray, resolution: int, *, margin: float = 1.9, lift: float = 0.12,
              smoothing: float = 12.0, detect_every: int = 1, pad_mode: str = "edge",
              analyzer: FaceAnalyzer | None = None, source: str = "<array>",
              progress: bool = False) -> ClipCrop:
  """Jitter-free square head crops of one talking-head clip, with landmarks on the crops.

  Steps: detect the face every `detect_every` frames (following one person); fill the frames in
  between and the misses by linear interpolation (ends: nearest); fix the crop size for the whole
  clip (90th percentile of face sizes) and smooth the centre with a Gaussian of sigma `smoothing`
  frames, so the crop does not shake with the detector's per-frame noise; crop every frame; run
  the face mesh on each crop, tracking its ROI from the previous frame's landmarks as MediaPipe
  does on video (falling back to the interpolated detection when tracking loses the face).

  Args:
    frames: (T, H, W, 3) uint8 RGB frames.
    resolution: crop side R.
    margin, lift, pad_mode: as in `crop_image`.
    smoothing: Gaussian sigma in frames for the crop centre (0 disables; 12 = 0.5 s at 25 fps).
    detect_every: run the detector on every N-th frame only (and the last frame).
    analyzer: a FaceAnalyzer to reuse.
    source: clip name for messages.
    progress: show tqdm progress bars.

  Returns:
    ClipCrop. `detected[t]` is True when the face mesh sees a face in crop t and the detector
    found the face at frame t (for frames it did not examine: at both neighbouring examined
    frames).

  Raises:
    NoFaceError: no face in any examined frame, or the face is missing in more than half of
      them: the crop track would then be mostly guessed (a scene cut, the person leaving, or a
      profile view), so the clip is not usable as talking-head training data.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise VasaInputError(f"{source}: expected uint8 frames (T, H, W, 3) with T > 0, got "
                         f"{frames.dtype} {frames.shape}.")
  analyzer = analyzer or FaceAnalyzer()
  num = len(frames)
  examined, found, rows = _track_detections(frames, analyzer, max(1, detect_every), source,
                                            progress)
  if not found.any():
    raise NoFaceError(f"{source}: no face found in any of {len(examined)} examined frames. Use "
                      "a clip of a frontal, well-lit talking face.")
  if found.mean() < 0.5:
    raise NoFaceError(
        f"{source}: a face was found in only {found.sum()} of {len(examined)} examined frames "
        "(less than half), so the crop would be mostly guessed; trim the clip to the part where "
        "the face is visible and frontal.")
  t = np.arange(num)
  per_frame = _interp_rows(t, examined[found], rows[found])  # (T, 16)
  # A frame counts as detected if the detector saw the face there or on both examined sides.
  hit = np.interp(t, examined, found.astype(np.float64)) >= 1.0 - 1e-6
  squares = smooth_boxes(per_frame[:, :4], margin, lift, smoothing)

  crops = np.empty((num, resolution, resolution, 3), np.uint8)
  landmarks = np.empty((num, NUM_LANDMARKS, 3), np.float32)
  mesh_ok = np.zeros(num, bool)
  previous = None
  it = range(num)
  if progress:
    from tqdm import tqdm
    it = tqdm(it, desc=f"crop {os.path.basename(source)}", unit="frame")
  for i in it:
    crops[i] = _crop_resize(frames[i], squares[i], resolution, pad_mode)
    lm, score = (None, 0.0)
    if previous is not None:
      lm, score = analyzer.track(crops[i], previous)
    if score < 0.5:
      det = Detection(box=_to_crop(per_frame[i, :4].reshape(2, 2), squares[i], resolution).ravel(),
                      score=1.0,
                      keypoints=_to_crop(per_frame[i, 4:].reshape(6, 2), squares[i], resolution))
      lm, score = analyzer._landmarks_scored(crops[i], det)
    landmarks[i] = lm
    mesh_ok[i] = score >= 0.5
    previous = lm if mesh_ok[i] else None
  return ClipCrop(frames=crops, boxes=squares, landmarks=landmarks, detected=hit & mesh_ok)
