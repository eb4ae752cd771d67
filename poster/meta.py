"""Metadata that travels with a set of weights (like timm's pretrained cfg).

A POSTER checkpoint is only usable when you know how its inputs were made:
the channel order (the V1 RAF-DB release was trained on BGR tensors), the
normalisation, the input size and the class names in order.  ``InputConfig``
and ``ModelMeta`` record exactly that, and are stored inside our checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import unicodedata
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import PosterError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Bounds on what metadata may say: it comes from files, and every one of these numbers sizes an
# allocation (the classifier head, every face resized to input_size squared) before anything else
# can object.  Generous for any real FER model, tiny next to what a crafted file could ask for.
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 1024
MAX_CLASSES = 1000
MAX_NAME_LENGTH = 64
CHANNEL_ORDERS = ("RGB", "BGR")


def check_channel_order(value: Any, name: str = "channel_order") -> str:
    """``value`` when it is "RGB" or "BGR"; else a ``ValueError`` naming the parameter ``name``.
    The one check of a colour order, wherever one is given (metadata, transforms, arrays, caches)."""
    if value not in CHANNEL_ORDERS:
        raise ValueError(f"{name} must be 'RGB' or 'BGR', got {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_class_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"class names must be non-empty strings of at most {MAX_NAME_LENGTH} characters, "
                         f"got {str(name)[:80]!r}")
    # Control and format characters (ANSI escapes, newlines, bidi overrides) would reach terminals and CSVs.
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise ValueError(f"class name {name!r} contains control characters")
    return name


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
        check_channel_order(self.channel_order)
        if not _is_int(self.input_size) or not MIN_INPUT_SIZE <= self.input_size <= MAX_INPUT_SIZE:
            raise ValueError(f"input_size must be an int from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}, "
                             f"got {self.input_size!r}")
        if not isinstance(self.grayscale, bool):
            raise ValueError(f"grayscale must be a bool, got {self.grayscale!r}")
        if not isinstance(self.interpolation, str):
            raise ValueError(f"interpolation must be a string, got {self.interpolation!r}")
        for name in ("mean", "std"):
            raw = getattr(self, name)
            if not isinstance(raw, (tuple, list)) or len(raw) != 3 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
                raise ValueError(f"{name} must be 3 numbers, got {str(raw)[:80]}")
            values = tuple(float(v) for v in raw)
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be finite, got {values}")
            object.__setattr__(self, name, values)
        if any(v <= 0 for v in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputConfig":
        if not isinstance(d, dict):
            raise ValueError(f"input config must be a dict, got {type(d).__name__}")
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
        if not _is_int(self.num_classes) or not 1 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be an int from 1 to {MAX_CLASSES}, got {str(self.num_classes)[:40]}")
        if not isinstance(self.class_names, (tuple, list)):
            raise ValueError(f"class_names must be a list of strings, got {type(self.class_names).__name__}")
        object.__setattr__(self, "class_names", tuple(_check_class_name(c) for c in self.class_names))
        if not isinstance(self.arch, str) or not self.arch.isidentifier():
            raise ValueError(f"arch must be an identifier, got {str(self.arch)[:80]!r}")
        if not isinstance(self.arch_options, dict) or not all(isinstance(k, str) for k in self.arch_options):
            raise ValueError("arch_options must be a dict with string keys")
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

    def with_input(self, **changes: Any) -> "ModelMeta":
        """A copy whose input config has ``changes`` (e.g. ``grayscale=True``, ``channel_order="BGR"``);
        the one way metadata is amended (validated like a new one)."""
        return replace(self, input=replace(self.input, **changes))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelMeta":
        """Rebuild from ``to_dict()`` output; any malformed entry is a ``ValueError`` saying which."""
        if not isinstance(d, dict):
            raise ValueError(f"model metadata must be a dict, got {type(d).__name__}")
        missing = [k for k in ("arch", "num_classes", "class_names") if k not in d]
        if missing:
            raise ValueError(f"model metadata lacks {missing}")
        try:
            return cls(
                arch=d["arch"],
                num_classes=d["num_classes"],
                class_names=d["class_names"],
                input=InputConfig.from_dict(d.get("input", {})),
                arch_options=d.get("arch_options", {}),
                source=str(d.get("source", ""))[:1000],
                dataset=str(d.get("dataset", ""))[:100],
            )
        except (TypeError, OverflowError, RecursionError) as e:
            raise ValueError(f"malformed model metadata: {e}") from None


# ---------------------------------------------------------------------------------------------
# Metadata inside exported files (ONNX metadata_props, TorchScript extra files): written by
# poster.inference.export, read back by poster.inference.runtime.

META_KEY = "poster.meta"  # ModelMeta.to_dict() as JSON, in ONNX metadata_props / TorchScript extra files
TORCHSCRIPT_META_FILE = "poster_meta.json"
_MAX_META_CHARS = 1 << 20  # a real one is under 2 KB


def model_meta(model: Any, meta: ModelMeta | None = None) -> ModelMeta:
    """``meta``, else ``model.meta``, else a generic description (class_0.., RGB, 224) with a warning."""
    if meta is not None:
        return meta
    found = getattr(model, "meta", None)
    if isinstance(found, ModelMeta):
        return found
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        raise PosterError(f"{type(model).__name__} has no .meta and no .num_classes: pass meta=ModelMeta(...)")
    log.warning("the model has no .meta: the export records generic class names (class_0, ...) and "
                "RGB / ImageNet normalisation at 224 px")
    return ModelMeta(arch=type(model).__name__, num_classes=int(num_classes),
                     class_names=tuple(f"class_{i}" for i in range(int(num_classes))), input=InputConfig())


def meta_from_props(props: dict[str, str], where: str = "") -> ModelMeta:
    """``ModelMeta`` from ONNX metadata properties (``{key: value}``)."""
    text = props.get(META_KEY)
    if text is None:
        raise PosterError(f"{where}: no '{META_KEY}' metadata: this ONNX file was not written by poster export "
                          "(class names and preprocessing are unknown)")
    if len(text) > _MAX_META_CHARS:
        raise PosterError(f"{where}: '{META_KEY}' metadata of {len(text)} characters is not plausible")
    try:
        return ModelMeta.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
        raise PosterError(f"{where}: malformed '{META_KEY}' metadata: {str(e)[:300]}") from None
