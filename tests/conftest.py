"""Test setup: 8 virtual CPU devices, slow-test switch, the shared real-data fixture and a tiny
random pipeline directory."""
import os
import pathlib

# Must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent

# A persistent compilation cache: a rerun of the suite (and each xdist worker after the first to
# compile a shape) reads executables from disk instead of compiling them again. Every entry is
# kept (min compile time 0, any size). VASA_TEST_CACHE="" disables it.
_CACHE = os.environ.get("VASA_TEST_CACHE", str(REPO / ".pytest_cache" / "jax_compilation"))
if _CACHE:
  jax.config.update("jax_compilation_cache_dir", _CACHE)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
SHARED_DATA = pathlib.Path(os.environ.get("VASA_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


# The files that take longest on the 2-core CPU (measured with --durations), run first: with
# `-n 2 --dist loadfile` a worker takes the next file as it finishes one, so a long file started
# last would leave the other worker idle at the end of the suite.
LONG_FILES = ("test_notebooks.py", "test_latent_task.py", "test_loop_stages.py",
              "test_face_losses.py", "test_bench_train.py", "test_aot_compile.py",
              "test_face_metrics.py", "test_multihost.py", "test_paste_back.py",
              "test_mouth_calibration.py", "test_facenets.py", "test_face_model.py")


def _long_first(item) -> int:
  name = item.path.name
  return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)


def pytest_collection_modifyitems(config, items):
  items.sort(key=_long_first)  # stable: the order within a file and among the rest is kept
  if config.getoption("--runslow") or os.environ.get("VASA_RUN_SLOW") == "1":
    return
  skip = pytest.mark.skip(reason="slow: pass --runslow or set VASA_RUN_SLOW=1")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope="module")
def fast_compile():
  """For modules that check behaviour, not speed: XLA skips most optimisation passes, so each
  step compiles several times faster (and runs somewhat slower, which tiny shapes do not feel).
  Opt in with `pytestmark = pytest.mark.usefixtures("fast_compile")`."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="session")
def shared_data():
  """Path to ../shared/data; tests that use it are skipped on machines without it."""
  if not (SHARED_DATA / "manifest.csv").is_file():
    pytest.skip(f"real data not found at {SHARED_DATA}")
  return SHARED_DATA


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
  """A pipeline directory of the `tiny` config with random weights (renders no face)."""
  from vasa_jax.config_utils import load_config  # pylint: disable=import-outside-toplevel
  from vasa_jax.inference import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel
  config = load_config("configs/demo.py:tiny")
  pipe = pipeline_lib.random_pipeline(config, seed=0)
  out = tmp_path_factory.mktemp("pipe")
  pipeline_lib.save_pipeline(out, config.latent, pipe.latent_params, config.motion,
                             pipe.motion_params, {"mean": pipe.mean, "std": pipe.std}, steps=2)
  return out
