"""Exceptions the toolkit raises on purpose.

Every error a user can cause (bad path, bad file, mismatching checkpoint) is a
``PosterError``: the CLI prints its message without a traceback.
"""


class PosterError(Exception):
    """Base class of user-facing errors; the message must say what and where."""


class CheckpointError(PosterError):
    """A weights file cannot be read, is unsafe, or does not fit the model."""


class DatasetError(PosterError):
    """A dataset root, label file or image is missing or malformed."""


class ColorOrderError(PosterError):
    """A 3- or 4-channel numpy image was given without saying whether it is RGB or BGR."""
