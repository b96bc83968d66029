"""Loading `configs/*.py:variant` recipes and applying `--config.a.b=value` overrides.

A config spec is `path/to/file.py[:arg]` or a bare module name in `configs/` (`latent:tiny`).
The file defines `get_config(arg)` returning an `ml_collections.ConfigDict`, as in big_vision.
"""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import pathlib
import sys
from typing import Iterable

import ml_collections

from vasa_jax.errors import VasaInputError
from vasa_jax.fileio import atomic_write_text

_CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


def parse_arg(arg: str | None, **defaults):
  """Parses `variant,key=value,flag` into a ConfigDict with `defaults` as the schema.

  The first bare word sets `variant` (when `variant` is among the defaults); later bare words set
  boolean flags to True. Values take the type of their default.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  variant_seen = False
  for part in (arg or "").split(","):
    part = part.strip()
    if not part:
      continue
    if "=" in part:
      key, value = part.split("=", 1)
      out[key] = _cast(value, out.get(key), f"config argument {key}")
    elif "variant" in out and not variant_seen and part not in out:
      out.variant, variant_seen = part, True
    else:
      out[part] = True
  return out


def _cast(value: str, like, name: str = "value"):
  """`value` as the type of the default `like`; a one-line `VasaInputError` when it is not."""
  def bad(kind):
    return VasaInputError(f"{name}={value}: expected {kind} (the default is {like!r}).")

  if isinstance(like, bool):
    if value.lower() in ("1", "true", "yes", "on"):
      return True
    if value.lower() in ("0", "false", "no", "off"):
      return False
    raise bad("a boolean (true/false)")
  if isinstance(like, int):
    try:
      return int(value)
    except ValueError:
      raise bad("an integer") from None
  if isinstance(like, float):
    try:
      return float(value)
    except ValueError:
      raise bad("a number") from None
  if isinstance(like, str):
    return value
  try:
    parsed = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    parsed = value
  if isinstance(like, (list, tuple)):
    if isinstance(parsed, str):  # bare words: `a,b` or `[a,b]` is the list ["a", "b"]
      parsed = [_literal(v.strip()) for v in parsed.strip("[]()").split(",") if v.strip()]
    if not isinstance(parsed, (list, tuple)):
      raise bad("a list such as a,b or [1,2]")
    return type(like)(parsed)
  return parsed


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def resolve_config_path(spec: str) -> tuple[pathlib.Path, str | None]:
  path, _, arg = spec.partition(":")
  p = pathlib.Path(path)
  candidates = [p]
  if not p.suffix:
    candidates.append(p.with_suffix(".py"))
  candidates += [_CONFIG_DIR / c.name for c in list(candidates)]
  for c in candidates:
    if c.is_file():
      return c, (arg or None)
  raise VasaInputError(
      f"--config {spec}: file {path!r} not found (looked in {[str(c) for c in candidates]}). "
      f"Pass e.g. --config configs/latent.py:tiny")


@contextlib.contextmanager
def _recipe_package_importable(path: pathlib.Path):
  """Lets a recipe import its siblings (`from configs import common`) while it loads.

  The wheel installs only `vasa_jax`, so the folder holding the recipe's package goes on
  sys.path for the load; a different package of the same name already imported (e.g. a user's
  own `configs`) is set aside and put back afterwards.
  """
  pkg_dir = path.resolve().parent
  if not (pkg_dir / "__init__.py").is_file():
    yield
    return
  name, root = pkg_dir.name, str(pkg_dir.parent)
  ours = lambda k: k == name or k.startswith(name + ".")  # noqa: E731
  loaded = sys.modules.get(name)
  same = loaded is not None and any(
      pathlib.Path(p).resolve() == pkg_dir for p in getattr(loaded, "__path__", ()))
  saved = {} if same else {k: sys.modules.pop(k) for k in list(sys.modules) if ours(k)}
  sys.path.insert(0, root)
  try:
    yield
  finally:
    sys.path.remove(root)
    if saved:
      for k in [k for k in sys.modules if ours(k)]:
        del sys.modules[k]
      sys.modules.update(saved)


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads `file.py:arg` and applies overrides like `train.num_steps=10`."""
  path, arg = resolve_config_path(spec)
  module_spec = importlib.util.spec_from_file_location(f"vasa_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  with _recipe_package_importable(path):
    module_spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.unlock() if hasattr(config, "unlock") else None
  apply_overrides(config, overrides)
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]):
  """Applies `--config.a.b=value` items; each value takes the type of the field's default.

  Raises:
    VasaInputError: one line naming the override: an unknown key or a value of the wrong type.
  """
  for item in overrides:
    item = item[len("--config."):] if item.startswith("--config.") else item
    if "=" not in item:
      raise VasaInputError(f"Override {item!r} must look like --config.a.b=value")
    key, value = item.split("=", 1)
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        raise VasaInputError(f"--config.{key}: unknown config key (no field {name!r}).")
      node = node[name]
    if not isinstance(node, ml_collections.ConfigDict):
      raise VasaInputError(f"--config.{key}: unknown config key ({'.'.join(parents)} is a "
                           "value, not a group).")
    if leaf not in node:
      raise VasaInputError(f"--config.{key}: unknown config key. Known keys here: "
                           f"{sorted(node.keys())}")
    try:
      node[leaf] = _cast(value, node[leaf], f"--config.{key}")
    except TypeError as e:  # ConfigDict refuses a value of another type than the field's
      raise VasaInputError(f"--config.{key}={value}: {e}") from None
  return config


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def config_from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


def save_config(config: ml_collections.ConfigDict, path: str | os.PathLike):
  """Writes the config as JSON atomically (local paths and gs:// alike)."""
  atomic_write_text(path, config_to_json(config))
