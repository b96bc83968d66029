"""`python -m vasa_jax.facenets.identity_mean DATA_DIR`: the mean MobileFaceNet embedding
(`nets.IDENTITY_MEAN`) over one face per clip of a data directory with manifest.csv.

The stored value (identity_mean.json) was computed on ../shared/data's clips (one frame, 1 s in,
of each video clip; 95 people), after `vasa-jax fetch-face-nets` of human-models 3.0.4.
"""
from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np

PATH = os.path.join(os.path.dirname(__file__), "identity_mean.json")


def face_crops(data_dir: str, resolution: int = 256, frame: int = 25) -> list[np.ndarray]:
  """One head crop per video clip of `data_dir`/manifest.csv (clips without a face skipped)."""
  from tqdm import tqdm

  from vasa_jax.data import face_crop, media
  from vasa_jax.errors import VasaInputError
  with open(os.path.join(data_dir, "manifest.csv")) as f:
    rows = [r for r in csv.DictReader(f) if r["path"].startswith("clips/")
            and not r["path"].endswith(".wav")]
  analyzer, crops = face_crop.FaceAnalyzer(), []
  for r in tqdm(rows, desc="face crops"):
    path = os.path.join(data_dir, r["path"])
    try:
      img = None
      for i, img in enumerate(media.iter_video_frames(path, fps=25, max_side=720)):
        if i == frame:
          break
      crops.append(face_crop.crop_image(img, resolution, analyzer=analyzer, source=path).image)
    except VasaInputError:
      continue
  return crops


def main(data_dir: str) -> None:
  import jax.numpy as jnp

  from vasa_jax.facenets import nets as nets_lib
  nets = nets_lib.FaceNets.load(("mobilefacenet", "facemesh"))
  crops = face_crops(data_dir)
  embs = [np.asarray(nets_lib.identity_embedding(
      nets, jnp.asarray(np.stack(crops[i:i + 16]), jnp.float32) / 127.5 - 1))
          for i in range(0, len(crops), 16)]
  mean = np.concatenate(embs).mean(0)
  with open(PATH, "w") as f:
    json.dump({"faces": len(crops), "mean": [round(float(v), 6) for v in mean]}, f)
  print(f"identity mean over {len(crops)} faces -> {PATH}")


if __name__ == "__main__":
  main(sys.argv[1])
