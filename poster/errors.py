"""Every exception class the toolkit raises on purpose, in one place.

Every error a user can cause (bad path, bad file, bad value, mismatching checkpoint) is a
``PosterError``: the CLI prints its message as one ``error:`` line, without a traceback.
A bad *value* is also a ``ValueError`` (``ConfigError``), so that plain-Python callers can
catch it the usual way.

Library messages name the Python parameter or field (``batch_size must be >= 1``); the
command-line layer words them as its flags where it validates its own options.
"""


class PosterError(Exception):
    """Base class of user-facing errors; the message must say what and where."""


class ConfigError(PosterError, ValueError):
    """A parameter, option or setting has a value the toolkit cannot use."""


class RecipeError(ConfigError):
    """Unknown recipe, unknown field or a value of the wrong type."""


class CheckpointError(PosterError):
    """A weights file cannot be read, is unsafe, or does not fit the model."""


class WeightsUnavailable(CheckpointError):
    """A release's file is not here and could not (or may not) be downloaded."""


class DatasetError(PosterError):
    """A dataset root, label file or image is missing or malformed."""


class ColorOrderError(PosterError):
    """A 3- or 4-channel numpy image was given without saying whether it is RGB or BGR."""


class RunFolderBusy(PosterError):
    """Another live process is using the run folder."""


class TrainingDiverged(PosterError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
