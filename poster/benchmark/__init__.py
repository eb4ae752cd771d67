"""``poster benchmark``: our fast path against a reference-equivalent path, in one process
(``runner``: the measurements and the report; ``options``: ``BenchmarkOptions``, torch-free).

The names load on first use, so the command line can read ``BenchmarkOptions`` without torch."""

import importlib as _importlib

_EXPORTS = {"BenchmarkOptions": ".options", "MODELS": ".options", "run_benchmark": ".runner",
            "format_report": ".runner", "recipe_for": ".runner"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'poster.benchmark' has no attribute {name!r}")
    return getattr(_importlib.import_module(module, __name__), name)
