"""The run options of ``poster train``: everything about a run that is not the recipe's
hyper-parameters, and the per-epoch numbers the run records."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, PosterError, option

__all__ = ["TrainOptions", "EpochStats"]


@dataclass
class TrainOptions:
    """Everything about a run that is not the recipe's hyper-parameters."""

    dataset: str  # layout name understood by poster.data.build_dataset
    data: str  # dataset root
    output_dir: str
    train_split: str = "train"
    val_split: str | None = None  # explicit validation split; None: hold out val_fraction of train
    val_fraction: float = 0.1
    test_split: str | None = "test"
    select_on: str = "val"  # "val" (honest) or "test" (the papers' protocol, reported as such)
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast where native (CUDA, CPUs with AMX/AVX512-BF16), else fp32 (poster.precision)
    channels_last: str = "auto"  # auto: NHWC convolutions whenever bf16 autocast is on
    ir50: str | None = None
    landmark: str | None = None
    resume: bool = False
    limit_train: int | None = None  # stratified subset sizes, for quick experiments
    limit_val: int | None = None
    limit_test: int | None = None
    workers: int | None = None  # data-loading processes; None: the recipe's suggestion (run_defaults)
    eval_batch_size: int | None = None  # None: the recipe's suggestion (run_defaults)
    progress: bool = True
    tensorboard: bool = False
    sync_bn: bool = False
    deterministic: bool = False
    cache: str | None = None  # None: decode per batch; "memory" or a folder: the 112-pixel uint8 cache
    skip_bad: bool = False  # undecodable images: skip and count them (default: stop, naming file and line)
    compile: bool = False  # torch.compile the training step's model (opt-in; the first step's time is reported)

    def __post_init__(self) -> None:
        if self.select_on not in ("val", "test"):
            raise ConfigError(f"{option('select_on')} must be 'val' or 'test', got {self.select_on!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.channels_last not in ("auto", "on", "off"):
            raise ConfigError(f"channels_last must be auto, on or off, got {self.channels_last!r}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise PosterError(f"eval_batch_size must be at least 1, got {self.eval_batch_size}")


@dataclass
class EpochStats:
    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    images_per_s: float
    seconds: float
    val_loss: float | None = None
    val_acc: float | None = None
    val_f1: float | None = None
    test_acc: float | None = None
    test_loss: float | None = None
    best: bool = False
