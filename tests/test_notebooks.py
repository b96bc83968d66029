"""Executes colab/demo.ipynb and colab/train.ipynb headless (nbclient, kernel python3).

The notebooks read VASA_NOTEBOOK_FAST=1 and shrink themselves (one second of audio, two
sampling / training steps). The kernel runs on one CPU device, like a Colab CPU runtime.
ipywidgets is optional: the demo notebook must run whether or not it is installed.
"""
from __future__ import annotations

import base64
import os
import pathlib
import re
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "colab"

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def _execute(name: str, tmp_path: pathlib.Path, monkeypatch, cell_timeout: int):
  """Runs notebook `name` in fast mode; returns (executed notebook, seconds)."""
  monkeypatch.setenv("VASA_NOTEBOOK_FAST", "1")
  monkeypatch.setenv("VASA_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", ""))
  monkeypatch.setenv("XLA_FLAGS", f"{flags} --xla_force_host_platform_device_count=1".strip())
  monkeypatch.setenv("PYTHONPATH", str(REPO))
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  client = nbclient.NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  t0 = time.perf_counter()
  client.execute()
  seconds = time.perf_counter() - t0
  print(f"{name}.ipynb executed in {seconds:.1f} s")
  return nb, seconds


def _outputs(nb) -> list[dict]:
  return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def _videos(nb) -> list[bytes]:
  """The mp4 files embedded as base64 <video> tags in the outputs."""
  found = []
  for o in _outputs(nb):
    html = o.get("data", {}).get("text/html", "")
    for b64 in re.findall(r"data:video/mp4;base64,([A-Za-z0-9+/=]+)", html):
      found.append(base64.b64decode(b64))
  return found


def _text(nb) -> str:
  return "\n".join(o.get("text", "") for o in _outputs(nb) if o.get("output_type") == "stream")


@pytest.mark.parametrize("name", ["demo", "train"])
def test_notebooks_are_valid_and_have_a_fast_parameter_cell(name):
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1 and 'os.environ.get("VASA_NOTEBOOK_FAST") == "1"' in params[0].source
  # Committed without outputs (small diffs, nothing stale).
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
  source = "\n".join(c.source for c in nb.cells)
  assert "pip" in source and "install" in source
  if name == "demo":
    assert "vasa_jax.load_pipeline()" in source and "import ipywidgets" in source
    assert re.search(r"try:\s+import ipywidgets", source)  # optional, guarded
    assert "share=True" in source  # the web app from Colab
    assert "stores 4" not in source and "2-core CPU" not in source  # stale facts
  # One form field for the repository URL; GPU and TPU branches; upload widgets.
  assert re.search(r'^REPO_URL = ".+"  #@param \{type:"string"\}$', source, re.M)
  assert '"jax[cuda12]"' in source and '"jax[tpu]"' in source
  assert source.count('upload_file("portrait")') == 1 and source.count('upload_file("speech")') == 1
  assert "raise RuntimeError" not in source


def _install_cell(name: str) -> str:
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  return next(c.source for c in nb.cells if "Install vasa-jax" in c.source)


@pytest.mark.parametrize("name", ["demo", "train"])
def test_install_cell_picks_a_source_and_never_raises(name, tmp_path, monkeypatch, capsys):
  """The install cell as a fresh Colab runtime runs it (vasa_jax not importable), pip
  recorded instead of run: the placeholder URL falls back to a wheel or prints what to set."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  calls = []
  monkeypatch.setattr(subprocess, "check_call", calls.append)
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda mod, *a: None if mod == "vasa_jax" else find_spec(mod, *a))
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv("VASA_REPO_URL", raising=False)
  cell = _install_cell(name)

  exec(cell, {})  # pylint: disable=exec-used
  assert not calls and "Nothing to install from" in capsys.readouterr().out

  wheel = tmp_path / "vasa_jax-0.1.0-py3-none-any.whl"
  wheel.write_bytes(b"")
  monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-1")  # a TPU runtime, found by "auto"
  exec(cell, {})  # pylint: disable=exec-used
  # One install: the MediaPipe models ship inside the package, so nothing else is needed.
  assert len(calls) == 1 and calls[0][-2:] == [str(wheel), "jax[tpu]"]

  calls.clear()
  monkeypatch.setenv("VASA_REPO_URL", "https://example.org/vasa-jax.git")
  exec(cell.replace('RUNTIME = "auto"', 'RUNTIME = "gpu"'), {})  # pylint: disable=exec-used
  assert calls[0][-2:] == ["vasa-jax @ git+https://example.org/vasa-jax.git", "jax[cuda12]"]


def test_upload_file_outside_colab_returns_none(capsys):
  from vasa_jax.serve import colab  # pylint: disable=import-outside-toplevel
  assert not colab.in_colab()
  assert colab.upload_file("portrait") is None
  assert "file path" in capsys.readouterr().out


def test_demo_notebook_runs_headless(tmp_path, monkeypatch):
  nb, _ = _execute("demo", tmp_path, monkeypatch, cell_timeout=600)
  videos = _videos(nb)
  assert len(videos) == 2  # the first generation and the scripted variation
  assert all(v[4:8] == b"ftyp" and len(v) > 1000 for v in videos)  # real mp4 files
  text = _text(nb)
  assert re.search(r"\d+ frames", text)
  from vasa_jax.inference import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel
  bundled = (pipeline_lib.DEFAULT_CHECKPOINT / pipeline_lib.PIPELINE_FILE).is_file()
  # The bundled checkpoint is used whenever it exists; random weights only without it.
  assert ("Loaded the bundled demo checkpoint" in text) == bundled
  assert ("random weights" in text) == (not bundled)


def test_train_notebook_runs_the_tiny_pipeline_end_to_end(tmp_path, monkeypatch):
  nb, _ = _execute("train", tmp_path, monkeypatch, cell_timeout=900)
  work = tmp_path / "work"
  for stage in ("latent", "motion"):
    assert (work / stage / "checkpoints" / "2").is_dir(), stage
    assert len((work / stage / "metrics.jsonl").read_text().splitlines()) == 2
  assert (work / "pipeline" / "pipeline.json").is_file()
  videos = _videos(nb)
  assert len(videos) == 1 and videos[0][4:8] == b"ftyp"
  assert "25 frames" in _text(nb)  # one second of audio at 25 fps
