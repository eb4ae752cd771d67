"""How a model's arithmetic runs: the one precision policy of training, evaluation, prediction,
serving and the benchmark.

Every command and library entry point that takes ``precision="auto" | "fp32" | "bf16"`` asks
:func:`resolve_precision` what that means for its device and purpose, so "auto" has one meaning
per purpose everywhere (a table in docs/design.md, pinned per hardware class by tests/test_precision.py):

==========  ======================================  =========================================
purpose     ``auto`` means                          why
==========  ======================================  =========================================
train       bf16 where it is native, else fp32      2-3x faster steps where the hardware has it
predict     bf16 where it is native, else fp32      prediction and serving: speed, probabilities within ~1e-2
evaluate    fp32                                    published numbers reproduce (golden tolerance)
==========  ======================================  =========================================

"Native" (:func:`native_bf16`) is a CUDA device that supports bf16, or a CPU with bf16
instructions (AMX-BF16 or AVX512-BF16); other CPUs emulate bf16 in oneDNN, which is correct but
slower than fp32, so there ``auto`` stays fp32 and an explicit ``bf16`` runs with a warning.
A CUDA device without bf16 refuses an explicit ``bf16`` (torchtune's rule).

The names of this module need no torch until a function runs, so the command line takes its
``--precision`` choices (``REQUESTS``) from here without loading it.

``POSTER_CPU_BF16=0`` or ``=1`` overrides the CPU detection (the tests use it to run the suite as on
a CPU without bf16 whatever the machine, and to fake one with it).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING

from .errors import PosterError

if TYPE_CHECKING:
    import torch

__all__ = ["PRECISIONS", "REQUESTS", "PURPOSES", "cpu_has_native_bf16", "native_bf16", "resolve_precision",
           "autocast", "channels_last_for"]

PRECISIONS = ("fp32", "bf16")
REQUESTS = ("auto", *PRECISIONS)
PURPOSES = ("train", "predict", "evaluate")
CPU_BF16_ENV = "POSTER_CPU_BF16"

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _cpuinfo_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool({"amx_bf16", "avx512_bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bfloat16 instructions (AMX-BF16 or AVX512-BF16), where bf16 autocast
    makes CPU inference and training several times faster (docs/benchmarks.md); elsewhere oneDNN
    emulates bf16 and gains nothing.  Linux (/proc/cpuinfo) only; ``POSTER_CPU_BF16=0|1`` overrides."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _cpuinfo_has_bf16()


def native_bf16(device: str | torch.device) -> bool:
    """True where bf16 runs natively: a CUDA device that supports it, or a CPU with bf16 instructions."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_precision(requested: str, device: str | torch.device, purpose: str) -> str:
    """``"fp32"`` or ``"bf16"``: what ``requested`` (``auto``, ``fp32``, ``bf16``) means for ``purpose``
    (``train``, ``predict``, ``evaluate``) on ``device``; the module docstring has the table."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if requested not in REQUESTS:
        raise PosterError(f"precision must be auto, fp32 or bf16, got {requested!r}")
    import torch

    device = torch.device(device)
    if requested == "auto":
        return "bf16" if purpose != "evaluate" and native_bf16(device) else "fp32"
    if requested == "bf16" and not native_bf16(device):
        if device.type == "cuda":
            raise PosterError(f"--precision bf16: the CUDA device {device} does not support bf16; use fp32")
        _warn_emulated(device.type)
    return requested


@functools.lru_cache(maxsize=None)
def _warn_emulated(device_type: str) -> None:  # once per process and device type
    log.warning("bf16 on this %s is emulated (no AMX or AVX512-BF16 instructions): correct, but slower than fp32",
                device_type)


def autocast(precision: str, device: str | torch.device, cache_enabled: bool | None = None):
    """The autocast context of ``precision`` on ``device`` (a no-op context in fp32).  ``cache_enabled``
    as for ``torch.autocast`` (inference and CUDA graphs need ``False``)."""
    import torch

    kwargs = {} if cache_enabled is None else {"cache_enabled": cache_enabled}
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16", **kwargs)


def channels_last_for(requested: str | bool | None, precision: str) -> bool:
    """Whether training convolutions run channels-last: ``on``/``True``, ``off``/``False``, or
    ``auto``/``None``: with bf16, where NHWC is where oneDNN's and cuDNN's bf16 convolutions are
    fastest (measured ~1.3x on an AMX CPU); fp32 convolutions gain nothing from it on a CPU."""
    if requested in ("on", True):
        return True
    if requested in ("off", False):
        return False
    if requested not in ("auto", None):
        raise PosterError(f"channels_last must be auto, on or off, got {requested!r}")
    return precision == "bf16"
