"""The few private PyTorch serialisation APIs the safe loader needs, in one place.

The safe loader (``safe_load.py``) must see a checkpoint exactly as ``torch.load`` will: the same pickle
scanner, the same zip reader and the same allow-list registry. PyTorch has public equivalents for only
part of that, so the private names it uses are wrapped here, each with a check that it exists; a torch
release that renames one fails here with one clear message instead of deep inside a load
(``tests/test_safe_load.py::test_torch_compat_api_present`` runs these on the installed torch).
Needs torch >= 2.6 (the first release with ``get_globals_in_pkl`` and ``weights_only=True`` by default);
the project declares and tests 2.13 and 2.14 (pyproject.toml).
"""

from __future__ import annotations

from typing import IO, Any

import torch
from torch import _weights_only_unpickler as _wu


def _require(owner: Any, name: str) -> Any:
    found = getattr(owner, name, None)
    if found is None:  # pragma: no cover - depends on the torch release
        raise RuntimeError(f"reading checkpoints safely needs torch >= 2.6 with {owner.__name__}.{name}; "
                           f"this is torch {torch.__version__}")
    return found


def globals_in_pickle(f: IO[bytes]) -> set[str]:
    """Every GLOBAL / STACK_GLOBAL name of the pickle at ``f``'s position, read by the same opcode parser
    (and python-2 name mapping) as torch's ``weights_only`` unpickler."""
    return set(_require(_wu, "get_globals_in_pkl")(f))


def open_zip_reader(f: IO[bytes]):
    """torch's own zip reader for a ``torch.save`` archive (a context manager)."""
    return _require(torch.serialization, "_open_zipfile_reader")(f)


def is_torchscript_zip(zip_reader) -> bool:
    return bool(_require(torch.serialization, "_is_torchscript_zip")(zip_reader))


def safe_globals_now() -> list:
    """The process-wide list that ``torch.serialization.add_safe_globals`` extends."""
    return list(torch.serialization.get_safe_globals())


def add_safe_globals(entries: list) -> None:
    torch.serialization.add_safe_globals(entries)


def remove_safe_globals(entries: list) -> None:
    # No public remover exists; the private one takes the same entries add_safe_globals took.
    _require(_wu, "_remove_safe_globals")(entries)
