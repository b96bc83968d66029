"""Paste-back: the generated head crop put back into the user's photo, on the device.

The crop (`vasa_jax.data.face_crop.crop_image`) is an axis-aligned square of the photo resized
to R x R, so its inverse is a scale and a translation per axis (`crop_affine`), which
`jax.image.scale_and_translate` applies exactly (same half-pixel convention as the crop's PIL
resize). Every frame:

1. colour match (`match_colour`): the decoder's frame drifts a little in colour and brightness
   from the photo; the difference photo - frame, measured in a band around the mask border and
   spread by a wide Gaussian (normalised convolution), is added to the frame. It is a
   low-frequency field, so it moves the seam's colours onto the photo's without touching the
   face's detail or motion;
2. warp the corrected R x R frame and the feathered mask to the output size (bicubic for the
   frame, bilinear for the mask);
3. blend: photo + mask * (frame - photo). Where the mask is 0 (everywhere outside the head) the
   result is the photo's own pixels, bit for bit.

`paste` is pure jnp and is traced into the decoder's jitted render call (`Pipeline`), so the full
frames are made on the device. The geometry (scale, translation) is traced, not static: photos
of one output size share one compiled program. The mask (`head_mask`) covers face and hair with
room for the head to move: an ellipse around the face mesh, raised and widened for the hair,
feathered, and faded out before the crop's own border so the square never shows.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax.errors import VasaInputError

DEFAULT_MAX_SIZE = 1024
# Mask shape, in face-mesh extents: half-width and half-height of the ellipse, and how far its
# centre rises above the mesh's centre (the mesh stops at the brows' top; hair is above).
_MASK_HALF_WIDTH = 0.85
_MASK_HALF_HEIGHT = 0.95
_MASK_RISE = 0.12
_FEATHER = 0.10  # feather width, fraction of the crop side
_COLOUR_SIGMA = 0.12  # colour-match blur, fraction of the crop side


@dataclasses.dataclass(frozen=True)
class PasteTarget:
  """Everything `paste` needs about one photo, as arrays (device or host).

  Attributes:
    photo: (H, W, 3) uint8, the photo at the output size.
    crop: (R, R, 3) uint8, the portrait crop the decoder reconstructs (colour reference).
    mask: (R, R) float32 feathered head mask in crop pixels.
    scale: (2,) float32 (y, x) crop pixels -> output pixels.
    translation: (2,) float32 (y, x) output pixels of the crop's corner.
  """
  photo: jax.Array
  crop: jax.Array
  mask: jax.Array
  scale: jax.Array
  translation: jax.Array

  def tree(self) -> tuple:
    return (self.photo, self.crop, self.mask, self.scale, self.translation)


def output_size(height: int, width: int, max_size: int | None = DEFAULT_MAX_SIZE
                ) -> tuple[int, int]:
  """(H, W) of the output video for a photo: its size, long side capped at `max_size`, even.

  h264 (yuv420p) needs even sides; each side is rounded to the nearest even number, so the
  aspect ratio changes by less than one pixel.
  """
  if max_size is not None and int(max_size) < 16:
    raise VasaInputError(f"max_size (--max-size) must be at least 16 pixels, got {max_size}; "
                         "it caps the output's long side (None: the photo's own size).")
  s = 1.0 if max_size is None else min(1.0, int(max_size) / max(height, width))
  return tuple(max(2, 2 * int(round(v * s / 2))) for v in (height, width))


def head_mask(resolution: int, landmarks: np.ndarray | None = None) -> jax.Array:
  """(R, R) float32 feathered mask over face and hair, in crop pixels, 0 at the crop's border.

  Args:
    resolution: crop side R.
    landmarks: (478, 3) face mesh in crop pixels; None: the face where the training crop puts it
      (`crop_square`'s margin 1.9 and lift 0.12).
  """
  r = float(resolution)
  if landmarks is not None:
    pts = jnp.asarray(landmarks)[:468, :2]
    lo, hi = pts.min(0), pts.max(0)  # (2,) x, y
  else:
    face = r / 1.9
    centre = jnp.array([r / 2, r / 2 + 0.12 * face])
    lo, hi = centre - face / 2, centre + face / 2
  size = hi - lo  # (2,) face-mesh extent, x and y
  centre = (lo + hi) / 2 - jnp.array([0.0, _MASK_RISE * size[1]])
  half = jnp.array([_MASK_HALF_WIDTH * size[0], _MASK_HALF_HEIGHT * size[1]])
  grid = jnp.arange(resolution, dtype=jnp.float32) + 0.5
  x, y = grid[None, :], grid[:, None]
  # Distance outside the ellipse in pixels (approximately: the ellipse's radius scales it).
  rho = jnp.sqrt(((x - centre[0]) / half[0]) ** 2 + ((y - centre[1]) / half[1]) ** 2)
  outside = (rho - 1.0) * jnp.minimum(half[0], half[1])
  feather = _FEATHER * r
  ellipse = _smoothstep(0.5 - outside / feather)
  edge = jnp.minimum(jnp.minimum(x, r - x), jnp.minimum(y, r - y))  # px to the crop border
  border = _smoothstep((edge - 1.0) / feather)
  return (ellipse * border).astype(jnp.float32)


def _smoothstep(t):
  t = jnp.clip(t, 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def gaussian_matrix(n: int, sigma: float) -> jax.Array:
  """(n, n) row-normalised Gaussian blur matrix (blur along an axis = a matmul)."""
  i = jnp.arange(n, dtype=jnp.float32)
  g = jnp.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
  return g / g.sum(1, keepdims=True)


def match_colour(frames, crop, mask):
  """Frames (B, R, R, 3) float in [0, 255] with a low-frequency colour correction towards `crop`.

  The correction is measured where the seam is (weight 4 m (1 - m): 1 at the mask's half-way
  line, 0 inside and outside) and spread smoothly over the crop.
  """
  r = frames.shape[1]
  g = gaussian_matrix(r, _COLOUR_SIGMA * r)
  band = (4.0 * mask * (1.0 - mask))[None, :, :, None]  # (1, R, R, 1)
  blur = lambda a: jnp.einsum("ij,bjkc,lk->bilc", g, a, g)
  diff = crop.astype(jnp.float32)[None] - frames  # (B, R, R, 3)
  num, den = blur(band * diff), blur(jnp.broadcast_to(band, frames.shape[:3] + (1,)))
  return frames + num / jnp.maximum(den, 1e-3)


def paste(frames, photo, crop, mask, scale, translation, *, colour_match: bool = True):
  """Generated crops (B, R, R, 3) uint8 -> full frames (B, H, W, 3) uint8 on the photo.

  Args:
    frames: (B, R, R, 3) uint8 decoder output.
    photo, crop, mask, scale, translation: a `PasteTarget`'s fields.
    colour_match: apply `match_colour` (off only to measure what it does).
  """
  b = frames.shape[0]
  h, w = photo.shape[:2]
  x = frames.astype(jnp.float32)
  if colour_match:
    x = match_colour(x, crop, mask)
  up = jax.image.scale_and_translate(x, (b, h, w, 3), (1, 2), scale, translation,
                                     method="cubic", antialias=True)
  m = output_mask(mask, (h, w), scale, translation)[None, :, :, None]  # (1, H, W, 1)
  p = photo.astype(jnp.float32)[None]
  out = p + m * (up - p)
  return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def output_mask(mask, size: tuple[int, int], scale, translation):
  """The (R, R) crop mask warped to the output, (H, W) float32 in [0, 1], exactly 0 outside."""
  m = jax.image.scale_and_translate(mask[:, :, None], tuple(size) + (1,), (0, 1), scale,
                                    translation, method="linear", antialias=True)[..., 0]
  # Interpolation leaves tiny non-zero weights near the edge: below half a grey level of effect,
  # drop them, so that outside the head the photo's pixels are kept exactly.
  return jnp.where(m < 1.0 / 512.0, 0.0, jnp.clip(m, 0.0, 1.0))


def make_target(photo: np.ndarray, crop: np.ndarray, box: np.ndarray,
                landmarks: np.ndarray | None = None,
                max_size: int | None = DEFAULT_MAX_SIZE) -> PasteTarget:
  """The `PasteTarget` of a portrait (host side, once per clip).

  Args:
    photo: (h, w, 3) uint8, the photo as read (the crop was cut from it).
    crop: (R, R, 3) uint8 crop.
    box: (4,) xyxy crop square in photo pixels (`FaceCrop.box`).
    landmarks: (478, 3) face mesh in crop pixels, for the mask (None: the training framing).
    max_size: cap on the output's long side (None: the photo's size).
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel

  h, w = photo.shape[:2]
  oh, ow = output_size(h, w, max_size)
  out = photo if (oh, ow) == (h, w) else np.asarray(
      Image.fromarray(photo).resize((ow, oh), Image.Resampling.LANCZOS))
  r = crop.shape[0]
  sy, sx = oh / h, ow / w
  k = float(box[2] - box[0]) / r  # photo pixels per crop pixel (`crop_affine`)
  return PasteTarget(
      photo=jnp.asarray(out), crop=jnp.asarray(crop), mask=head_mask(r, landmarks),
      scale=jnp.asarray([k * sy, k * sx], jnp.float32),
      translation=jnp.asarray([float(box[1]) * sy, float(box[0]) * sx], jnp.float32))
