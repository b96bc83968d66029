"""Notebook helpers that work in Colab and anywhere else (the notebooks in colab/ use them)."""
from __future__ import annotations

import os
import pathlib


def in_colab() -> bool:
  """True inside a Google Colab runtime."""
  try:
    import google.colab  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def upload_file(what: str, folder: str | os.PathLike = ".") -> str | None:
  """Asks for one file with Colab's upload widget and returns its saved path.

  Outside Colab (or when nothing is chosen) it prints how to pass a path instead and returns
  None, so a notebook cell that calls it still runs.

  Args:
    what: shown to the user, e.g. "portrait" or "speech".
    folder: where the file is written.
  """
  if not in_colab():
    print(f"Not in Colab: no upload widget; set the {what} to a file path instead.")
    return None
  from google.colab import files  # pylint: disable=import-outside-toplevel
  print(f"Choose the {what} file:")
  uploaded = files.upload()
  if not uploaded:
    print(f"No {what} uploaded; keeping the default.")
    return None
  name, data = next(iter(uploaded.items()))
  path = pathlib.Path(folder) / pathlib.Path(name).name
  path.write_bytes(data)
  return str(path)
