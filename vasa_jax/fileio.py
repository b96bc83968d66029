"""Atomic file writes: a temporary file beside the target, renamed onto it with `os.replace`.

A crash or an exception leaves either the old file or the new one, never half of one, and no
temporary file behind.
"""
from __future__ import annotations

import contextlib
import os
import tempfile

from etils import epath


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp"):
  """Yields a temporary path beside `path`; renames it onto `path` when the block succeeds.

  `suffix` keeps the extension for writers that pick a format from it (e.g. ".tmp.mp4"). A
  symlink at `path` is followed: its target is replaced and the link stays.
  """
  path = os.path.realpath(os.fspath(path))
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                             suffix=suffix)
  os.close(fd)
  try:
    yield tmp
    # mkstemp creates 0600; give the file the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically (parents created), flushed to disk before the rename.

  `path` may be a URL such as gs://bucket/... (a run's workdir): etils.epath writes a temporary
  object beside it and renames it, as the local path does.
  """
  if "://" in str(path):
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes UTF-8 `text` to `path` atomically (parents created)."""
  atomic_write_bytes(path, text.encode("utf-8"))

