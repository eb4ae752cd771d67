"""Model registry: ``create_model(name, **options)`` is the single way to build a network.

Like timm's registry, an architecture is a named, typed, documented builder function
decorated with ``@register_model`` in the module that defines the network.  Its options,
their types and their defaults are read from the function's signature and its description
from the first line of its docstring, so nothing is restated here.  The released weight sets
are listed in ``poster.checkpoint.releases``.

Each network module also registers its ``ModelFamily`` (as timm's family files keep
``default_cfgs`` and ``checkpoint_filter_fn`` beside the builders): what loading and
acceleration need to know about the family's networks and state dicts, so that no other
package hard-codes a family's key names or attributes.  A builder belongs to the family of
the class it returns.

This module imports no network module (they import it); ``poster.models`` imports them
all, which is what fills the registry.
"""

from __future__ import annotations

import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import ConfigError

# (arch, options with num_classes) of a state dict, or None when it is not the family's
StateDictMatcher = Callable[[Mapping[str, torch.Tensor]], "tuple[str, dict[str, Any]] | None"]


@dataclass(frozen=True)
class ModelFamily:
    """What code outside a network family needs to know about it, registered beside its builders."""

    name: str  # in messages: "POSTER V1"
    model_class: type[nn.Module]  # every network of the family is an instance of it
    head_key: str  # the classifier weight of its state dicts: its rows are the class count
    # (arch, options) of a prefix-free state dict of this family, None for another family's; raises
    # ConfigError when the keys are the family's but fit none of its architectures
    match_state_dict: StateDictMatcher
    # backbone file kind ("ir50", "landmark": the files training starts from) -> attribute of the model
    backbones: Mapping[str, str] = field(default_factory=dict)
    # True: the network reads only the even rows and columns of a 224 input (a nearest resize to 112),
    # so a caller may subsample such an input before moving it to the device
    reads_even_pixels_only: bool = False


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Register a family (before its builders: a builder's family is checked at registration)."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} registered twice")
    _FAMILIES[family.name] = family
    return family


def list_families() -> list[ModelFamily]:
    return list(_FAMILIES.values())


def family_of(model: nn.Module) -> ModelFamily | None:
    """The registered family of a network, None for any other module."""
    return next((f for f in _FAMILIES.values() if isinstance(model, f.model_class)), None)


def _family_of_class(cls: Any) -> ModelFamily | None:
    return next((f for f in _FAMILIES.values() if isinstance(cls, type) and issubclass(cls, f.model_class)), None)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def checked_value(name: str, value: Any, hint: Any) -> Any:
    """``value`` as an option of type ``hint`` takes it (ints as floats, lists as tuples, as JSON
    gives them back), or ConfigError; TypeError for a type this check does not know."""
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={str(value)[:40]!r} is not a list")
        args = typing.get_args(hint)
        kinds = args[:1] * len(value) if args[1:] == (Ellipsis,) else args
        if len(value) != len(kinds):
            raise ConfigError(f"{name} must have {len(kinds)} values, got {len(value)}")
        return tuple(checked_value(name, v, h) for v, h in zip(value, kinds))
    if hint not in (bool, int, float, str):
        raise TypeError(f"option {name}: type {hint} cannot be checked (bool, int, float, str or tuples of them)")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    fits = {bool: isinstance(value, bool), int: number and isinstance(value, int),
            float: number and math.isfinite(value), str: isinstance(value, str)}[hint]
    if not fits:
        raise ConfigError(f"{name}={str(value)[:40]!r} is not a {_type_name(hint)}")
    return float(value) if hint is float else value


@dataclass(frozen=True)
class ArchSpec:
    """One registered architecture: its name, builder and family; everything else is read from the builder."""

    name: str
    builder: Callable[..., nn.Module]
    family: ModelFamily  # of the class the builder returns

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

    @property
    def option_types(self) -> dict[str, Any]:
        """Every option with its annotated type."""
        hints = typing.get_type_hints(self.builder)
        return {name: hints[name] for name in self.options}

    def checked_option(self, name: str, value: Any) -> Any:
        """``value`` as option ``name`` of this architecture takes it (ConfigError if unknown or mistyped)."""
        if name not in self.options:
            raise ConfigError(f"{self.name} has no option {name!r}")
        return checked_value(name, value, self.option_types[name])


_REGISTRY: dict[str, ArchSpec] = {}


def _check_builder(fn: Callable[..., nn.Module]) -> ModelFamily:
    """A builder documents itself: a docstring, and typed keyword options that all have defaults;
    it returns a class of a registered family (which is returned)."""
    name = fn.__name__
    if not inspect.getdoc(fn):
        raise TypeError(f"model builder {name} has no docstring (it is the model's description)")
    params = inspect.signature(fn).parameters.values()
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"model builder {name} takes *{p.name}; options must be named")
        if p.default is p.empty or p.annotation is p.empty:
            raise TypeError(f"model builder {name}: option {p.name} needs a type and a default")
    hints = typing.get_type_hints(fn)
    for p in params:
        try:  # the default passes its own type's check, so every option can be checked when loaded
            checked_value(p.name, p.default, hints[p.name])
        except ConfigError:
            raise TypeError(f"model builder {name}: the default of {p.name} is not a {hints[p.name]}") from None
    family = _family_of_class(hints.get("return"))
    if family is None:
        raise TypeError(f"model builder {name} returns {hints.get('return')}, which is no registered model family "
                        "(annotate the return type; register_family first)")
    return family


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its own name as a ``create_model`` architecture."""
    family = _check_builder(fn)
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _REGISTRY[fn.__name__] = ArchSpec(fn.__name__, fn, family)
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
