"""The dataset layouts: one complete, declarative record per layout, and ``build_dataset`` by name.

Like the release records (``poster.checkpoint.releases``), a ``DatasetLayout`` is the single source of truth
for a layout: its name and aliases, its class order, the title of its plots, the function that
reads a root folder into records, and its splits.  ``DATASET_NAMES`` (the CLI's ``--dataset``
choices), ``DATASET_CLASSES`` (the class order a checkpoint of that dataset uses) and
``DATASET_TITLES`` are derived from ``LAYOUTS``, so a layout cannot be known to one command and
missing from another.  How to add one: docs/design.md#how-to-add-a-dataset-layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

from ..errors import DatasetError
from .labels import (AFFECTNET7_CLASSES, AFFECTNET8_CLASSES, CAERS_CLASSES, FER2013_CLASSES, FERPLUS_CLASSES,
                     RAFDB_CLASSES)

if TYPE_CHECKING:  # the readers load torch; see below
    from .datasets import ImageListDataset

__all__ = ["DatasetLayout", "ReadOptions", "LAYOUTS", "DATASET_NAMES", "DATASET_CLASSES", "DATASET_TITLES",
           "get_layout", "build_dataset"]


# The readers (poster.data.datasets, poster.data.ferplus) load torch and OpenCV; they are imported
# when a dataset is read, so that the command line can offer --dataset NAME without them.
Record = tuple[str, int]  # (image path, class index)


class ReadOptions(NamedTuple):
    """What ``build_dataset`` passes a layout's reader besides the root and the split."""

    # The class names asked for, else the layout's own: folder readers read exactly these class
    # folders, in this order (None: every folder, sorted); readers of label codes ignore them
    # (``build_dataset`` renames their classes instead).
    class_names: tuple[str, ...] | None
    check_files: bool  # label-file layouts: check that every listed image exists
    allow_empty_classes: bool  # folder layouts: keep classes without images
    origins: dict[str, str]  # label-file readers fill {image path: "<label file>, line N"}


# (root, split, options) -> (records, class names read from the data, or None: the layout's classes)
Reader = Callable[[Path, "str | None", ReadOptions], "tuple[list[Record], tuple[str, ...] | None]"]


@dataclass(frozen=True)
class DatasetLayout:
    """Everything needed to read one dataset layout and to name its classes."""

    name: str  # the --dataset name: lower case, letters and digits
    title: str  # confusion-matrix plot title (the original test scripts' where they had one)
    read: Reader
    classes: tuple[str, ...] | None  # fixed class order (model-output order); None: the sorted folder names
    splits: tuple[str, ...]  # the splits the reader knows (eval aliases fold onto them); (): any <root>/<split> folder
    aliases: tuple[str, ...] = ()  # other names build_dataset accepts (after lower-casing, '-' and '_' dropped)


def _read_rafdb(root: Path, split: str | None, opts: ReadOptions) -> tuple[list[Record], None]:
    from .datasets import rafdb_records

    return rafdb_records(root, split or "", opts.check_files, origins=opts.origins), None


def _read_affectnet(num_classes: int, root: Path, split: str | None, opts: ReadOptions) -> tuple[list[Record], None]:
    from .datasets import affectnet_records

    return affectnet_records(root, split or "", num_classes, opts.check_files, origins=opts.origins), None


def _read_folders(root: Path, split: str | None, opts: ReadOptions) -> tuple[list[Record], tuple[str, ...]]:
    from .datasets import folder_records

    return folder_records(root, split, opts.class_names, opts.allow_empty_classes)


def _read_ferplus(root: Path, split: str | None, opts: ReadOptions) -> tuple[list[Record], None]:
    from .ferplus import ferplus_records

    return ferplus_records(root, split or "train")[0], None


# In the order of the CLI's --dataset choices.
LAYOUTS: tuple[DatasetLayout, ...] = (
    DatasetLayout("rafdb", "RAF-DB", _read_rafdb, RAFDB_CLASSES, ("train", "test"), aliases=("raf",)),
    DatasetLayout("affectnet7", "AffectNet", partial(_read_affectnet, 7), AFFECTNET7_CLASSES, ("train", "valid"),
                  aliases=("affectnet",)),
    DatasetLayout("affectnet8", "AffectNet_8class", partial(_read_affectnet, 8), AFFECTNET8_CLASSES,
                  ("train", "valid")),
    DatasetLayout("folder", "folder", _read_folders, None, (), aliases=("imagefolder",)),
    DatasetLayout("fer2013", "FER2013", _read_folders, FER2013_CLASSES, ()),  # Kaggle's class folders
    DatasetLayout("ferplus", "FERPlus", _read_ferplus, FERPLUS_CLASSES, ("train", "val", "test")),
    DatasetLayout("caers", "CAER-S", _read_folders, CAERS_CLASSES, (), aliases=("caer",)),  # class folders
)

DATASET_NAMES: tuple[str, ...] = tuple(layout.name for layout in LAYOUTS)
DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    layout.name: layout.classes for layout in LAYOUTS if layout.classes is not None}
DATASET_TITLES: dict[str, str] = {layout.name: layout.title for layout in LAYOUTS}


def _key(name: str) -> str:
    return str(name).lower().replace("-", "").replace("_", "")


_BY_KEY: dict[str, DatasetLayout] = {_key(n): layout for layout in LAYOUTS for n in (layout.name, *layout.aliases)}


def get_layout(name: str) -> DatasetLayout:
    """The layout called ``name`` or one of its aliases (``RAF-DB``, ``raf``, ``affectnet_7`` ...)."""
    layout = _BY_KEY.get(_key(name))
    if layout is None:
        raise DatasetError(f"unknown dataset {name!r}; use one of {', '.join(DATASET_NAMES)}")
    return layout


def build_dataset(name: str, root: str | os.PathLike, split: str | None,
                  transform: Callable[[Any], Any] | None = None, channel_order: str | None = None,
                  class_names: Sequence[str] | None = None, check_files: bool = True,
                  allow_empty_classes: bool = False) -> "ImageListDataset":
    """Build a dataset by layout name (``LAYOUTS``; README "Supported models, datasets and files").

    ``class_names``: for folder layouts, the class folders to read, in order (default: the
    layout's classes, for ``folder`` the sorted folder names); for the label-code layouts
    (rafdb, affectnet, ferplus), new names for the layout's classes, as many as it has.
    ``check_files=False`` skips the per-image existence check of the label-file layouts (useful
    for huge sets on slow disks).  ``allow_empty_classes``: folder layouts accept classes without
    images or without their folder, for evaluating on data that lacks some classes (``poster
    test``).  ``channel_order``: see ``ImageListDataset``; note the released V1 RAF-DB weights
    expect BGR.
    """
    from .datasets import ImageListDataset

    layout = get_layout(name)
    asked = tuple(str(c) for c in class_names) if class_names is not None else None
    opts = ReadOptions(asked if asked is not None else layout.classes, check_files, allow_empty_classes, {})
    records, read_names = layout.read(Path(root), split, opts)
    if read_names is None:  # label codes: the layout's classes, renamed when names are given
        assert layout.classes is not None, f"layout {layout.name} reads label codes but has no classes"
        if asked is not None and len(asked) != len(layout.classes):
            raise DatasetError(f"{layout.name} has {len(layout.classes)} classes, {len(asked)} class names given")
        read_names = asked or layout.classes
    ds = ImageListDataset(records, read_names, transform=transform, channel_order=channel_order,
                          name=layout.name, root=root, split=split)
    ds.origins = opts.origins
    return ds
