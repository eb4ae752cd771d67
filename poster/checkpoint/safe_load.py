"""Safe reading of untrusted checkpoint files.

One long module on purpose: the whole policy for untrusted files (which globals, which sizes,
which structures are accepted) is reviewed in one place, so no rule hides in another file.

``read_checkpoint`` returns the top-level object of a ``torch.save`` file without ever unpickling it
with ``weights_only=False`` and without letting the file choose what code runs or how much memory is
taken. Before anything is unpickled:

1. **Globals.** Every pickle GLOBAL the file names is listed with torch's own scanner and checked
   against a fixed policy (:data:`TORCH_GLOBALS`, :data:`NUMPY_GLOBALS`, ``__main__.*``):

   * the torch names plain ``torch.save`` files use: the dense tensor and parameter rebuilders, the
     typed storage classes of ordinary dtypes, torch dtypes, ``collections.OrderedDict``, sets,
     complex numbers and ``_codecs.encode`` (protocol-2 bytes). Deliberately *not* the rest of torch's
     default allow-list: ``bytearray`` (a 1 KB file asking for gigabytes), sparse, quantized, meta,
     nested and subclass rebuilders (shapes that are not bounded by the bytes in the file);
   * ``__main__.<Name>``: replaced by an inert :class:`Placeholder` subclass. The real class is never
     imported; whatever the file does with it only records data on the placeholder. This is how the
     ``RecorderMeter`` objects of the official POSTER V2 checkpoints come back;
   * numpy arrays, dtypes and scalars (numpy 1.x and 2.x names), rebuilt by *our* code from validated
     plain values (:class:`SafeArray`, :func:`_safe_dtype`, :func:`_safe_scalar`): no numpy
     ``__setstate__`` ever sees a state the file made up, and only plain numeric dtypes exist.

   Anything else (``os.system``, ``builtins.exec``, any other function or class, also ones other code
   in the process allow-listed with ``torch.serialization.add_safe_globals``) is refused with a
   :class:`~poster.errors.CheckpointError` naming the file and the globals.
2. **Sizes.** Archive records must be stored uncompressed (``torch.save`` never compresses; a DEFLATE
   record can inflate a few MB into gigabytes), and the storages the pickle declares must fit in the
   bytes of the file (a dry run of the pickle with inert stand-ins lists them; nothing is allocated for
   them). The scans themselves cost only what the file holds: no read past its end, whatever length
   the pickle names, and the dry run's memo is a dict, not a table sized by the indices in the file.

The load itself is ``torch.load(..., weights_only=True)`` with only the placeholder and numpy entries
the file needs temporarily allow-listed, so torch's restricted unpickler enforces everything again at
load time. Afterwards every object is checked (:func:`_sanitize`): tensors must be dense, on the CPU and
no larger than their storage (no zero-stride giants), containers at most :data:`MAX_DEPTH` deep, and an
``OrderedDict`` comes back as a fresh one (a pickled instance ``__dict__`` could shadow ``.get``).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import threading
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from poster.errors import CheckpointError, option

from . import _torchcompat as compat

__all__ = ["Placeholder", "SafeArray", "read_checkpoint", "NUMPY_GLOBALS", "PLACEHOLDER_MODULES", "TORCH_GLOBALS",
           "MAX_DEPTH"]

#: Modules whose classes become placeholders (never imported).
PLACEHOLDER_MODULES: tuple[str, ...] = ("__main__",)

#: Numpy globals a checkpoint may name: what numpy's pickling of ndarray, dtype and numpy scalars
#: uses, with the numpy 1.x and numpy 2.x module names. They are served by our own validating
#: rebuilders, never by numpy's; nothing else from numpy is accepted.
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

# Storage classes of ordinary dtypes -> bytes per element (also the legacy ``torch.cuda.*`` names).
_STORAGE_ITEMSIZE: dict[str, int] = {
    "FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16,
}
_STORAGE_NAMES: dict[str, int] = {
    **{f"torch.{n}": s for n, s in _STORAGE_ITEMSIZE.items()},
    **{f"torch.cuda.{n}": s for n, s in _STORAGE_ITEMSIZE.items()},
    "torch.UntypedStorage": 1, "torch.storage.UntypedStorage": 1,
}
_TORCH_DTYPE_NAMES = frozenset(f"torch.{n}" for n in (
    "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "complex64", "complex128"))

#: The torch-side globals a checkpoint may name (a strict subset of torch's ``weights_only`` defaults).
TORCH_GLOBALS: frozenset[str] = frozenset({
    "collections.OrderedDict", "builtins.set", "builtins.complex", "_codecs.encode", "torch.Size",
    "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter", *_STORAGE_NAMES, *_TORCH_DTYPE_NAMES,
})

#: Deepest container nesting accepted (official files use fewer than 10 levels).
MAX_DEPTH = 64

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_LEGACY_PICKLES = 5  # magic number, protocol version, sys info, the object, storage keys
_MAX_CACHED_PLACEHOLDERS = 4096
_MAX_SCAN_OPS = 50_000_000  # the dry run's budget of objects (a file cannot name more than its size)

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
# numpy objects, rebuilt from validated plain values
# ---------------------------------------------------------------------------------------------------------------------

# Plain numeric dtypes only: no object, string, void/structured or datetime dtypes (their states are
# where numpy's own __setstate__ trusts its input and can crash the process).
_NUMPY_CODES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"})
_BYTE_ORDERS = ("<", ">", "|", "=")


class _DTypeSpec:
    """What a pickled ``numpy.dtype(code)`` plus its BUILD state said, checked; ``.dtype`` is the real one."""

    __slots__ = ("code", "order")

    def __init__(self, code: str):
        self.code, self.order = code, "="

    def __setstate__(self, state: Any) -> None:
        # numpy writes (3, order, None, None, None, -1, -1, 0) for every plain dtype (4 adds metadata).
        plain = (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                 and state[1] in _BYTE_ORDERS and state[2:5] == (None, None, None)
                 and state[5:8] == (-1, -1, 0) and (len(state) == 8 or state[8] in (None, {})))
        if not plain:
            raise pickle.UnpicklingError(f"numpy dtype {self.code!r} with an unexpected state {_clip(state)}")
        self.order = state[1]

    @property
    def dtype(self) -> np.dtype:
        order = self.order if self.order in "<>" else "="
        return np.dtype(self.code).newbyteorder(order)

    def __repr__(self) -> str:
        return f"<numpy dtype {self.order}{self.code}>"


def _safe_dtype(code: Any, align: Any = False, copy: Any = True) -> _DTypeSpec:
    if not isinstance(code, str) or code not in _NUMPY_CODES:
        raise pickle.UnpicklingError(f"numpy dtype {_clip(code)} is not a plain numeric dtype")
    return _DTypeSpec(code)


def _as_dtype(value: Any) -> np.dtype:
    if not isinstance(value, _DTypeSpec):
        raise pickle.UnpicklingError(f"expected a numpy dtype, got {type(value).__name__}")
    return value.dtype


class SafeArray(np.ndarray):
    """A numpy array read from a checkpoint: built only from a validated (shape, dtype, bytes) state.

    Returned to callers as a plain ``np.ndarray`` view; the class exists so that torch's unpickler
    lets BUILD reach *our* ``__setstate__`` rather than numpy's.
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        raise pickle.UnpicklingError("numpy arrays in a checkpoint can only be rebuilt from their pickled state")

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise pickle.UnpicklingError(f"numpy array with an unexpected state {_clip(state)}")
        shape, dtype, fortran, raw = state
        dtype = _as_dtype(dtype)
        if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape) and len(shape) <= 32):
            raise pickle.UnpicklingError(f"numpy array with a malformed shape {_clip(shape)}")
        if not isinstance(raw, bytes) or not isinstance(fortran, bool):
            raise pickle.UnpicklingError("numpy array whose data is not a byte string (object arrays are refused)")
        count = 1
        for d in shape:
            count *= d
        if count * dtype.itemsize != len(raw):
            raise pickle.UnpicklingError(f"numpy array of shape {shape} {dtype} with {len(raw)} bytes of data")
        super().__setstate__((1, shape, dtype, fortran, raw))


