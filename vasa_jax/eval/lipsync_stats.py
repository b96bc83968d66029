"""Statistics of the motion lip-sync evaluation (`eval/motion_lipsync.py`), plain numpy: a
ridge readout of the mouth opening from motion (optionally fitted within clips), R^2 and the
Pearson correlation over the frames where both signals are finite."""
from __future__ import annotations

import math

import numpy as np

from vasa_jax.errors import VasaInputError


def _centre_groups(a: np.ndarray, groups: np.ndarray) -> np.ndarray:
  out = np.array(a, np.float64)
  for g in np.unique(groups):
    sel = groups == g
    out[sel] -= out[sel].mean(0)
  return out


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0, *,
              groups: np.ndarray | None = None) -> dict:
  """Ridge regression y ~ x on standardised features (frames with a non-finite y are left out).

  Args:
    x: (N, D) features.
    y: (N,) targets.
    alpha: L2 penalty on the standardised weights.
    groups: (N,) clip ids; when given, x and y are centred within each clip first, so the fit
      explains changes within clips (mouth opening and closing) rather than differences between
      clips (each person's resting mouth, framing). Predictions then carry an arbitrary offset
      per clip; correlations and within-clip R^2 do not see it.

  Returns:
    {"mean" (D,), "std" (D,), "w" (D,), "b" ()} numpy arrays for `predict_ridge`.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  ok = np.isfinite(y) & np.isfinite(x).all(1)
  if ok.sum() < 2:
    raise VasaInputError("Too few frames with a finite mouth_open label to fit the mouth "
                         "readout; the training clips need face-mesh labels.")
  x, y = x[ok], y[ok]
  b = y.mean()
  if groups is not None:
    g = np.asarray(groups)[ok]
    x, y = _centre_groups(x, g), _centre_groups(y, g) + b
  mean, std = x.mean(0), np.maximum(x.std(0), 1e-8)
  xs = (x - mean) / std
  w = np.linalg.solve(xs.T @ xs + alpha * np.eye(x.shape[1]), xs.T @ (y - b))
  return {"mean": mean, "std": std, "w": w, "b": b}


def predict_ridge(model: dict, x: np.ndarray) -> np.ndarray:
  """(N, D) -> (N,) float64."""
  return ((np.asarray(x, np.float64) - model["mean"]) / model["std"]) @ model["w"] + model["b"]


def r2_score(y: np.ndarray, y_hat: np.ndarray) -> float:
  """Coefficient of determination over frames where both are finite (NaN when undefined)."""
  y, y_hat = np.asarray(y, np.float64), np.asarray(y_hat, np.float64)
  ok = np.isfinite(y) & np.isfinite(y_hat)
  if ok.sum() < 2:
    return float("nan")
  ss_tot = ((y[ok] - y[ok].mean()) ** 2).sum()
  if ss_tot <= 0:
    return float("nan")
  return float(1.0 - ((y[ok] - y_hat[ok]) ** 2).sum() / ss_tot)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
  """Pearson correlation over frames where both are finite; 0 when either does not vary."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  t = min(a.shape[0], b.shape[0])
  a, b = a[:t], b[:t]
  ok = np.isfinite(a) & np.isfinite(b)
  if ok.sum() < 2:
    return 0.0
  a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
  den = math.sqrt(float((a * a).sum() * (b * b).sum()))
  return float((a * b).sum() / den) if den > 1e-12 else 0.0
