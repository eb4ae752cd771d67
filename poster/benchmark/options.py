"""The options of ``poster benchmark``, importable without torch (the command line reads its flag
defaults from here, and ``poster --help`` must not load torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PosterError

__all__ = ["MODELS", "BenchmarkOptions"]

MODELS = ("poster_v1_large", "poster_v2", "poster_v1_tiny")


@dataclass
class BenchmarkOptions:
    model: str = "poster_v1_large"
    device: str = "auto"
    batch_sizes: tuple[int, ...] | None = None  # inference; default depends on the device
    train_batch_size: int | None = None  # default: the recipe's on GPU, 8 on CPU, 2 with quick
    steps: int | None = None  # timed SAM steps per path
    warmup: int | None = None  # untimed SAM steps before them
    quick: bool = False
    compile: bool = False
    precision: str = "auto"  # fast path: auto = as `poster train` (poster.precision): bf16 where native, else fp32
    channels_last: bool | None = None  # fast path, as prepare_inference takes it; None: with bf16 (poster.precision.channels_last_for)
    workers: int = 2  # reference DataLoader workers (the original's)
    cache_workers: int | None = None
    cpu_compare: bool = True
    onnx: bool = True
    min_time: float | None = None  # seconds per inference measurement
    seed: int = 0
    json_path: str | None = None

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise PosterError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise PosterError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.channels_last not in (None, True, False):
            raise PosterError(f"channels_last must be True, False or None (auto), got {self.channels_last!r}")
        for name in ("train_batch_size", "steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PosterError(f"--{name.replace('_', '-')} must be >= 1")
        if self.batch_sizes is not None and (not self.batch_sizes or min(self.batch_sizes) < 1):
            raise PosterError("--batch-sizes must be positive integers")
        if self.workers < 0:
            raise PosterError("--workers must be >= 0")
