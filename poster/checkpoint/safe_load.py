"""Safe reading of untrusted checkpoint files.

``read_checkpoint`` returns the top-level object of a ``torch.save`` file without ever unpickling it
with ``weights_only=False``. Before anything is unpickled, every pickle GLOBAL the file names is listed
with torch's static scanner and checked against a fixed policy:

* the globals torch's ``weights_only`` unpickler allows by default (tensors, storages, dtypes,
  ``collections.OrderedDict`` ...);
* ``__main__.<Name>``: replaced by an inert :class:`Placeholder` subclass. The real class is never
  imported or looked up; whatever the file does with it (``NEWOBJ``, ``REDUCE`` with arguments,
  ``BUILD`` with a state) only records data on the placeholder. This is how the ``RecorderMeter``
  objects of the official POSTER V2 checkpoints come back;
* the numpy array/dtype/scalar reconstruction globals listed in :data:`NUMPY_GLOBALS`, under both
  their numpy 1.x (``numpy.core``) and numpy 2.x (``numpy._core``) names.

Anything else (``os.system``, ``builtins.exec``, any other module function or class, including other
numpy functions) is refused with a :class:`~poster.errors.CheckpointError` naming the file and the
forbidden globals, before a single opcode of the pickle runs. Globals that other code in the process
allow-listed with ``torch.serialization.add_safe_globals`` are refused too: the policy above is the
whole policy.

The actual load is ``torch.load(..., weights_only=True)`` with the placeholders and numpy globals the
file needs temporarily allow-listed, so torch's restricted unpickler still enforces everything at
load time as a second line of defence.
"""

from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterable

from poster.errors import CheckpointError

__all__ = ["Placeholder", "read_checkpoint", "NUMPY_GLOBALS", "PLACEHOLDER_MODULES"]

#: Modules whose classes become placeholders (never imported).
PLACEHOLDER_MODULES: tuple[str, ...] = ("__main__",)

#: Numpy globals a checkpoint may name: what numpy's pickling of ndarray, dtype and numpy scalars
#: uses, with the numpy 1.x and numpy 2.x module names. Nothing else from numpy is accepted.
NUMPY_GLOBALS: frozenset[str] = frozenset(
    {
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
    }
)

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_LEGACY_PICKLES = 5  # magic number, protocol version, sys info, the object, storage keys
_MAX_CACHED_PLACEHOLDERS = 4096

# torch's allow-list registry is process-wide state: register and unregister under one lock.
_LOAD_LOCK = threading.Lock()
_PLACEHOLDER_LOCK = threading.Lock()
_placeholder_classes: dict[str, type] = {}


# ---------------------------------------------------------------------------------------------------------------------
# Placeholder
# ---------------------------------------------------------------------------------------------------------------------


class Placeholder:
    """Inert stand-in for an instance of a class the checkpoint pickled but that is never imported.

    ``type(p).__poster_class__`` (also readable as ``p.__poster_class__``) is the pickled class's dotted
    name, e.g. ``"__main__.RecorderMeter"``; ``type(p).__name__`` is its last component. ``p.state`` is
    the state the pickle gave it (usually the original ``__dict__``: a plain dict of numbers, lists,
    numpy arrays, tensors ...), ``None`` when there was none; ``p.args`` holds the constructor arguments
    the pickle passed (usually ``()``). No method of the foreign class exists here, and nothing is
    ever called on the state.
    """

    __poster_class__: str = "<unknown>"
    __slots__ = ("args", "state")

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        self = object.__new__(cls)
        object.__setattr__(self, "args", args + ((kwargs,) if kwargs else ()))
        object.__setattr__(self, "state", None)
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Everything was recorded by __new__; never run foreign code.
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __reduce__(self):
        # copy / deepcopy / pickle support. A re-pickled placeholder names
        # ``poster.checkpoint.safe_load._rebuild_placeholder``, which read_checkpoint refuses:
        # only the original file format is accepted.
        return (_rebuild_placeholder, (self.__poster_class__, self.args, self.state))

    def __repr__(self) -> str:
        if isinstance(self.state, dict):
            inner = "keys=" + repr(sorted(map(str, self.state)))
        else:
            inner = "state=" + type(self.state).__name__
        return f"<Placeholder {self.__poster_class__} {inner}>"


