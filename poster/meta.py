"""Metadata that travels with a set of weights (like timm's pretrained cfg).

A POSTER checkpoint is only usable when you know how its inputs were made:
the channel order (the V1 RAF-DB release was trained on BGR tensors), the
normalisation, the input size and the class names in order.  ``InputConfig``
and ``ModelMeta`` record exactly that, and are stored inside our checkpoints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputConfig:
    """How an image becomes the model's input tensor (evaluation transform)."""

    input_size: int = 224
    channel_order: str = "RGB"  # order of the tensor's channels: "RGB" or "BGR"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"  # PIL resize filter of the reference transform
    # Trained on grey faces (FER2013): colour inputs are turned grey (3 equal channels) first, so a
    # colour photo looks like the training data.  A no-op for images that are grey already.
    grayscale: bool = False

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or self.input_size <= 0:
            raise ValueError(f"input_size must be a positive int, got {self.input_size!r}")
        if not isinstance(self.grayscale, bool):
            raise ValueError(f"grayscale must be a bool, got {self.grayscale!r}")
        if not isinstance(self.interpolation, str):
            raise ValueError(f"interpolation must be a string, got {self.interpolation!r}")
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3:
                raise ValueError(f"{name} must have 3 values, got {values}")
            object.__setattr__(self, name, values)
        if any(v <= 0 for v in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputConfig":
        if not isinstance(d, dict):
            raise TypeError(f"input config must be a dict, got {type(d).__name__}")
        known = {k: d[k] for k in ("input_size", "channel_order", "mean", "std", "interpolation", "grayscale") if k in d}
        return cls(**known)


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to rebuild a model and feed it correctly."""

    arch: str  # registry name, e.g. "poster_v1_large"
    num_classes: int
    class_names: tuple[str, ...]
    input: InputConfig = field(default_factory=InputConfig)
    arch_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"token_mixing": True}
    source: str = ""  # where the weights came from (file name, training run, ...)
    dataset: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names given for a {self.num_classes}-class model"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["input"] = self.input.to_dict()
        d["input"]["mean"] = list(self.input.mean)
        d["input"]["std"] = list(self.input.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelMeta":
        return cls(
            arch=str(d["arch"]),
            num_classes=int(d["num_classes"]),
            class_names=tuple(str(c) for c in d["class_names"]),
            input=InputConfig.from_dict(d.get("input", {})),
            arch_options=dict(d.get("arch_options", {})),
            source=str(d.get("source", "")),
            dataset=str(d.get("dataset", "")),
        )