def _safe_reconstruct(subtype: Any, shape: Any, typecode: Any) -> SafeArray:
    if subtype is not SafeArray:
        raise pickle.UnpicklingError(f"numpy _reconstruct with a subtype other than numpy.ndarray ({_clip(subtype)})")
    return np.ndarray.__new__(SafeArray, (0,), np.uint8)  # an empty shell; BUILD fills it


def _safe_scalar(dtype: Any, raw: Any = None) -> np.generic:
    dtype = _as_dtype(dtype)
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError(f"numpy {dtype} scalar with {_clip(raw)} as data")
    return np.frombuffer(raw, dtype=dtype)[0]


def _numpy_entries(names: set[str]) -> list[tuple[Any, str]]:
    """Allow-list entries serving the numpy names ``names`` with the validating rebuilders above."""
    served = {"ndarray": SafeArray, "dtype": _safe_dtype, "_reconstruct": _safe_reconstruct, "scalar": _safe_scalar}
    entries = [(served[n.rsplit(".", 1)[1]], n) for n in sorted(names & NUMPY_GLOBALS)]
    if entries:  # BUILD reaches only allow-listed types: ours
        entries += [(SafeArray, "poster.checkpoint.safe_load.SafeArray"),
                    (_DTypeSpec, "poster.checkpoint.safe_load._DTypeSpec")]
    return entries


