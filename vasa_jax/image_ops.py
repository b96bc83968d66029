"""Images as the models see them: uint8 [0, 255] <-> float32 [-1, 1], and PSNR / SSIM in jnp.

PSNR and SSIM stay in jnp (not skimage.metrics) because they run inside jitted training and
evaluation steps and SSIM is differentiated as a loss; host-side measurement of decoded video
uses skimage.metrics (`vasa_jax.eval.image_quality`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def to_float_image(x: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1] (float inputs are assumed to be in [-1, 1] already)."""
  if jnp.issubdtype(x.dtype, jnp.integer):
    return x.astype(jnp.float32) / 127.5 - 1.0
  return x.astype(jnp.float32)


def to_uint8_image(x: jax.Array) -> jax.Array:
  """float [-1, 1] -> uint8 [0, 255], rounded (jnp, so it runs inside jit; np.asarray it for
  the host)."""
  return jnp.clip(jnp.round((jnp.asarray(x, jnp.float32) + 1.0) * 127.5), 0, 255).astype(
      jnp.uint8)


def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
  return (g / g.sum()).astype(np.float32)


def _blur(x: jax.Array, kernel: np.ndarray) -> jax.Array:
  """Separable 'valid' Gaussian blur per channel: (B, H, W, C) -> (B, H-k+1, W-k+1, C)."""
  c = x.shape[-1]
  k = kernel.shape[0]
  kh = jnp.tile(jnp.asarray(kernel).reshape(k, 1, 1, 1), (1, 1, 1, c))  # HWIO, depthwise
  kw = kh.reshape(1, k, 1, c)
  dn = ("NHWC", "HWIO", "NHWC")
  x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn,
                                   feature_group_count=c)
  return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn,
                                      feature_group_count=c)


def ssim(x: jax.Array, y: jax.Array, window: int = 11) -> jax.Array:
  """Per-image SSIM (Gaussian window 11, sigma 1.5) of images in [-1, 1] (mapped to [0, 1]).

  Args:
    x, y: (B, H, W, C) with H, W >= window (smaller images use a shrunk window).
  Returns:
    (B,) float32 SSIM, 1 for identical images.
  """
  x = (x.astype(jnp.float32) + 1) * 0.5
  y = (y.astype(jnp.float32) + 1) * 0.5
  window = min(window, x.shape[1], x.shape[2])
  kernel = _gaussian_kernel(window, 1.5 * window / 11)
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  mu_x, mu_y = _blur(x, kernel), _blur(y, kernel)
  sxx = _blur(x * x, kernel) - mu_x * mu_x
  syy = _blur(y * y, kernel) - mu_y * mu_y
  sxy = _blur(x * y, kernel) - mu_x * mu_y
  num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
  den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
  return jnp.mean(num / den, axis=(1, 2, 3))


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-image PSNR in dB of images in [-1, 1] (peak 1 after mapping to [0, 1]). Returns (B,)."""
  x = (x.astype(jnp.float32) + 1) * 0.5
  y = (y.astype(jnp.float32) + 1) * 0.5
  mse = jnp.mean((x - y) ** 2, axis=tuple(range(1, x.ndim)))
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))
