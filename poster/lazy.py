"""Packages whose public names load on first use (PEP 562): ``poster``, ``poster.data``,
``poster.face``, ``poster.serve``, ``poster.benchmark``.  Why: ``poster --help`` and a light import
must not pay for torch, OpenCV or FastAPI that only some names need."""

from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps each public name to the module
    (relative to the package) that defines it; a name is imported, then kept, when first asked for."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        vars(sys.modules[package])[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