def placeholder_class(dotted_name: str) -> type:
    """The :class:`Placeholder` subclass standing for the class called ``dotted_name`` (cached)."""
    with _PLACEHOLDER_LOCK:
        cls = _placeholder_classes.get(dotted_name)
        if cls is None:
            short = dotted_name.rsplit(".", 1)[-1]
            body = {"__slots__": (), "__poster_class__": dotted_name, "__module__": __name__}
            cls = type(short, (Placeholder,), body)
            cls.__qualname__ = f"Placeholder[{dotted_name}]"
            if len(_placeholder_classes) < _MAX_CACHED_PLACEHOLDERS:
                _placeholder_classes[dotted_name] = cls
        return cls


def _rebuild_placeholder(dotted_name: str, args: tuple, state: Any) -> Placeholder:
    obj = placeholder_class(dotted_name)(*args)
    obj.__setstate__(state)
    return obj


# ---------------------------------------------------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------------------------------------------------


def _is_placeholder_name(name: str) -> bool:
    module, _, rest = name.partition(".")
    if module not in PLACEHOLDER_MODULES or not rest:
        return False
    return all(part.isidentifier() for part in rest.split("."))


def _numpy_objects() -> dict[str, Any]:
    """Name -> object for the numpy allow-list (both module spellings map to the installed numpy)."""
    import numpy as np

    try:
        from numpy._core import multiarray as ma  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as ma  # type: ignore[no-redef]

    objs: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for prefix in ("numpy.core.multiarray", "numpy._core.multiarray"):
        objs[f"{prefix}._reconstruct"] = ma._reconstruct
        objs[f"{prefix}.scalar"] = ma.scalar
    return objs


def _numpy_dtype_classes() -> list[tuple[type, str]]:
    """The concrete dtype classes (``numpy.dtypes.Float64DType`` ...).

    ``numpy.dtype(...)`` returns an instance of one of these, and torch's unpickler only lets BUILD
    set the state of instances whose exact type is allow-listed. They are registered for that reason
    only; a file naming one of them directly is still refused by the policy check.
    """
    import numpy as np

    classes: set[type] = set()
    dtypes_mod = getattr(np, "dtypes", None)
    if dtypes_mod is not None:
        for n in getattr(dtypes_mod, "__all__", ()):
            c = getattr(dtypes_mod, n, None)
            if isinstance(c, type) and issubclass(c, np.dtype):
                classes.add(c)
    for code in np.typecodes["All"] + "V":
        try:
            classes.add(type(np.dtype(code)))
        except TypeError:  # pragma: no cover
            pass
    classes.add(type(np.dtype([("a", "f4")])))
    return [(c, f"{c.__module__}.{c.__qualname__}") for c in classes]


def _torch_default_globals() -> set[str]:
    from torch import _weights_only_unpickler

    return set(_weights_only_unpickler._get_allowed_globals().keys())


def _forbidden(names: Iterable[str]) -> list[str]:
    default = _torch_default_globals()
    return sorted(
        n for n in names if n not in default and n not in NUMPY_GLOBALS and not _is_placeholder_name(n)
    )


# ---------------------------------------------------------------------------------------------------------------------
# Scanning
# ---------------------------------------------------------------------------------------------------------------------


def _globals_in_pickle(f) -> set[str]:
    """Every GLOBAL of the pickle at ``f``'s position, read by torch's own scanner: same opcode parser
    and same python-2 name mapping (``__builtin__`` -> ``builtins``) as its weights_only unpickler."""
    from torch import _weights_only_unpickler

    scan = getattr(_weights_only_unpickler, "get_globals_in_pkl", None)
    if scan is None:  # pragma: no cover - old torch
        raise RuntimeError("reading checkpoints safely needs torch >= 2.6 (no get_globals_in_pkl in this torch)")
    return set(scan(f))


def _scan_zip(f, path: Path) -> set[str]:
    import torch

    try:
        with torch.serialization._open_zipfile_reader(f) as zf:
            if torch.serialization._is_torchscript_zip(zf):
                raise CheckpointError(
                    f"{path}: TorchScript archive (torch.jit.save), not a torch.save checkpoint; refusing to load it"
                )
            if not zf.has_record("data.pkl"):
                raise CheckpointError(f"{path}: zip archive without a data.pkl record: not a torch.save checkpoint")
            data = zf.get_record("data.pkl")
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint (cannot read the zip archive: {_short(e)})"
        ) from None
    try:
        return _globals_in_pickle(io.BytesIO(data))
    except EOFError:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint (data.pkl ends early)") from None
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read safely: unsupported pickle content ({_short(e)})") from None


