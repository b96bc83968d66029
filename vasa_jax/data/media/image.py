"""Reading images (PIL): EXIF rotation, RGB uint8, a pixel limit against decompression bombs.

Conventions: see `vasa_jax.data.media`.
"""
from __future__ import annotations

import contextlib
import logging
import math

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vasa_jax.data.media.probing import _check_exists
from vasa_jax.errors import VasaInputError

log = logging.getLogger(__name__)


def _to_rgb_uint8(arr: np.ndarray, name: str) -> np.ndarray:
  """(H, W), (H, W, 1/3/4) uint8 or float in [0, 1] -> (H, W, 3) uint8, alpha on white."""
  arr = np.asarray(arr)
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
    raise VasaInputError(f"{name}: expected an image of shape (H, W), (H, W, 1), (H, W, 3) or "
                         f"(H, W, 4), got {arr.shape}.")
  if arr.dtype == np.uint8 and arr.shape[-1] == 3:
    return np.ascontiguousarray(arr)  # already RGB uint8: no float copy (4x its size)
  if arr.dtype == np.uint8:
    x = arr.astype(np.float32) / 255.0
  elif np.issubdtype(arr.dtype, np.floating):
    x = arr.astype(np.float32)
    if not np.all(np.isfinite(x)) or x.min() < 0.0 or x.max() > 1.0:
      raise VasaInputError(f"{name}: float images must hold finite values in [0, 1] (got range "
                           f"[{np.nanmin(x):.3g}, {np.nanmax(x):.3g}]). Convert [-1, 1] model "
                           f"output with (x + 1) / 2, or pass uint8.")
  elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
    if arr.dtype != np.bool_ and (arr.min() < 0 or arr.max() > 255):
      raise VasaInputError(f"{name}: integer images must hold values in [0, 255].")
    x = arr.astype(np.float32) / (1.0 if arr.dtype == np.bool_ else 255.0)
  else:
    raise VasaInputError(f"{name}: unsupported image dtype {arr.dtype}; pass uint8 or float.")
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  elif x.shape[-1] == 4:
    # Composite on white: transparent portrait backgrounds become a plain white background.
    alpha = x[..., 3:]
    x = x[..., :3] * alpha + (1.0 - alpha)
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


# Images are downscaled on read to at most this many pixels: a face crop needs far fewer, and a
# 100 MP photo would otherwise take GBs while it is decoded and converted. JPEGs are decoded
# straight at a reduced scale (PIL draft mode, DCT scaling, so the full image never exists);
# other formats are decoded whole and reduced, up to MAX_DECODE_PIXELS, past which they are
# refused with a message.
MAX_IMAGE_PIXELS = 50_000_000
MAX_DECODE_PIXELS = 200_000_000


@contextlib.contextmanager
def _no_pil_bomb_check():
  """PIL's own decompression-bomb check (an error past 179 MP, before anything can downscale)
  is replaced by the limits above for the duration of one open."""
  old = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None
  try:
    yield
  finally:
    Image.MAX_IMAGE_PIXELS = old


def _open_within_limit(img: Image.Image, path: str) -> Image.Image:
  """Sets JPEG draft mode so a huge JPEG decodes at 1/2, 1/4 or 1/8 scale; refuses other
  formats too large to decode at all."""
  w, h = img.size
  if w * h <= MAX_IMAGE_PIXELS:
    return img
  if img.format == "JPEG":
    # draft() picks the largest DCT reduction (1/2, 1/4, 1/8) that keeps at least the requested
    # size, so ask for the size of the reduction that first fits the limit.
    k = min(3, math.ceil(math.log2(math.sqrt(w * h / MAX_IMAGE_PIXELS))))
    img.draft("RGB", (-(-w // 2**k), -(-h // 2**k)))
    log.warning("Image %s is %dx%d (%.0f MP, over the %.0f MP limit); decoding it at %dx%d.",
                path, w, h, w * h / 1e6, MAX_IMAGE_PIXELS / 1e6, *img.size)
    return img
  if w * h > MAX_DECODE_PIXELS:
    raise VasaInputError(f"Image {path!r} is {w}x{h} ({w * h / 1e6:.0f} MP), over the "
                         f"{MAX_DECODE_PIXELS / 1e6:.0f} MP limit for {img.format or 'this format'}"
                         f" files. Downscale it or save it as JPEG.")
  return img


def _reduce_to_limit(img: Image.Image, path: str) -> Image.Image:
  """Downscales (box filter: every source pixel counts once) to at most MAX_IMAGE_PIXELS."""
  w, h = img.size
  if img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
    img = img.convert("RGBA" if img.mode in ("P", "PA") else "RGB")
  scale = math.sqrt(MAX_IMAGE_PIXELS / (w * h))
  out = img.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BOX)
  log.warning("Image %s is %dx%d (%.0f MP, over the %.0f MP limit); downscaled to %dx%d.",
              path, w, h, w * h / 1e6, MAX_IMAGE_PIXELS / 1e6, *out.size)
  return out


def read_image(path_or_array) -> np.ndarray:
  """Reads an image as RGB uint8, with EXIF orientation applied.

  Args:
    path_or_array: any file PIL reads (jpg, png, webp, bmp, tiff, ...) or an array: uint8 or float
      in [0, 1], shaped (H, W), (H, W, 1), (H, W, 3) or (H, W, 4). Alpha is composited on white.

  Returns:
    (H, W, 3) uint8.

  Raises:
    VasaInputError: missing or unreadable file, or an array of the wrong shape or range.
  """
  if isinstance(path_or_array, np.ndarray):
    return _to_rgb_uint8(path_or_array, "image array")
  path = _check_exists(path_or_array, "Image")
  try:
    with _no_pil_bomb_check(), Image.open(path) as img:
      img = _open_within_limit(img, path)
      img = ImageOps.exif_transpose(img)
      img.load()
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    if isinstance(e, VasaInputError):
      raise
    raise VasaInputError(f"Cannot read image {path!r}: {e}. Save it as PNG or JPEG.") from e
  if img.width * img.height > MAX_IMAGE_PIXELS:
    img = _reduce_to_limit(img, path)
  if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    # 16-bit / 32-bit grey: scale to 8 bits instead of clipping as PIL's convert would.
    a = np.asarray(img, dtype=np.float32)
    a = a / max(float(a.max()), 1.0) if a.max() > 255 else a / 255.0
    return _to_rgb_uint8(np.clip(a, 0, 1), repr(path))
  if img.mode in ("P", "PA", "LA"):
    img = img.convert("RGBA")  # palette transparency and grey+alpha go through the RGBA path
  elif img.mode not in ("RGB", "RGBA", "L"):
    img = img.convert("RGB")
  return _to_rgb_uint8(np.asarray(img), repr(path))
