"""Model registry: ``create_model(name, **options)`` is the single way to build a network.

Names are architectures (``poster_v1_large``, ``poster_v2``, ...).  Each entry also
knows its defaults (class count, channel order), like timm's pretrained configs; the
released weight sets are listed in ``poster.pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from .poster_v1 import DEPTHS, PosterV1
from .poster_v2 import PosterV2


@dataclass(frozen=True)
class ArchSpec:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    options: tuple[str, ...] = ()


_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _v1_builder(depth: int) -> Callable[..., nn.Module]:
    def build(num_classes: int = 7, token_mixing: bool = True, drop_path_rate: float = 0.1) -> nn.Module:
        return PosterV1(num_classes=num_classes, depth=depth, token_mixing=token_mixing,
                        drop_path_rate=drop_path_rate)

    return build


for _size, _depth in DEPTHS.items():
    register(ArchSpec(
        name=f"poster_v1_{_size}",
        builder=_v1_builder(_depth),
        description=f"POSTER V1 {_size} ({_depth} pyramid blocks); token_mixing=True is the RAF-DB release, "
                    "False the AffectNet release",
        defaults={"num_classes": 7, "token_mixing": True},
        options=("num_classes", "token_mixing", "drop_path_rate"),
    ))

def _build_v1_tiny(num_classes: int = 7, token_mixing: bool = False, drop_path_rate: float = 0.0) -> nn.Module:
    return PosterV1(num_classes=num_classes, depth=1, token_mixing=token_mixing, drop_path_rate=drop_path_rate,
                    ir_units=(1, 2, 2), ir_widths=(32, 64, 128), keep_dead_layers=False)


register(ArchSpec(
    name="poster_v1_tiny",
    builder=_build_v1_tiny,
    description="compact POSTER V1 (1 pyramid block, IR trunk units (1,2,2) widths (32,64,128), no dead "
                "layers; ~7M parameters) for CPU training and the bundled default model",
    defaults={"num_classes": 7, "token_mixing": False},
    options=("num_classes", "token_mixing", "drop_path_rate"),
))

register(ArchSpec(
    name="poster_v2",
    builder=lambda num_classes=7: PosterV2(num_classes=num_classes),
    description="POSTER V2 / POSTER++ (7 or 8 classes)",
    defaults={"num_classes": 7},
    options=("num_classes",),
))


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_arch(name: str) -> ArchSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


def create_model(name: str, **options: Any) -> nn.Module:
    """Build a freshly initialised model.  Unknown options are an error, not ignored."""
    spec = get_arch(name)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise TypeError(f"{name} does not take option(s) {sorted(unknown)}; it takes {list(spec.options)}")
    return spec.builder(**{**spec.defaults, **options})
