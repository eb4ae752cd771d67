"""Tiny stand-in trees, one per registered dataset layout (``poster.data.LAYOUTS``).

A stand-in holds every split its layout knows (``FOLDER_SPLITS`` for the folder layouts, which
take any split folder) with one image per class, listed in class order, so every split's targets
are ``0 .. n-1``.  tests/test_datasets.py fails for a registered layout that has none here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from poster.data import get_layout

FOLDER_CLASSES = ("calm", "joy")  # the ``folder`` layout's classes come from the tree
FOLDER_SPLITS = ("train", "test")  # the splits written for layouts without fixed ones


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((48, 48, 3), value, np.uint8)
    img[:, :, 1] = np.arange(48, dtype=np.uint8)[None, :] * 5  # not flat: a real image to decode
    assert cv2.imwrite(str(path), img)


def _rafdb(root: Path, classes: tuple[str, ...]) -> None:
    lines = []
    for split in ("train", "test"):
        for i in range(len(classes)):
            _image(root / "Image" / "aligned" / f"{split}_{i:05d}_aligned.jpg", 20 * i)
            lines.append(f"{split}_{i:05d}.jpg {i + 1}\n")  # RAF-DB counts from 1
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(lines))


def _affectnet(root: Path, classes: tuple[str, ...]) -> None:
    for split in ("train", "valid"):
        folder = root / f"{split}_set"
        for i in range(len(classes)):
            _image(folder / "images" / f"{split}{i}.jpg", 20 * i)
        (folder / f"{split}_annotations_{len(classes)}class.txt").write_text(
            "".join(f"{split}{i}.jpg {i}\n" for i in range(len(classes))))


def _folders(root: Path, classes: tuple[str, ...]) -> None:
    for split in FOLDER_SPLITS:
        for i, name in enumerate(classes):
            _image(root / split / name / "0.png", 20 * i)


def _ferplus(root: Path, classes: tuple[str, ...]) -> None:
    for folder in ("FER2013Train", "FER2013Valid", "FER2013Test"):
        rows = []
        for i in range(len(classes)):
            _image(root / folder / f"fer{i:07d}.png", 20 * i)
            votes = ["10" if j == i else "0" for j in range(10)]  # a clear FER+ majority for class i
            rows.append(f'fer{i:07d}.png,"(0, 0, 48, 48)",{",".join(votes)}\r\n')
        (root / folder / "label.csv").write_text("".join(rows))


STAND_INS: dict[str, Callable[[Path, tuple[str, ...]], None]] = {
    "rafdb": _rafdb, "affectnet7": _affectnet, "affectnet8": _affectnet, "folder": _folders,
    "fer2013": _folders, "ferplus": _ferplus, "caers": _folders,
}


def write_stand_in(name: str, root: Path) -> tuple[str, ...]:
    """Write layout ``name``'s stand-in under ``root``; returns the class names it holds."""
    classes = get_layout(name).classes or FOLDER_CLASSES
    STAND_INS[name](root, classes)
    return classes
