"""Training recipes: the hyper-parameters of the original POSTER / POSTER V2 runs (docs/faithfulness.md#training).

A :class:`Recipe` is a frozen dataclass; :func:`get_recipe` returns a copy from the registry
and ``recipe.replace(**overrides)`` / :meth:`Recipe.with_overrides` make variants, parsing and
type-checking ``"key=value"`` strings from the command line.

All recipes use SAM(Adam) with rho 0.05, betas (0.9, 0.999), eps 1e-8, no weight decay, and
ExponentialLR(gamma) stepped once per epoch.

Presets from the reference code:

* ``v1_rafdb``: V1 ``train.py``: poster_v1_large with token mixing, **BGR**, lr 4e-5, batch 200,
  300 epochs, CE + 2 LSCE, flip-or-noise, hflip 0.5, erasing 0.5 x (0.02, 0.1), shuffle,
  val batch 32, 2 workers, seed 123.
* ``v1_affectnet7`` / ``v1_affectnet8``: V1 ``train_affect.py``: no token mixing, RGB, lr 2e-6,
  class-balanced sampler, otherwise as ``v1_rafdb``.
* ``v2_rafdb``: V2 ``main.py``: poster_v2, RGB, CE, lr 3.5e-5, batch 144 (val 144), 200 epochs,
  hflip 0.5, erasing 0.5 x (0.02, 0.1), shuffle, 4 workers.
* ``v2_affectnet7``: lr 1e-6, erasing 1.0 x (0.05, 0.05), balanced.
* ``v2_affectnet8``: ``main_8.py`` default lr 1e-6, erasing 1.0 x (0.05, 0.05), balanced.
* ``v2_caers``: lr 4e-5, erasing 1.0 x (0.05, 0.05), shuffle.
  The V2 scripts fix no seed; our V2 recipes use seed 123 like V1.

Our own defaults (no reference run exists):

* ``fer2013``, ``ferplus``, ``folder``: poster_v2 (the stronger, lighter model), RGB, plain CE
  (the V2 loss), lr 3.5e-5 (V2 RAF-DB), batch 64 (val 128), 40 epochs, hflip 0.5,
  erasing 0.5 x (0.02, 0.1), shuffle, 4 workers, seed 123.  FER2013 / FERPlus images are
  48x48 grey faces; the loader is expected to replicate them to 3 channels and resize to 224.
* ``fer2013_small``: CPU-sized training of the compact ``poster_v1_tiny`` (no token mixing), RGB,
  CE + 2 LSCE, lr 3e-4 decaying 0.95 per epoch, batch 32, 10 epochs, no loader workers,
  erasing 0.5 x (0.02, 0.1).
* ``fer2013_default``: the recipe of the bundled default model (docs/results.md): ``poster_v1_tiny``,
  plain Adam (``sam_rho=0``: SAM's second pass would double the CPU time), lr 5e-4 decaying 0.7 per
  epoch, batch 64, 6 epochs, CE + 2 LSCE; meant for ``--precision bf16 --cache memory`` on a CPU.

Worker counts and validation batch sizes above are the recipes' suggested run options
(``run_defaults``), not recipe fields: ``TrainOptions.workers`` / ``eval_batch_size`` set them.

The FER2013/FERPlus recipes set ``grayscale``: the weights record that they were trained on grey
faces, and prediction turns colour faces grey before the transform.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from poster.errors import RecipeError
from poster.meta import InputConfig

__all__ = ["Recipe", "RecipeError", "RECIPES", "RunDefaults", "get_recipe", "list_recipes", "parse_overrides",
           "run_defaults"]

_CHOICES = {
    "optimizer": ("adam",),
    "loss": ("ce", "ce+2lsce"),
    "sampler": ("shuffle", "balanced"),
    "channel_order": ("RGB", "BGR"),
}


@dataclass(frozen=True)
class Recipe:
    name: str
    arch: str
    dataset: str
    epochs: int
    batch_size: int
    lr: float
    arch_options: dict[str, Any] = field(default_factory=dict)
    lr_gamma: float = 0.98  # ExponentialLR, stepped once per epoch
    optimizer: str = "adam"  # base optimizer inside SAM
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    sam_rho: float = 0.05
    sam_adaptive: bool = False
    loss: str = "ce"
    # augmentation (poster.train.augment)
    flip_or_noise: bool = False
    hflip_p: float = 0.5
    erasing_p: float = 0.5
    erasing_scale: tuple[float, float] = (0.02, 0.1)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)
    sampler: str = "shuffle"
    channel_order: str = "RGB"
    input_size: int = 224
    grayscale: bool = False  # recorded with the weights: predict turns colour faces grey (grey datasets)
    seed: int = 123

    def __post_init__(self) -> None:
        hints = _hints()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _check_type(f.name, value, hints[f.name]))
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise RecipeError(f"recipe {self.name!r}: {name} must be one of {choices}, got {getattr(self, name)!r}")
        positive = ("epochs", "batch_size", "input_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise RecipeError(f"recipe {self.name!r}: {name} must be > 0, got {getattr(self, name)}")
        if not self.lr > 0 or not self.lr_gamma > 0 or self.sam_rho < 0 or self.weight_decay < 0 or self.eps < 0:
            raise RecipeError(f"recipe {self.name!r}: lr, lr_gamma must be > 0; sam_rho, weight_decay, eps >= 0")
        for name in ("hflip_p", "erasing_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RecipeError(f"recipe {self.name!r}: {name} must be in [0, 1]")
        lo, hi = self.erasing_scale
        if not 0.0 <= lo <= hi <= 1.0:
            raise RecipeError(f"recipe {self.name!r}: erasing_scale must satisfy 0 <= min <= max <= 1")
        lo, hi = self.erasing_ratio
        if not 0.0 < lo <= hi:
            raise RecipeError(f"recipe {self.name!r}: erasing_ratio must satisfy 0 < min <= max")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise RecipeError(f"recipe {self.name!r}: betas must be in [0, 1)")

    # ------------------------------------------------------------------ variants
    def replace(self, **overrides: Any) -> "Recipe":
        """A copy with fields changed.  Values may be typed or strings (parsed as on the CLI);
        ``arch_options`` may be given as a dict (merged into the current options) and a key
        ``"arch_options.NAME"`` sets one option."""
        names = {f.name for f in dataclasses.fields(self)}
        options = dict(self.arch_options)
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            if key.startswith("arch_options."):
                opt = key[len("arch_options."):]
                if not opt:
                    raise RecipeError("empty arch option name in override 'arch_options.'")
                options[opt] = _parse_literal(value) if isinstance(value, str) else value
                continue
            if key in RUN_KNOBS:
                raise RecipeError(f"{key} is a run option, not a recipe field: set TrainOptions.{RUN_KNOBS[key]}")
            if key not in names:
                raise RecipeError(f"unknown recipe field {key!r}; fields: {', '.join(sorted(names))}")
            if key == "arch_options":
                if isinstance(value, str):
                    value = _parse_literal(value)
                if not isinstance(value, Mapping):
                    raise RecipeError(f"arch_options must be a mapping, got {value!r}")
                options.update(value)
                continue
            changes[key] = _parse_value(key, value) if isinstance(value, str) else value
        changes["arch_options"] = options
        return dataclasses.replace(self, **changes)

    def with_overrides(self, items: Iterable[str]) -> "Recipe":
        """Apply CLI overrides ``["lr=1e-4", "erasing_scale=0.02,0.2", "arch_options.token_mixing=false"]``."""
        return self.replace(**parse_overrides(items))

    # ------------------------------------------------------------------ helpers
    def input_config(self) -> InputConfig:
        """Evaluation input transform of models trained with this recipe."""
        return InputConfig(input_size=self.input_size, channel_order=self.channel_order, grayscale=self.grayscale)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("betas", "erasing_scale", "erasing_ratio"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in RUN_KNOBS}  # recipes saved before the knobs moved out
        unknown = set(d) - names
        if unknown:
            raise RecipeError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


# ---------------------------------------------------------------------- type checking / parsing
_HINTS: dict[str, Any] | None = None


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(Recipe)
    return _HINTS


def _check_type(name: str, value: Any, hint: Any) -> Any:
    """Validate (and lightly coerce: int -> float, list -> tuple) a typed value."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{name} must be a bool, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{name} must be an int, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{name} must be a string, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (tuple, list)) or len(value) != len(args):
            raise RecipeError(f"{name} must be {len(args)} numbers, got {value!r}")
        return tuple(_check_type(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise RecipeError(f"{name} must be a dict with string keys, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported recipe field type {hint!r}")  # pragma: no cover


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse_literal(text: str) -> Any:
    """JSON / Python literal, true/false/none in any case, else the string itself."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(t)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return t


def _parse_value(name: str, text: str) -> Any:
    hint = _hints()[name]
    t = text.strip()
    try:
        if hint is bool:
            low = t.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if hint is int:
            return int(t)
        if hint is float:
            return float(t)
        if hint is str:
            return t
        if typing.get_origin(hint) is tuple:
            parts = [s for s in t.strip("()[] ").split(",")]
            args = typing.get_args(hint)
            if len(parts) != len(args):
                raise ValueError
            return tuple(a(s.strip()) for a, s in zip(args, parts))
        if typing.get_origin(hint) is dict:
            v = _parse_literal(t)
            if not isinstance(v, dict):
                raise ValueError
            return v
    except ValueError:
        raise RecipeError(f"cannot parse {name}={text!r} as {_type_name(hint)}") from None
    raise TypeError(f"unsupported recipe field type {hint!r}")  # pragma: no cover


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return f"{len(typing.get_args(hint))} comma-separated numbers"
    if typing.get_origin(hint) is dict:
        return "a JSON object"
    return getattr(hint, "__name__", str(hint))


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["lr=1e-4", "epochs=5"]`` -> ``{"lr": "1e-4", "epochs": "5"}`` (values parsed by ``replace``)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"override {item!r} is not of the form key=value")
        out[key] = value
    return out


# ---------------------------------------------------------------------- registry
def _v1(name: str, dataset: str, **kw: Any) -> Recipe:
    base: dict[str, Any] = dict(
        arch="poster_v1_large", epochs=300, batch_size=200, lr=4e-5, lr_gamma=0.98, loss="ce+2lsce",
        flip_or_noise=True, hflip_p=0.5, erasing_p=0.5, erasing_scale=(0.02, 0.1), sampler="shuffle",
        channel_order="RGB", seed=123,
    )
    base.update(kw)
    return Recipe(name=name, dataset=dataset, **base)


def _v2(name: str, dataset: str, **kw: Any) -> Recipe:
    base: dict[str, Any] = dict(
        arch="poster_v2", epochs=200, batch_size=144, lr=3.5e-5, lr_gamma=0.98, loss="ce",
        flip_or_noise=False, hflip_p=0.5, erasing_p=0.5, erasing_scale=(0.02, 0.1), sampler="shuffle",
        channel_order="RGB", seed=123,
    )
    base.update(kw)
    return Recipe(name=name, dataset=dataset, **base)


def _own(name: str, dataset: str, **kw: Any) -> Recipe:
    base: dict[str, Any] = dict(epochs=40, batch_size=64, lr=3.5e-5)
    base.update(kw)
    return _v2(name, dataset, **base)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        _v1("v1_rafdb", "rafdb", arch_options={"token_mixing": True}, channel_order="BGR"),
        _v1("v1_affectnet7", "affectnet7", arch_options={"token_mixing": False}, lr=2e-6, sampler="balanced"),
        _v1("v1_affectnet8", "affectnet8", arch_options={"token_mixing": False}, lr=2e-6, sampler="balanced"),
        _v2("v2_rafdb", "rafdb"),
        _v2("v2_affectnet7", "affectnet7", lr=1e-6, erasing_p=1.0, erasing_scale=(0.05, 0.05), sampler="balanced"),
        _v2("v2_affectnet8", "affectnet8", lr=1e-6, erasing_p=1.0, erasing_scale=(0.05, 0.05), sampler="balanced"),
        _v2("v2_caers", "caers", lr=4e-5, erasing_p=1.0, erasing_scale=(0.05, 0.05)),
        _own("fer2013", "fer2013", grayscale=True),
        _own("ferplus", "ferplus", grayscale=True),
        _own("folder", "folder"),
        _own(
            "fer2013_small", "fer2013", arch="poster_v1_tiny", arch_options={"token_mixing": False},
            loss="ce+2lsce", lr=3e-4, lr_gamma=0.95, epochs=10, batch_size=32, grayscale=True,
        ),
        _own(
            "fer2013_default", "fer2013", arch="poster_v1_tiny", arch_options={"token_mixing": False},
            loss="ce+2lsce", lr=5e-4, lr_gamma=0.7, epochs=6, batch_size=64, sam_rho=0.0,
            grayscale=True,
        ),
    )
}


# ---------------------------------------------------------------------- run defaults
# Loader settings are run options (``TrainOptions.workers`` / ``eval_batch_size``), not
# hyper-parameters: they change speed, not the trained weights.  A recipe suggests them (the
# original scripts' values for the published recipes); the run's options override them.
RUN_KNOBS = {"workers": "workers", "val_batch_size": "eval_batch_size"}  # old recipe field -> TrainOptions


@dataclass(frozen=True)
class RunDefaults:
    workers: int = 4
    eval_batch_size: int = 32


_V1_RUN, _V2_RUN, _OWN_RUN = RunDefaults(2, 32), RunDefaults(4, 144), RunDefaults(4, 128)
RUN_DEFAULTS: dict[str, RunDefaults] = {
    **{name: _V1_RUN for name in ("v1_rafdb", "v1_affectnet7", "v1_affectnet8")},
    **{name: _V2_RUN for name in ("v2_rafdb", "v2_affectnet7", "v2_affectnet8", "v2_caers")},
    **{name: _OWN_RUN for name in ("fer2013", "ferplus", "folder")},
    "fer2013_small": RunDefaults(0, 64),
    "fer2013_default": RunDefaults(0, 128),
}


def run_defaults(name: str) -> RunDefaults:
    """The loader settings recipe ``name`` suggests (``RunDefaults()`` for a name not registered)."""
    return RUN_DEFAULTS.get(name, RunDefaults())


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str, overrides: Iterable[str] | Mapping[str, Any] | None = None) -> Recipe:
    """A copy of the registered recipe ``name``, optionally with overrides
    (``"key=value"`` strings or a mapping)."""
    try:
        recipe = copy.deepcopy(RECIPES[name])
    except KeyError:
        raise RecipeError(f"unknown recipe {name!r}; available: {', '.join(list_recipes())}") from None
    if overrides is None:
        return recipe
    if isinstance(overrides, Mapping):
        return recipe.replace(**overrides)
    return recipe.with_overrides(overrides)
