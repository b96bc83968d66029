"""Train / validation splits by person (never sharing a person), the one rule training and
evaluation both use."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vasa_jax.data import records
from vasa_jax.errors import VasaInputError


def split_persons(index_or_persons, val_persons: Sequence[str] = (), val_fraction: float = 0.0,
                  seed: int = 0) -> tuple[list[str], list[str]]:
  """Splits identities into train and validation persons (never sharing a person).

  Args:
    index_or_persons: a `records.ClipIndex` or a list of person names.
    val_persons: persons held out explicitly (each must exist).
    val_fraction: otherwise, this share of persons (at least one when > 0, never all), chosen by
      a seeded shuffle of the sorted names so every host agrees.
    seed: seed of that shuffle.

  Returns:
    (train_persons, val_persons), both sorted.
  """
  if isinstance(index_or_persons, records.ClipIndex):
    persons = index_or_persons.persons
  else:
    persons = sorted(set(index_or_persons))
  val_persons = list(val_persons or [])
  if val_persons:
    unknown = sorted(set(val_persons) - set(persons))
    if unknown:
      raise VasaInputError(f"Validation persons {unknown} are not in the data set; known persons "
                           f"include {persons[:10]}. Fix config.data.val_persons.")
    val = sorted(set(val_persons))
  elif val_fraction > 0 and len(persons) > 1:
    n = min(max(1, int(round(val_fraction * len(persons)))), len(persons) - 1)
    order = np.random.default_rng(seed).permutation(len(persons))
    val = sorted(persons[i] for i in order[:n])
  else:
    val = []
  train = sorted(set(persons) - set(val))
  return train, val


def split_args(data_config) -> dict:
  """`split_persons` keyword arguments of a run's `config.data` (the split training used)."""
  return {"val_persons": list(data_config.get("val_persons", []) or []),
          "val_fraction": float(data_config.get("val_fraction_persons", 0.0) or 0.0),
          "seed": int(data_config.get("shuffle_seed", 0))}


def split_entries(index: records.ClipIndex, split: str, **kwargs) -> list[dict]:
  """The clip entries of `split` ("train", "val" or "all"); `kwargs` go to `split_persons`."""
  train, val = split_persons(index, **kwargs)
  if split == "train":
    keep = set(train)
  elif split in ("val", "validation", "eval"):
    keep = set(val)
  elif split == "all":
    keep = set(train) | set(val)
  else:
    raise VasaInputError(f"Unknown split {split!r}; use train, val or all.")
  entries = [c for c in index.clips if c["person"] in keep]
  if not entries:
    raise VasaInputError(f"The {split!r} split of {index.root} is empty (persons {sorted(keep)}). "
                         "Set config.data.val_persons / val_fraction_persons, or add data.")
  return entries
