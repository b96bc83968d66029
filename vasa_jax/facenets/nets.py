"""The face networks on the project's face crops: identity, emotion, face mesh, foreground.

Every function takes images as float NHWC in [-1, 1] (the project's convention), any square size,
framed like `face_crop.crop_image` (head crop: face box = 1/margin of the side, centre lifted),
and is pure and differentiable: the sub-window each network expects is cut with
`jax.image.scale_and_translate`, so gradients reach the pixels (for stage 1 losses).

  FaceNets.load(names)        the converted params from the cache (store.load; frozen)
  identity_embedding          MobileFaceNet, (B, 192) unit vectors (+ intermediate features)
  emotion_probs               FER 7-class softmax (oarriaga/face_classification mini-Xception)
  face_mesh                   MediaPipe face mesh, (B, 468, 3) in shares of the crop side
  foreground_mask             MediaPipe selfie segmentation, (B, H, W, 1) in [0, 1]
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from vasa_jax.data import face_crop
from vasa_jax.facenets import store, tfjs

# The head-crop geometry of `face_crop.crop_image` (its defaults are the one source): the face box
# is 1/margin of the crop side, its centre `lift` box sizes below the crop's centre.
_CROP_ARGS = inspect.signature(face_crop.crop_image).parameters
FACE_SIZE = 1.0 / _CROP_ARGS["margin"].default  # face box side / crop side
FACE_CENTRE = (0.5, 0.5 + _CROP_ARGS["lift"].default * FACE_SIZE)  # (x, y) in shares of the side
# Window of a network around the face box (side / face box side, centre shift in box sizes):
# MediaPipe's mesh ROI is the detector box x1.5; FER crops are tight faces (the box starts at the
# brows, hence the lift). MobileFaceNet gets landmark-aligned faces instead (`align_faces`).
WINDOWS = {"emotion": (1.1, -0.05), "facemesh": (1.5, 0.0)}
# FER-2013 class order of the emotion network.
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_MESH = 468
# MediaPipe face mesh lip contours (outer + inner, 40 points) and eye contours (2 x 16).
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
        78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415)
EYES = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246,
        263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
# Mean embedding of ~100 people's faces (identity_mean.py computes it; stored with the code, as
# it belongs to the pinned network version).
with open(os.path.join(os.path.dirname(__file__), "identity_mean.json")) as _f:
  IDENTITY_MEAN = tuple(json.load(_f)["mean"])
# MobileFaceNet stage outputs (56x56, 28x28, 14x14, 7x7) used as face-perceptual features.
_MFN = "MobileFaceNet/MobileFaceNet/"
PERCEPTUAL_NODES = (_MFN + "Conv2d_0/add", _MFN + "Conv2d_2_InvResBlock_4/Add",
                    _MFN + "Conv2d_4_InvResBlock_5/Add", _MFN + "Conv2d_6_InvResBlock_1/Add")


@dataclasses.dataclass(frozen=True)
class FaceNets:
  """Frozen networks: static graphs and their params (a pytree, never trained or saved)."""
  graphs: Mapping[str, tfjs.GraphModel]
  params: Mapping[str, Mapping[str, jax.Array]]

  @classmethod
  def load(cls, names: Sequence[str] = store.MODELS, directory: str | None = None,
           why: str = "") -> "FaceNets":
    """Loads the named networks from the cache; FaceNetsMissing names the fetch command."""
    graphs, params = {}, {}
    for name in names:
      graphs[name], p = store.load(name, directory, why=why)
      params[name] = {k: jnp.asarray(v) for k, v in p.items()}
    return cls(graphs, params)

  def __hash__(self):  # static under jit (identity): the params are passed separately.
    return id(self)

  def __contains__(self, name: str) -> bool:
    return name in self.graphs

  def run(self, name: str, x: jax.Array, outputs: Sequence[str] = (), dtype=None):
    """`GraphModel.apply` of network `name`; its params are constants (frozen)."""
    return self.graphs[name].apply(self.params[name], x, outputs, dtype=dtype)


def crop_window(images: jax.Array, size: int, window: float, lift: float = 0.0) -> jax.Array:
  """Differentiable square cut around the face box, resized to size x size.

  Args:
    images: (B, R, R, C) head crops.
    size: output side.
    window: cut side / face box side.
    lift: centre shift down (+) or up (-) in face box sizes.
  Returns:
    (B, size, size, C), edge pixels repeated where the window leaves the crop.
  """
  r = images.shape[1]
  side = window * FACE_SIZE * r  # in input pixels
  x0 = (FACE_CENTRE[0] * r) - side / 2
  y0 = (FACE_CENTRE[1] + lift * FACE_SIZE) * r - side / 2
  scale = size / side
  out_shape = (images.shape[0], size, size, images.shape[3])
  # Pad by replication first: scale_and_translate fades to 0 outside the input.
  pad = max(0, int(-min(x0, y0)) + 1, int(max(x0, y0) + side - r) + 1)
  if pad:
    images = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    x0, y0 = x0 + pad, y0 + pad
  return jax.image.scale_and_translate(
      images, out_shape, (1, 2), jnp.array([scale, scale], jnp.float32),
      jnp.array([-y0 * scale, -x0 * scale], jnp.float32), method="linear", antialias=True)


def _window(name: str, images: jax.Array, graph: tfjs.GraphModel) -> jax.Array:
  window, lift = WINDOWS[name]
  return crop_window(images, graph.input_shape[0], window, lift)


# ArcFace's 5-point template in 112x112 pixel indices (eyes, nose tip, mouth corners; image
# left first), the alignment MobileFaceNet was trained with, and the mesh points that match it.
ARCFACE_TEMPLATE = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366),
                    (41.5493, 92.3655), (70.7299, 92.2041))
_MESH_FIVE = ((33, 133), (362, 263), (1,), (61,), (291,))


def _five_points(mesh: jax.Array) -> jax.Array:
  """(B, 468, 3) mesh -> (B, 5, 2): eye centres (corner means), nose tip, mouth corners."""
  return jnp.stack([mesh[:, list(idx), :2].mean(1) for idx in _MESH_FIVE], axis=1)


def align_faces(images: jax.Array, mesh: jax.Array, size: int = 112) -> jax.Array:
  """ArcFace-style alignment: a similarity warp taking the mesh's 5 points onto the template.

  The warp is fitted on stop-gradient landmarks (a closed-form least-squares similarity, in
  complex numbers) and applied with bilinear sampling, so gradients reach the pixels.

  Args:
    images: (B, R, R, C).
    mesh: (B, 468, 3) landmarks in shares of the side (`face_mesh`).
    size: output side; the template is scaled from 112.
  Returns:
    (B, size, size, C).
  """
  r = images.shape[1]
  pts = jax.lax.stop_gradient(_five_points(mesh)) * r - 0.5  # (B, 5, 2) pixel indices
  tpl = jnp.asarray(ARCFACE_TEMPLATE, jnp.float32) * (size / 112.0)
  src = tpl[:, 0] + 1j * tpl[:, 1]  # (5,) output coords
  dst = pts[..., 0] + 1j * pts[..., 1]  # (B, 5) input coords
  src_c = src - src.mean()
  dst_c = dst - dst.mean(axis=1, keepdims=True)
  a = (jnp.conj(src_c)[None] * dst_c).sum(1) / jnp.sum(jnp.abs(src_c) ** 2)  # (B,) rot+scale
  b = dst.mean(axis=1) - a * src.mean()  # (B,)
  yy, xx = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32),
                        indexing="ij")
  grid = (xx + 1j * yy)[None] * a[:, None, None] + b[:, None, None]  # (B, size, size)

  def sample(img, g):  # (R, R, C), (size, size) complex -> (size, size, C)
    coords = [jnp.imag(g), jnp.real(g)]
    return jnp.stack([jax.scipy.ndimage.map_coordinates(img[..., c], coords, order=1,
                                                        mode="nearest")
                      for c in range(img.shape[-1])], axis=-1)

  return jax.vmap(sample)(images, grid)


def identity_embedding(nets: FaceNets, images: jax.Array, *, features: bool = False,
                       mesh: jax.Array | None = None, dtype=None):
  """MobileFaceNet face-recognition embedding of ArcFace-aligned faces.

  This conversion's embeddings share a large common component (any two faces have cosine ~0.99),
  so `identity_cosine` removes `IDENTITY_MEAN` before comparing.

  Args:
    nets: with "mobilefacenet" and "facemesh" (for the alignment).
    images: (B, R, R, 3) head crops in [-1, 1].
    features: also return the PERCEPTUAL_NODES activations.
    mesh: (B, 468, 3) landmarks of `images` if already computed (else `face_mesh` runs).
    dtype: compute dtype.
  Returns:
    (B, 192) unit vectors, or (embedding, [features (B, h, w, c)]) with features=True.
  """
  images = images.astype(jnp.float32)
  if mesh is None:
    mesh, _ = face_mesh(nets, images, dtype=dtype)
  # MobileFaceNet_TF normalises pixels as (x - 127.5) / 128: the [-1, 1] range.
  x = align_faces(images, mesh, nets.graphs["mobilefacenet"].input_shape[0])
  names = ("embeddings",) + (PERCEPTUAL_NODES if features else ())
  out = nets.run("mobilefacenet", x, names, dtype=dtype)
  emb = out["embeddings"].astype(jnp.float32)
  return (emb, [out[n] for n in PERCEPTUAL_NODES]) if features else emb


def identity_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """CSIM: cosine of two (..., 192) embeddings after removing IDENTITY_MEAN. Returns (...)."""
  mean = jnp.asarray(IDENTITY_MEAN, jnp.float32)
  a, b = a - mean, b - mean
  return (a * b).sum(-1) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1),
                                       1e-8)


def emotion_probs(nets: FaceNets, images: jax.Array, dtype=None) -> jax.Array:
  """(B, 7) FER probabilities in `EMOTIONS` order, from (B, R, R, 3) head crops in [-1, 1]."""
  g = nets.graphs["emotion"]
  x = _window("emotion", images.astype(jnp.float32), g)
  # Grey as in Human's emotion module (ITU-R 601 weights); the net expects [-1, 1].
  grey = jnp.tensordot(x, jnp.array([0.2989, 0.587, 0.114], jnp.float32), axes=1)[..., None]
  return nets.run("emotion", grey, dtype=dtype).astype(jnp.float32)


def face_mesh(nets: FaceNets, images: jax.Array, dtype=None) -> tuple[jax.Array, jax.Array]:
  """MediaPipe face mesh on the face window of head crops.

  Args:
    images: (B, R, R, 3) head crops in [-1, 1].
  Returns:
    landmarks (B, 468, 3): x, y in shares of the crop side (z in the same unit) and face
    presence (B,) in [0, 1].
  """
  g = nets.graphs["facemesh"]
  window, lift = WINDOWS["facemesh"]
  n = g.input_shape[0]
  x = _window("facemesh", images.astype(jnp.float32), g)
  out = nets.run("facemesh", (x + 1) / 2, dtype=dtype)  # mesh input is [0, 1]
  mesh = out["Identity_2"].astype(jnp.float32).reshape(-1, NUM_MESH, 3) / n  # window shares
  side = window * FACE_SIZE
  origin = jnp.array([FACE_CENTRE[0] - side / 2, FACE_CENTRE[1] + lift * FACE_SIZE - side / 2,
                      0.0])
  mesh = mesh * side + origin
  # Identity_1 is the face flag, already a sigmoid in this conversion.
  return mesh, out["Identity_1"].astype(jnp.float32).reshape(-1)


def foreground_mask(nets: FaceNets, images: jax.Array, dtype=None) -> jax.Array:
  """MediaPipe selfie segmentation: (B, R, R, 1) person probability, from [-1, 1] images."""
  g = nets.graphs["selfie"]
  n = g.input_shape[0]
  b, r = images.shape[0], images.shape[1]
  x = jax.image.resize((images.astype(jnp.float32) + 1) / 2, (b, n, n, 3), "linear")
  mask = nets.run("selfie", x, dtype=dtype).astype(jnp.float32)  # (B, n, n, 1)
  return jax.image.resize(mask, (b, r, r, 1), "linear")
