"""Model registry: ``create_model(name, **options)`` is the single way to build a network.

Like timm's registry, an architecture is a named, typed, documented builder function
decorated with ``@register_model`` in the module that defines the network.  Its options
and their defaults are read from the function's signature and its description from the
first line of its docstring, so nothing is restated here.  The released weight sets are
listed in ``poster.pretrained``.

This module imports no network module (they import it); ``poster.models`` imports them
all, which is what fills the registry.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class ArchSpec:
    """One registered architecture: its name and builder; everything else is read from the builder."""

    name: str
    builder: Callable[..., nn.Module]

    @property
    def description(self) -> str:
        """The first paragraph of the builder's docstring, on one line."""
        doc = inspect.getdoc(self.builder) or ""
        return " ".join(doc.split("\n\n")[0].split())

    @property
    def defaults(self) -> dict[str, Any]:
        """Every option with its default value."""
        return {name: p.default for name, p in inspect.signature(self.builder).parameters.items()}

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options ``create_model`` accepts for this architecture."""
        return tuple(self.defaults)


_REGISTRY: dict[str, ArchSpec] = {}


def _check_builder(fn: Callable[..., nn.Module]) -> None:
    """A builder documents itself: a docstring, and typed keyword options that all have defaults."""
    name = fn.__name__
    if not inspect.getdoc(fn):
        raise TypeError(f"model builder {name} has no docstring (it is the model's description)")
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"model builder {name} takes *{p.name}; options must be named")
        if p.default is p.empty or p.annotation is p.empty:
            raise TypeError(f"model builder {name}: option {p.name} needs a type and a default")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its own name as a ``create_model`` architecture."""
    _check_builder(fn)
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _REGISTRY[fn.__name__] = ArchSpec(fn.__name__, fn)
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_arch(name: str) -> ArchSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


def create_model(name: str, **options: Any) -> nn.Module:
    """Build a freshly initialised model.  Unknown options are an error, not ignored."""
    spec = get_arch(name)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise TypeError(f"{name} does not take option(s) {sorted(unknown)}; it takes {list(spec.options)}")
    return spec.builder(**options)
