"""FERPlus: the FER2013 faces with the FER+ crowd votes (Barsoum et al., 2016).

Layout (what Microsoft's FERPlus ``generate_training_data.py`` writes)::

    <root>/FER2013Train/label.csv   <root>/FER2013Train/fer0000000.png ...
    <root>/FER2013Valid/label.csv   (the FER+ paper's validation split)
    <root>/FER2013Test/label.csv    (its test split)

Each ``label.csv`` row: ``<image>,<face box>,<10 vote counts>`` for neutral, happiness, surprise,
sadness, anger, disgust, fear, contempt, unknown, not-a-face.

Label = the FER+ "majority" rule: votes of 1 are discarded as noise, then the top emotion must
hold more than half of the remaining votes; rows whose winner is unknown / not-a-face, or with no
clear majority, are dropped (and counted).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .labels import FERPLUS_CLASSES  # the class table lives with the others

FERPLUS_SPLITS = {"train": "FER2013Train", "val": "FER2013Valid", "valid": "FER2013Valid",
                  "validation": "FER2013Valid", "test": "FER2013Test"}
_NUM_VOTES = 10  # 8 emotions + unknown + not-a-face


def majority_label(votes: "np.ndarray | list[int]") -> int | None:
    """The FER+ majority label of one row of 10 vote counts, or None when the row is dropped."""
    v = np.asarray(votes, dtype=np.int64).copy()
    v[v <= 1] = 0
    total = v.sum()
    if total == 0:
        return None
    top = int(np.argmax(v))
    if v[top] * 2 <= total or top >= len(FERPLUS_CLASSES):
        return None
    return top


def ferplus_records(root: str | os.PathLike, split: str) -> tuple[list[tuple[str, int]], int]:
    """(records, number of dropped rows) of one FER+ split."""
    folder_name = FERPLUS_SPLITS.get(split.lower())
    if folder_name is None:
        raise DatasetError(f"FERPlus has no split {split!r}; use train, val or test")
    folder = Path(root) / folder_name
    label_file = folder / "label.csv"
    if not label_file.is_file():
        raise DatasetError(f"FERPlus label file not found: {label_file}")
    try:
        return _parse_label_csv(label_file, folder)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{label_file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DatasetError(f"{label_file}: malformed CSV: {e}") from None


def _parse_label_csv(label_file: Path, folder: Path) -> tuple[list[tuple[str, int]], int]:
    records, dropped = [], 0
    with open(label_file, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 + _NUM_VOTES:
                raise DatasetError(f"{label_file}:{line_no}: expected image, box and {_NUM_VOTES} vote counts")
            try:
                votes = [int(x) for x in row[-_NUM_VOTES:]]
            except ValueError:
                raise DatasetError(f"{label_file}:{line_no}: vote counts must be integers: {row[-_NUM_VOTES:]}") from None
            label = majority_label(votes)
            if label is None:
                dropped += 1
                continue
            image = folder / row[0].strip()
            if not image.is_file():
                raise DatasetError(f"{label_file}:{line_no}: image {image} does not exist")
            records.append((str(image), label))
    if not records:
        raise DatasetError(f"{label_file}: no usable rows ({dropped} dropped by the majority rule)")
    return records, dropped