def _clip(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------------------------------------------------


def _is_placeholder_name(name: str) -> bool:
    module, _, rest = name.partition(".")
    if module not in PLACEHOLDER_MODULES or not rest:
        return False
    return all(part.isidentifier() for part in rest.split("."))


def _forbidden(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if n not in TORCH_GLOBALS and n not in NUMPY_GLOBALS and not _is_placeholder_name(n))


# ---------------------------------------------------------------------------------------------------------------------
# Scanning: names, archive records, and a dry run for the storage sizes
# ---------------------------------------------------------------------------------------------------------------------


class _Inert:
    """Stand-in for every object of the dry run: accepts any call, state or item and does nothing."""

    name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class _DryRun(pickle._Unpickler):
    """Runs a checkpoint pickle with inert stand-ins for every global, to list the storages it declares.

    Only names that passed the policy reach it; no class or function of theirs is used (plain
    containers excepted), so nothing is allocated for the storages and no foreign code runs.
    Python's own unpickler, not the C one: the C one sizes its memo table from the index a PUT names
    (``LONG_BINPUT 2**29`` in a 1 KB file fills 8 GiB with zeros); this one keeps the memo in a dict.
    """

    _REAL = {"collections.OrderedDict": OrderedDict, "builtins.set": set}

    def __init__(self, f):
        super().__init__(f)
        self.storages: dict[Any, tuple[str, Any]] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in self._REAL:
            return self._REAL[full]
        if full not in self._classes:
            self._classes[full] = type("Inert", (_Inert,), {"name": full})
        return self._classes[full]

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            storage_type, key, numel = pid[1], pid[2], pid[4]
            self.storages[key if isinstance(key, (str, int)) else repr(key)] = (getattr(storage_type, "name", "?"), numel)
        return _Inert()


def _declared_storage_bytes(storages: dict[Any, tuple[str, Any]], where: str) -> int:
    total = 0
    for key, (name, numel) in storages.items():
        size = _STORAGE_NAMES.get(name)
        if size is None:
            raise CheckpointError(f"{where}: storage {key!r} has an unsupported type {name}")
        if type(numel) is not int or numel < 0:
            raise CheckpointError(f"{where}: storage {key!r} declares a malformed size {_clip(numel)}")
        total += numel * size
    return total


def _dry_run(data: bytes | io.BufferedIOBase, where: str) -> dict[Any, tuple[str, Any]]:
    f = io.BytesIO(data) if isinstance(data, bytes) else data
    unpickler = _DryRun(f)
    try:
        unpickler.load()
    except EOFError:
        raise CheckpointError(f"{where}: truncated or corrupt checkpoint (the pickle ends early)") from None
    except RecursionError:
        raise CheckpointError(f"{where}: the pickle is nested too deeply") from None
    except Exception as e:
        raise CheckpointError(f"{where}: cannot be read safely: malformed pickle ({_short(e)})") from None
    return unpickler.storages


def _check_zip_records(f, path: Path, file_size: int) -> None:
    """``torch.save`` writes every record uncompressed; anything else could inflate without bound."""
    try:
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
    except Exception as e:  # zipfile raises BadZipFile, NotImplementedError, ValueError ... on damaged headers
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint (cannot read the zip archive: {_short(e)})") \
            from None
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise CheckpointError(f"{path}: archive record {info.filename!r} is compressed; torch.save never "
                                  "compresses, so this file was crafted or repacked (refused: it could inflate "
                                  "without bound)")
        if info.header_offset + info.compress_size > file_size:
            raise CheckpointError(f"{path}: archive record {info.filename!r} runs past the end of the file")


def _scan_zip(f, path: Path, file_size: int) -> set[str]:
    data = _read_data_pkl(f, path, file_size)
    names = _globals_of(io.BytesIO(data), path)
    _refuse_forbidden(names, path)
    storages = _dry_run(data, str(path))
    if _declared_storage_bytes(storages, str(path)) > file_size:
        raise CheckpointError(f"{path}: its tensors declare more bytes than the file holds (crafted sizes)")
    return names


def _read_data_pkl(f, path: Path, file_size: int) -> bytes:
    def corrupt(e: BaseException) -> CheckpointError:
        return CheckpointError(f"{path}: truncated or corrupt checkpoint (cannot read the zip archive: {_short(e)})")

    try:
        with compat.open_zip_reader(f) as zf:  # reads the directory only
            torchscript = compat.is_torchscript_zip(zf)
            has_data = zf.has_record("data.pkl")
    except Exception as e:
        raise corrupt(e) from None
    if torchscript:
        raise CheckpointError(
            f"{path}: TorchScript archive (torch.jit.save): it is a program, not a checkpoint, and is never "
            f"loaded as one; if you trust it like code, run it with the TorchScript runtime "
            f"({option('runtime', 'torchscript')})")
    if not has_data:
        raise CheckpointError(f"{path}: zip archive without a data.pkl record: not a torch.save checkpoint")
    _check_zip_records(f, path, file_size)
    f.seek(0)
    try:
        with compat.open_zip_reader(f) as zf:
            return zf.get_record("data.pkl")
    except Exception as e:
        raise corrupt(e) from None


class _Bounded:
    """The open file, read so that no read asks for more than the bytes left in it.

    A buffered ``read(n)`` reserves ``n`` bytes before reading, and the pickle scanners read string
    lengths from the file: a 4 GiB length in a 1 KB legacy file would cost 4 GiB (or a MemoryError).
    """

    def __init__(self, f, file_size: int):
        self._f, self._size = f, file_size

    def _left(self, n: int | None) -> int:
        left = max(self._size - self._f.tell(), 0)
        return left if n is None or n < 0 else min(n, left)

    def read(self, n: int | None = -1) -> bytes:
        return self._f.read(self._left(n))

    def readline(self, n: int | None = -1) -> bytes:
        return self._f.readline(self._left(n))


def _scan_legacy(f, path: Path, file_size: int) -> set[str]:
    names: set[str] = set()
    starts = []
    bounded = _Bounded(f, file_size)
    try:
        for _ in range(_LEGACY_PICKLES):
            starts.append(f.tell())
            names |= compat.globals_in_pickle(bounded)
    except EOFError:
        raise CheckpointError(f"{path}: truncated or corrupt legacy (non-zip) checkpoint") from None
    except Exception as e:
        raise CheckpointError(
            f"{path}: legacy (non-zip) checkpoint that cannot be read safely ({_short(e)})"
        ) from None
    _refuse_forbidden(names, path)
    f.seek(starts[3])
    storages = _dry_run(bounded, str(path))
    # Legacy files allocate each storage from the size in the pickle before reading its bytes.
    if _declared_storage_bytes(storages, str(path)) > file_size:
        raise CheckpointError(f"{path}: its tensors declare more bytes than the file holds (crafted sizes)")
    return names


def _globals_of(f, path: Path) -> set[str]:
    try:
        return compat.globals_in_pickle(f)
    except EOFError:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint (data.pkl ends early)") from None
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read safely: unsupported pickle content ({_short(e)})") from None


def _refuse_forbidden(names: set[str], path: Path) -> None:
    bad = _forbidden(names)
    if bad:
        raise CheckpointError(
            f"{path}: refusing to load: the checkpoint references forbidden global(s) {', '.join(bad)} "
            "(only tensors, plain containers, numpy arrays and __main__ objects as inert placeholders are allowed)"
        )


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
# After the load: every object checked, containers made plain
# ---------------------------------------------------------------------------------------------------------------------


def _check_tensor(t: Any, where: str) -> None:
    import torch

    if t.layout != torch.strided or t.is_quantized or t.is_meta or t.is_nested:
        raise CheckpointError(f"{where}: holds a {t.layout} / quantized / meta tensor; only dense tensors are accepted")
    # A view larger than its storage (zero or overlapping strides) would cost memory the file never paid for.
    if t.numel():
        span = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
        if t.numel() > span:
            raise CheckpointError(f"{where}: holds a tensor of shape {tuple(t.shape)} with overlapping strides "
                                  f"{tuple(t.stride())} (crafted: it is larger than its data)")


def _sanitize(obj: Any, where: str) -> Any:
    """Check every tensor; rebuild OrderedDicts fresh; numpy arrays as plain views; bounded depth."""
    import torch

    memo: dict[int, Any] = {}

    def visit(x: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise CheckpointError(f"{where}: objects nested more than {MAX_DEPTH} levels deep")
        key = id(x)
        if key in memo:
            return memo[key]
        if isinstance(x, torch.Tensor):
            _check_tensor(x, where)
            out = x
        elif isinstance(x, SafeArray):
            out = x.view(np.ndarray)
        elif isinstance(x, _DTypeSpec):
            out = x.dtype
        elif isinstance(x, OrderedDict):
            # dict.items: the pickled instance __dict__ cannot shadow it (it can shadow .items and .get).
            out = memo[key] = OrderedDict()
            for k, v in list(dict.items(x)):
                out[visit(k, depth + 1)] = visit(v, depth + 1)
        elif type(x) is dict:
            memo[key] = x
            for k, v in list(x.items()):
                x[k] = visit(v, depth + 1)
            out = x
        elif type(x) is list:
            memo[key] = x
            x[:] = [visit(v, depth + 1) for v in x]
            out = x
        elif type(x) is tuple or isinstance(x, torch.Size):
            out = type(x)(visit(v, depth + 1) for v in x)
        elif type(x) in (set, frozenset):
            out = type(x)(visit(v, depth + 1) for v in x)
        elif isinstance(x, Placeholder):
            memo[key] = x
            object.__setattr__(x, "args", visit(x.args, depth + 1))
            object.__setattr__(x, "state", visit(x.state, depth + 1))
            out = x
        elif x is None or type(x) in (bool, int, float, complex, str, bytes) or isinstance(x, (np.generic,
                                                                                               torch.dtype)):
            out = x
        else:
            raise CheckpointError(f"{where}: holds an object of unexpected type {type(x).__name__}")
        memo[key] = out
        return out

    return visit(obj, 0)


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


class _Allow:
    """Temporarily add entries to torch's process-wide safe-globals set (only the ones it lacked)."""

    def __init__(self, entries: list[tuple[Any, str]]):
        self.entries = entries
        self.added: list[tuple[Any, str]] = []

    def __enter__(self):
        present = compat.safe_globals_now()
        self.added = [e for e in self.entries if e not in present]
        if self.added:
            compat.add_safe_globals(self.added)
        return self

    def __exit__(self, *exc):
        if self.added:
            compat.remove_safe_globals(self.added)
        return False


def _extra_globals(names: set[str]) -> list[tuple[Any, str]]:
    entries: list[tuple[Any, str]] = [(placeholder_class(n), n) for n in sorted(names) if _is_placeholder_name(n)]
    return entries + _numpy_entries(names)


def _open_checked(p: Path):
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
        return open(p, "rb"), st.st_size
    except OSError as e:
        raise CheckpointError(f"cannot open checkpoint file {p}: {e.strerror or e}") from None


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load the top-level object of a ``torch.save`` file without running code from it.

    ``map_location`` is passed to ``torch.load`` unchanged (default ``'cpu'``, so CUDA tensors in
    the file, like the ``best_acc`` of POSTER V2 checkpoints, load on a CPU-only machine).
    Instances of classes pickled from ``__main__`` come back as :class:`Placeholder` objects, numpy
    arrays as plain ``np.ndarray``. Every failure (missing, empty, truncated, not a checkpoint,
    forbidden content, crafted sizes) raises :class:`~poster.errors.CheckpointError` naming the file.
    """
    import torch

    p = Path(os.fspath(path))
    f, size = _open_checked(p)
    with f:
        head = f.read(4)
        f.seek(0)
        if head == _ZIP_MAGIC:
            names = _scan_zip(f, p, size)
        elif head[:1] == _PICKLE_PROTO:
            names = _scan_legacy(f, p, size)
        else:
            raise CheckpointError(
                f"{p}: not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy pickle file)"
            )
        f.seek(0)
        with _LOAD_LOCK, _Allow(_extra_globals(names)), warnings.catch_warnings():
            # torch warns about pickle protocols other than 2; a damaged file is refused below anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            try:
                # Never weights_only=False. A file object (not the path) so torch reads exactly the bytes
                # that were scanned and does not dispatch on the file name (e.g. '.safetensors').
                obj = torch.load(f, map_location=map_location, weights_only=True, mmap=False)
            except CheckpointError:
                raise
            except EOFError:
                raise CheckpointError(f"{p}: truncated or corrupt checkpoint (unexpected end of data)") from None
            except Exception as e:
                raise CheckpointError(f"{p}: cannot be loaded safely: {_short(e)}") from None
    return _sanitize(obj, str(p))
