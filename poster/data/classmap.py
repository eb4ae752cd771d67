"""Which model class each dataset class is: matching by name, with synonyms and an explicit map.

Datasets and checkpoints name the same expressions differently (RAF-DB "Anger", FER2013 "angry",
CK+ "anger"), order them differently, and some datasets lack classes (CK+ has no neutral, and
AffectNet-8's contempt is missing elsewhere).  Scoring by index order would silently compare
different expressions, so ``poster test`` maps the dataset's classes to the model's by name:

* names are compared after ``canonical_class_name``: lower case, letters and digits only, and the
  synonyms of ``SYNONYMS`` folded together (anger/angry, happiness/happy, sadness/sad, ...);
* an explicit map (``--class-map ds=model,...`` or a JSON object ``{"ds": "model"}``) settles
  the rest; mapping a dataset class to nothing (``contempt=``) leaves its images out;
* model classes that no dataset class maps to have no examples: they are reported, and the
  per-class results are those of the classes present.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import DatasetError, flag_words, option

__all__ = ["SYNONYMS", "ClassMapping", "canonical_class_name", "map_classes", "parse_class_map"]

# canonical name -> the other spellings datasets use for it
SYNONYMS: dict[str, tuple[str, ...]] = {
    "anger": ("angry",),
    "happiness": ("happy", "joy"),
    "sadness": ("sad",),
    "surprise": ("surprised",),
    "fear": ("fearful", "afraid", "scared"),
    "disgust": ("disgusted",),
    "neutral": ("neutrality",),
    "contempt": ("contemptuous",),
}
_CANONICAL = {alias: name for name, aliases in SYNONYMS.items() for alias in (name, *aliases)}

EXCLUDED = -1  # ``ClassMapping.to_model`` value of a dataset class whose images are left out


def _plain(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def canonical_class_name(name: str) -> str:
    """``"Happiness"``, ``"happy"`` and ``"HAPPY "`` all give ``"happiness"``; unknown names come
    back lower-cased with only their letters and digits."""
    plain = _plain(name)
    return _CANONICAL.get(plain, plain)


@dataclass(frozen=True)
class ClassMapping:
    """``to_model[i]``: the model class index of dataset class ``i`` (``EXCLUDED``: left out)."""

    dataset_classes: tuple[str, ...]
    model_classes: tuple[str, ...]
    to_model: tuple[int, ...]
    by_index: bool = False  # no name matched: the legacy index-order fallback

    @property
    def identity(self) -> bool:
        return self.to_model == tuple(range(len(self.model_classes)))

    @property
    def excluded(self) -> tuple[str, ...]:
        """Dataset classes whose images are left out."""
        return tuple(d for d, m in zip(self.dataset_classes, self.to_model) if m == EXCLUDED)

    @property
    def unmapped_model_classes(self) -> tuple[str, ...]:
        """Model classes that no dataset class maps to (they can have no examples)."""
        used = set(self.to_model)
        return tuple(name for i, name in enumerate(self.model_classes) if i not in used)

    def map_targets(self, targets: Sequence[int] | np.ndarray) -> np.ndarray:
        """Dataset class indices -> model class indices (``EXCLUDED`` for left-out classes)."""
        return np.asarray(self.to_model, dtype=np.int64)[np.asarray(targets, dtype=np.int64)]

    def to_dict(self) -> dict[str, str | None]:
        """``{dataset class: model class or None}`` for reports."""
        return {d: (self.model_classes[m] if m != EXCLUDED else None)
                for d, m in zip(self.dataset_classes, self.to_model)}


def _find(name: str, names: Sequence[str], what: str, flag_hint: str) -> int:
    """Index of ``name`` in ``names``: exact first, then by canonical name."""
    if name in names:
        return list(names).index(name)
    canon = canonical_class_name(name)
    found = [i for i, n in enumerate(names) if canonical_class_name(n) == canon]
    if len(found) != 1:
        raise DatasetError(f"{flag_hint}: {name!r} is not one of the {what} classes {list(names)}")
    return found[0]


def map_classes(dataset_classes: Sequence[str], model_classes: Sequence[str],
                explicit: Mapping[str, str | None] | None = None) -> ClassMapping:
    """Map every dataset class to a model class by name (see the module docstring).

    ``explicit``: ``{dataset class: model class}``, both matched exactly or by canonical name; a
    value of ``None`` or ``""`` leaves that dataset class out.  A dataset class that matches no
    model class is a ``DatasetError`` naming it and the mapping that fixes it, except when
    no name matches at all and the class counts are equal (e.g. folders named 0..6): then the
    classes are taken in index order and ``by_index`` is set, so the caller can warn.
    """
    ds, mc = tuple(map(str, dataset_classes)), tuple(map(str, model_classes))
    chosen: dict[int, int] = {}
    for key, value in (explicit or {}).items():
        i = _find(str(key), ds, "dataset", option("class_map", python="explicit"))
        chosen[i] = EXCLUDED if value in (None, "") else _find(str(value), mc, "model",
                                                               option("class_map", python="explicit"))
    model_by_name: dict[str, list[int]] = {}
    for j, name in enumerate(mc):
        model_by_name.setdefault(canonical_class_name(name), []).append(j)
    unmatched = []
    for i, name in enumerate(ds):
        if i in chosen:
            continue
        hits = model_by_name.get(canonical_class_name(name), [])
        if len(hits) == 1:
            chosen[i] = hits[0]
        else:
            unmatched.append(name)
    if unmatched and not explicit and len(unmatched) == len(ds) == len(mc):
        return ClassMapping(ds, mc, tuple(range(len(ds))), by_index=True)
    if unmatched:
        example = option("class_map", ",".join(f"{n}=<model class>" for n in unmatched[:2]),
                         python="explicit={" + ", ".join(f"{n!r}: '<model class>'" for n in unmatched[:2]) + "}")
        leave_out = f"{unmatched[0]}=" if flag_words() else f"{unmatched[0]!r}: None"
        raise DatasetError(f"dataset class(es) {unmatched} match no class of the model {list(mc)} by name; "
                           f"say which they are with {example} (or {leave_out} to leave them out)")
    to_model = tuple(chosen[i] for i in range(len(ds)))
    if all(m == EXCLUDED for m in to_model):
        raise DatasetError(f"{option('class_map', python='explicit')} leaves every dataset class out: nothing to evaluate")
    return ClassMapping(ds, mc, to_model)


def parse_class_map(text: str | None) -> dict[str, str | None]:
    """``"anger=Anger,happy=Happiness"`` or the path of a JSON file holding ``{"anger": "Anger"}``
    -> a dict; ``ds=`` (empty) maps to ``None`` (leave that class out)."""
    if text is None or not str(text).strip():
        return {}
    text = str(text).strip()
    if text.lower().endswith(".json") or (Path(text).is_file() and "=" not in text):
        return _read_json_map(Path(text))
    out: dict[str, str | None] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise DatasetError(f"{option('class_map')}: {item.strip()!r} is not DATASET_CLASS=MODEL_CLASS "
                               "(e.g. anger=Anger,happy=Happiness, or a JSON file)")
        ds, model = (part.strip() for part in item.split("=", 1))
        if not ds:
            raise DatasetError(f"{option('class_map')}: {item.strip()!r} names no dataset class")
        out[ds] = model or None
    return out


def _read_json_map(path: Path) -> dict[str, str | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{option('class_map')} file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{option('class_map')} file {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                             for k, v in data.items()):
        raise DatasetError(f"{option('class_map')} file {path} must hold one JSON object "
                           '{"dataset class": "model class" or null}')
    return {k: (v or None) for k, v in data.items()}
