"""Errors raised on bad user input: each message names the file and how to fix it."""


class VasaInputError(ValueError):
  """Bad input from the user (a missing file, unreadable media, no face, wrong shapes)."""


class NoFaceError(VasaInputError):
  """No face was found in an image or a clip."""


class CheckpointError(VasaInputError):
  """A checkpoint directory is missing or incomplete."""