def _scan_legacy(f, path: Path) -> set[str]:
    names: set[str] = set()
    try:
        for _ in range(_LEGACY_PICKLES):
            names |= _globals_in_pickle(f)
    except EOFError:
        raise CheckpointError(f"{path}: truncated or corrupt legacy (non-zip) checkpoint") from None
    except Exception as e:
        raise CheckpointError(
            f"{path}: legacy (non-zip) checkpoint that cannot be read safely ({_short(e)})"
        ) from None
    return names


def _short(e: BaseException) -> str:
    msg = str(e)
    marker = "WeightsUnpickler error:"
    if marker in msg:  # drop torch's advice to retry with weights_only=False
        msg = msg.split(marker, 1)[1]
        msg = msg.split("\n\nCheck the documentation of torch.load", 1)[0]
    msg = re.sub(r"\s+", " ", msg).strip()
    if len(msg) > 500:
        msg = msg[:500] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


class _Allow:
    """Temporarily add entries to torch's process-wide safe-globals set (only the ones it lacked)."""

    def __init__(self, entries: list[tuple[Any, str]]):
        self.entries = entries
        self.added: list[tuple[Any, str]] = []

    def __enter__(self):
        from torch import _weights_only_unpickler as wu

        present = set(wu._get_safe_globals())
        self.added = [e for e in self.entries if e not in present]
        if self.added:
            wu._add_safe_globals(self.added)
        return self

    def __exit__(self, *exc):
        from torch import _weights_only_unpickler as wu

        if self.added:
            wu._remove_safe_globals(self.added)
        return False


def _extra_globals(names: set[str]) -> list[tuple[Any, str]]:
    entries: list[tuple[Any, str]] = [(placeholder_class(n), n) for n in sorted(names) if _is_placeholder_name(n)]
    numpy_needed = sorted(n for n in names if n in NUMPY_GLOBALS)
    if numpy_needed:
        objs = _numpy_objects()
        entries += [(objs[n], n) for n in numpy_needed]
        entries += _numpy_dtype_classes()
    return entries


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load the top-level object of a ``torch.save`` file without running code from it.

    ``map_location`` is passed to ``torch.load`` unchanged (default ``'cpu'``, so CUDA tensors in
    the file, like the ``best_acc`` of POSTER V2 checkpoints, load on a CPU-only machine).
    Instances of classes pickled from ``__main__`` come back as :class:`Placeholder` objects.
    Every failure (missing, empty, truncated, not a checkpoint, forbidden content) raises
    :class:`~poster.errors.CheckpointError` naming the file.
    """
    import torch

    p = Path(os.fspath(path))
    try:
        st = p.stat()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {p}") from None
    except OSError as e:
        raise CheckpointError(f"cannot access checkpoint file {p}: {e.strerror or e}") from None
    if not p.is_file():
        raise CheckpointError(f"{p}: not a regular file")
    if st.st_size == 0:
        raise CheckpointError(f"{p}: checkpoint file is empty (0 bytes)")

    try:
        f = open(p, "rb")
    except OSError as e:
        raise CheckpointError(f"cannot open checkpoint file {p}: {e.strerror or e}") from None
    with f:
        head = f.read(4)
        f.seek(0)
        if head == _ZIP_MAGIC:
            names = _scan_zip(f, p)
        elif head[:1] == _PICKLE_PROTO:
            names = _scan_legacy(f, p)
        else:
            raise CheckpointError(
                f"{p}: not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy pickle file)"
            )

        bad = _forbidden(names)
        if bad:
            raise CheckpointError(
                f"{p}: refusing to load: the checkpoint references forbidden global(s) {', '.join(bad)} "
                "(only tensors, plain containers, numpy arrays and __main__ objects as inert placeholders are allowed)"
            )

        f.seek(0)
        with _LOAD_LOCK, _Allow(_extra_globals(names)):
            try:
                # Never weights_only=False. A file object (not the path) so torch reads exactly the bytes
                # that were scanned and does not dispatch on the file name (e.g. '.safetensors').
                return torch.load(f, map_location=map_location, weights_only=True, mmap=False)
            except CheckpointError:
                raise
            except EOFError:
                raise CheckpointError(f"{p}: truncated or corrupt checkpoint (unexpected end of data)") from None
            except Exception as e:
                raise CheckpointError(f"{p}: cannot be loaded safely: {_short(e)}") from None
