"""vasa-jax: audio-driven talking faces (VASA-1) in JAX.

    import vasa_jax
    pipe = vasa_jax.load_pipeline()          # bundled demo checkpoint
    result = pipe.generate("portrait.jpg", "speech.wav")
"""
__version__ = "0.1.0"  # the one source: pyproject.toml reads it (`[tool.setuptools.dynamic]`)

__all__ = ["load_pipeline", "Pipeline", "GenerationResult", "__version__"]
_LAZY = ("load_pipeline", "Pipeline", "GenerationResult")


def __getattr__(name):
  # Lazy: importing the package (e.g. for the CLI's --help) must not import jax.
  if name in _LAZY:
    from vasa_jax.inference import pipeline  # pylint: disable=import-outside-toplevel
    return getattr(pipeline, name)
  raise AttributeError(f"module 'vasa_jax' has no attribute {name!r}")


def __dir__():
  # dir() and tab completion list the lazy names too (PEP 562).
  return sorted(set(globals()) | set(_LAZY))
