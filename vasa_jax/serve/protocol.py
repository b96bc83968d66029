"""The live endpoint's wire format, shared by the server (`live`) and the client (`client`).

A session over one websocket:

1. client -> server, text: a JSON `start` message with the controls, e.g.
   `{"type": "start", "format": "jpeg", "pcm": "s16le", "gaze": [0, 0], "emotion": "happy",
   "seed": 0, "first_window": 5, "paste_back": true, "max_size": 1024}` (every key but `type`
   optional; frames are the photo with the face pasted back, long side at most `max_size`, unless
   `paste_back` is false: then the R x R face crop).
2. client -> server, binary: the portrait file (any image format PIL reads).
3. server -> client, text: `{"type": "ready", "fps": 25, "sample_rate": 16000, "width": W,
   "height": H, "buffering_s": ...}` once the portrait is encoded, or `{"type": "error",
   "message": ...}` and the socket closes.
4. client -> server, binary: 16 kHz mono PCM chunks of any length (`s16le`, the default, or
   `f32le`); server -> client, binary: frames as soon as they exist, each a `FRAME_HEADER`
   (magic, frame index, height, width, payload kind) and a JPEG or raw RGB payload.
5. client -> server, text: `{"type": "end"}`; the server sends the last frames, then
   `{"type": "done", "frames": N}` and closes.
"""
from __future__ import annotations

import struct

import numpy as np

MAGIC = b"VJF1"
FRAME_HEADER = struct.Struct("<4sIHHB3x")  # magic, index, height, width, kind, padding
KIND_JPEG, KIND_RAW = 0, 1
FORMATS = {"jpeg": KIND_JPEG, "raw": KIND_RAW}
PCM_DTYPES = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


def pcm_to_float(data: bytes, pcm: str) -> np.ndarray:
  """PCM bytes -> float32 samples in [-1, 1]."""
  dtype = PCM_DTYPES[pcm]
  if len(data) % dtype.itemsize:
    raise ValueError(f"A {pcm} audio chunk of {len(data)} bytes is not a whole number of "
                     f"{dtype.itemsize}-byte samples.")
  x = np.frombuffer(data, dtype)
  return x.astype(np.float32) / 32768.0 if dtype.kind == "i" else x.astype(np.float32)


def float_to_pcm(samples: np.ndarray, pcm: str) -> bytes:
  """float32 samples in [-1, 1] -> PCM bytes."""
  x = np.asarray(samples, np.float32)
  if PCM_DTYPES[pcm].kind == "i":
    x = np.clip(np.round(x * 32767.0), -32768, 32767)
  return x.astype(PCM_DTYPES[pcm]).tobytes()


def encode_frame(index: int, frame: np.ndarray, kind: int, quality: int = 85) -> bytes:
  """(H, W, 3) uint8 -> header + payload."""
  h, w = frame.shape[:2]
  if kind == KIND_JPEG:
    import io  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    payload = buf.getvalue()
  else:
    payload = np.ascontiguousarray(frame, np.uint8).tobytes()
  return FRAME_HEADER.pack(MAGIC, index, h, w, kind) + payload


def decode_frame(message: bytes) -> tuple[int, np.ndarray]:
  """header + payload -> (index, (H, W, 3) uint8)."""
  magic, index, h, w, kind = FRAME_HEADER.unpack_from(message)
  if magic != MAGIC:
    raise ValueError(f"Not a vasa-jax frame message (magic {magic!r}).")
  payload = message[FRAME_HEADER.size:]
  if kind == KIND_JPEG:
    import io  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    frame = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
  else:
    frame = np.frombuffer(payload, np.uint8).reshape(h, w, 3)
  return index, frame
