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


CPU_BATCH_SIZE = 8  # faces per model batch on a CPU: the activations of 8 faces stay in cache
GPU_BATCH_SIZE = 32


def default_batch_size(device: str | torch.device) -> int:
    """Faces per model batch when none is asked for: 8 on a CPU, 32 on a GPU.  On 2 CPU cores the
    bundled model cost 44-45 CPU-ms per face at batch 4-8 against 57-60 at batch 32 (one and two
    threads, docs/benchmarks.md): larger batches only spill the activations out of the caches,
    while a GPU needs them to fill its cores."""
    return CPU_BATCH_SIZE if torch.device(device).type == "cpu" else GPU_BATCH_SIZE
