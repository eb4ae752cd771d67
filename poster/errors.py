"""Every exception class the toolkit raises on purpose, in one place.

Every error a user can cause (bad path, bad file, bad value, mismatching checkpoint) is a
``PosterError``: the CLI prints its message as one ``error:`` line, without a traceback.
A bad *value* is also a ``ValueError`` (``ConfigError``), so that plain-Python callers can
catch it the usual way.

Library messages name the Python parameter or field (``batch_size must be >= 1``); the
command-line layer words them as its flags where it validates its own options.
"""

import contextlib


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


# How messages name an option.  The library speaks to Python callers (``skip_bad=True``); while
# the command line runs (``flag_wording()``), the same message names the flag (``--skip-bad``).
# A process-wide switch rather than a context variable, so that messages raised in prefetch
# threads and forked DataLoader workers read the same way.
_flag_wording = False


class InputRejected(PosterError):
    """A served request's image or options cannot be used (``poster serve``); ``status`` is the HTTP
    status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def option(name: str, value: object = None, *, python: str | None = None) -> str:
    """The option ``name`` (set to ``value``) as the current reader spells it.

    ``option("skip_bad", True)`` is ``skip_bad=True`` in Python and ``--skip-bad`` on the command
    line; ``option("device", "cpu")`` is ``device='cpu'`` or ``--device cpu``; ``option("resume")``
    is ``resume`` or ``--resume``.  ``python`` replaces the Python spelling where the flag's value
    is a command-line syntax of its own (``--class-map a=b`` is ``explicit={'a': 'b'}``).
    """
    if not _flag_wording:
        return python if python is not None else name if value is None else f"{name}={value!r}"
    flag = "--" + name.replace("_", "-")
    return flag if value is None or value is True else f"{flag} {value}"


def flag_words() -> bool:
    """True while the command line runs: messages name ``--flags``."""
    return _flag_wording


@contextlib.contextmanager
def flag_wording():
    """While the CLI runs, messages name ``--flags`` instead of parameters."""
    global _flag_wording
    before, _flag_wording = _flag_wording, True
    try:
        yield
    finally:
        _flag_wording = before
