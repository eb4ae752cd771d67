"""Which device a run uses: the one reading of ``"auto"``, ``"cpu"``, ``"cuda:1"``, ... for the API and the CLI."""

from __future__ import annotations

import torch

from .errors import PosterError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch understands it."""
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise PosterError(f"unknown device {str(spec)!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise PosterError(f"device {str(spec)!r} is not supported here: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and device.index is not None and device.index >= max(1, torch.cuda.device_count()):
        if torch.cuda.is_available():
            raise PosterError(f"device {str(spec)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PosterError(f"device {spec!r} requested but CUDA is not available on this machine")
    return device
