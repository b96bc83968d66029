"""The package's layering (docs/design.md): what each layer may import, and that the library runs
without the repository's `configs/` recipes."""
import ast
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
PKG = REPO / "vasa_jax"


def _imports(path: pathlib.Path) -> set[str]:
  """Absolute names of every module `path` imports (top-level and function-local)."""
  tree = ast.parse(path.read_text())
  package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      out.add(base)
      out.update(f"{base}.{a.name}" for a in node.names)
  return out


def _modules(sub: str = ""):
  return sorted((PKG / sub).rglob("*.py"))


def _offenders(files, prefix: str, allowed=()):
  return {str(f.relative_to(REPO)): sorted(n for n in _imports(f) if n.startswith(prefix))
          for f in files
          if str(f.relative_to(REPO)) not in allowed
          and any(n.startswith(prefix) for n in _imports(f))}


def test_library_never_imports_configs():
  assert _offenders(_modules(), "configs") == {}


def test_inference_eval_and_motion_extraction_do_not_import_train():
  # The stage 2 validation loss is the training objective itself (MotionTask.eval_step).
  allowed = {"vasa_jax/eval/motion_lipsync.py"}
  files = _modules("inference") + _modules("eval")
  assert _offenders(files, "vasa_jax.train", allowed) == {}


def test_models_do_not_import_data():
  assert _offenders(_modules("models"), "vasa_jax.data") == {}


def test_own_configs_package_in_working_directory_does_not_break_load_pipeline(tmp_path):
  """A user's `configs/common.py` in the working directory shadows nothing the library needs."""
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "__init__.py").write_text("")
  (tmp_path / "configs" / "common.py").write_text("UNRELATED = 1\n")
  code = ("import configs.common, vasa_jax\n"
          "pipe = vasa_jax.load_pipeline()\n"
          "assert configs.common.UNRELATED == 1\n"
          "print(type(pipe).__name__, pipe.steps)\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  # `python -c` puts the working directory first on sys.path, as a user's script would.
  res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.startswith("Pipeline ")


def test_recipes_load_by_path_beside_another_configs_package(tmp_path, monkeypatch):
  """`--config configs/demo.py:tiny` loads the repository's recipes even when another package
  named `configs` was imported first, and leaves that one in place."""
  from vasa_jax.config_utils import load_config  # pylint: disable=import-outside-toplevel
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "__init__.py").write_text("MINE = True\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "configs"}
  try:
    import configs  # pylint: disable=import-outside-toplevel
    assert configs.MINE
    config = load_config(str(REPO / "configs" / "demo.py") + ":tiny")
    assert int(config.motion.data.window) > 0
    assert sys.modules["configs"] is configs
  finally:
    for k in [k for k in sys.modules if k.split(".")[0] == "configs"]:
      del sys.modules[k]
    sys.modules.update(saved)


def test_mediapipe_port_stands_apart_from_cropping_and_the_rest():
  """data/mediapipe_face.py (the MediaPipe port) imports no other vasa_jax module but errors;
  the split-out modules (pipeline_io, random_weights, lipsync_stats) import no training code."""
  own = {n for n in _imports(PKG / "data" / "mediapipe_face.py") if n.startswith("vasa_jax")}
  assert own <= {"vasa_jax.errors", "vasa_jax.errors.VasaInputError"}
  files = [PKG / "inference" / "pipeline_io.py", PKG / "inference" / "random_weights.py",
           PKG / "eval" / "lipsync_stats.py"]
  assert _offenders(files, "vasa_jax.train") == {}
