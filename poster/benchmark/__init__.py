"""``poster benchmark``: our fast path against a reference-equivalent path, in one process
(``runner``: the measurements and the report; ``options``: ``BenchmarkOptions``, torch-free).

The names load on first use, so the command line can read ``BenchmarkOptions`` without torch."""

from ..lazy import lazy_exports

_EXPORTS = {"BenchmarkOptions": ".options", "MODELS": ".options", "run_benchmark": ".runner",
            "format_report": ".runner", "recipe_for": ".runner"}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
