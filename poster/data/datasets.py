"""Datasets in the layouts POSTER was trained on, plus plain class folders
(docs/faithfulness.md#datasets-and-label-orders).

One module for every layout because they share the label-file parser, the path-safety checks and
the error reporting; each layout's reader is a short function of its own.

Everything is parsed eagerly when a dataset is built, so a wrong root, a malformed label file or
a missing image is reported at once (as ``DatasetError`` naming the file and, for label files,
the line) instead of halfway through an epoch.  Parsing is kept apart from image loading:

* ``parse_label_file`` reads ``<file> <label>`` lines (RAF-DB, AffectNet) into ``LabelLine``s;
* ``rafdb_records`` / ``affectnet_records`` / ``folder_records`` turn a dataset root into
  ``(path, label)`` records and class names;
* ``ImageListDataset`` loads and transforms the images of a record list;
* ``poster.data.layouts`` names each layout, with its reader and classes, and ``build_dataset``
  ties the three together.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from torch.utils.data import Dataset

from ..errors import DatasetError, option
from ..meta import check_channel_order
from .labels import RAFDB_CLASSES
from .transforms import CHANNEL_ORDERS, IMAGE_EXTENSIONS, load_image

__all__ = [
    "LabelLine",
    "parse_label_file",
    "parse_label_text",
    "rafdb_records",
    "affectnet_records",
    "folder_records",
    "ImageListDataset",
    "check_images",
]

RAFDB_LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"  # (sic) the official spelling
RAFDB_IMAGE_DIR = Path("Image") / "aligned"

# Requested split -> canonical split.  The "valid" set of AffectNet is its test set, and RAF-DB's
# test set is what the reference code validates on, so the usual names all map there.
_EVAL_SPLITS = ("val", "valid", "validation", "test")

_INT_RE = re.compile(r"[+-]?[0-9]+")


class LabelLine(NamedTuple):
    """One parsed ``<file> <label>`` line: the file name as written, the label and the 1-based line number."""

    name: str
    label: int
    line_no: int


Record = tuple[str, int]


# --------------------------------------------------------------------------------------------
# label files
# --------------------------------------------------------------------------------------------

def parse_label_text(text: str, source: str = "<text>", *, num_classes: int | None = None,
                     label_offset: int = 0) -> list[LabelLine]:
    """Parse ``<file> <label>`` lines.

    * Blank lines (and surrounding whitespace, Windows ``\\r\\n`` endings, a UTF-8 BOM) are ignored.
    * The label is the LAST whitespace-separated field, so file names may contain spaces.
    * The label must be a base-10 integer.  The stored label is ``file label - label_offset``
      (RAF-DB files count from 1) and must lie in ``[0, num_classes)`` when ``num_classes`` is given.
    * The same file listed twice is an error.

    Errors raise ``DatasetError`` naming ``source`` and the line number.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    out: list[LabelLine] = []
    seen: dict[str, int] = {}
    for line_no, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise DatasetError(f"{source}, line {line_no}: expected '<file> <label>', got {line[:200]!r}")
        name, tok = parts[0].strip(), parts[1]
        if not _INT_RE.fullmatch(tok):
            raise DatasetError(f"{source}, line {line_no}: label {tok[:40]!r} is not an integer "
                               f"(line {line[:200]!r})")
        if len(tok) > 30:  # int() of huge digit strings is slow or refused; no class index is that long
            raise DatasetError(f"{source}, line {line_no}: label {tok[:40]}... is out of range")
        label = int(tok) - label_offset
        if num_classes is not None and not 0 <= label < num_classes:
            lo, hi = label_offset, label_offset + num_classes - 1
            raise DatasetError(f"{source}, line {line_no}: label {tok} is out of range {lo}..{hi} "
                               f"for {num_classes} classes (line {line[:200]!r})")
        if name in seen:
            raise DatasetError(f"{source}, line {line_no}: {name!r} is listed twice "
                               f"(first on line {seen[name]})")
        seen[name] = line_no
        out.append(LabelLine(name, label, line_no))
    return out


def parse_label_file(path: str | os.PathLike, *, num_classes: int | None = None,
                     label_offset: int = 0) -> list[LabelLine]:
    """Read and parse a ``<file> <label>`` label file (see ``parse_label_text``)."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"label file not found: {p}")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = data.count(b"\n", 0, exc.start) + 1
        raise DatasetError(f"{p}, line {line_no}: not valid UTF-8 text ({exc.reason})") from exc
    return parse_label_text(text, str(p), num_classes=num_classes, label_offset=label_offset)


def _safe_join(base: Path, name: str, source: str, line_no: int) -> Path:
    """``base / name`` for a relative name from a label file; absolute names and '..' are refused."""
    norm = name.replace("\\", "/")
    parts = norm.split("/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in parts:
        raise DatasetError(f"{source}, line {line_no}: file name {name!r} must be relative to the image folder")
    direct = base / name
    if "\\" in name and not direct.exists():
        return base.joinpath(*[p for p in parts if p])
    return direct


def _check_exist(items: Sequence[tuple[Path, LabelLine]], source: str) -> None:
    missing = [(p, ln) for p, ln in items if not p.is_file()]
    if missing:
        p, ln = missing[0]
        more = f" ({len(missing)} listed images are missing in all)" if len(missing) > 1 else ""
        raise DatasetError(f"{source}, line {ln.line_no}: listed image does not exist: {p}{more}")


def _fill_origins(origins: dict[str, str] | None, items: Sequence[tuple[Path, LabelLine]],
                  label_file: Path) -> None:
    """Record ``{image path: "<label file>, line N"}`` so a later error can name the line."""
    if origins is not None:
        origins.update((str(p), f"{label_file}, line {ln.line_no}") for p, ln in items)


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DatasetError(f"{what} is not a folder: {path}")


def _canonical_split(split: str, allowed: dict[str, str], dataset: str) -> str:
    key = str(split).lower()
    if key not in allowed:
        raise DatasetError(f"unknown split {split!r} for {dataset}; use one of {sorted(allowed)}")
    return allowed[key]


# --------------------------------------------------------------------------------------------
# record builders
# --------------------------------------------------------------------------------------------

def rafdb_records(root: str | os.PathLike, split: str, check_files: bool = True, *,
                  origins: dict[str, str] | None = None) -> list[Record]:
    """RAF-DB basic, original layout (docs/faithfulness.md#datasets-and-label-orders).

    ``<root>/EmoLabel/list_patition_label.txt`` lists ``<name>.jpg <1..7>``; the image is
    ``<root>/Image/aligned/<name>_aligned.jpg``.  Split ``train`` = names starting with ``train``,
    ``test`` (also ``val``/``valid``/``validation``) = names starting with ``test``.
    Labels are ``file label - 1`` (``RAFDB_CLASSES`` order).  ``origins``, when given, is filled
    with ``{image path: "<label file>, line N"}``.
    """
    root = Path(root)
    _require_dir(root, "RAF-DB root")
    want = _canonical_split(split, {"train": "train", **{s: "test" for s in _EVAL_SPLITS}}, "rafdb")
    label_file = root / RAFDB_LABEL_FILE
    lines = parse_label_file(label_file, num_classes=len(RAFDB_CLASSES), label_offset=1)
    image_dir = root / RAFDB_IMAGE_DIR
    items: list[tuple[Path, LabelLine]] = []
    for ln in lines:
        if ln.name.startswith("train"):
            which = "train"
        elif ln.name.startswith("test"):
            which = "test"
        else:
            raise DatasetError(f"{label_file}, line {ln.line_no}: name {ln.name!r} starts with neither "
                               "'train' nor 'test'")
        if which != want:
            continue
        stem = ln.name.rsplit(".", 1)[0] if "." in ln.name else ln.name
        items.append((_safe_join(image_dir, f"{stem}_aligned.jpg", str(label_file), ln.line_no), ln))
    if not items:
        raise DatasetError(f"{label_file}: no '{want}' images listed (split {split!r} is empty)")
    if check_files:
        _require_dir(image_dir, "RAF-DB image folder")
        _check_exist(items, str(label_file))
    _fill_origins(origins, items, label_file)
    return [(str(p), ln.label) for p, ln in items]


def affectnet_records(root: str | os.PathLike, split: str, num_classes: int = 7,
                      check_files: bool = True, *, origins: dict[str, str] | None = None) -> list[Record]:
    """AffectNet, V1 layout (docs/faithfulness.md#datasets-and-label-orders), 7 or 8 classes.

    ``<root>/train_set/train_annotations_{7,8}class.txt`` and
    ``<root>/valid_set/valid_annotations_{7,8}class.txt`` list ``<file> <label>`` with AffectNet's
    own codes (0 Neutral ... 6 Anger, 7 Contempt); images are ``<root>/<set>/images/<file>``.
    Split ``train``, or ``val``/``valid``/``validation``/``test`` for the validation set (which is
    the test set of the papers).  ``origins``: as in ``rafdb_records``.
    """
    if num_classes not in (7, 8):
        raise ValueError(f"AffectNet has 7 or 8 classes, got {num_classes}")
    root = Path(root)
    _require_dir(root, "AffectNet root")
    want = _canonical_split(split, {"train": "train", **{s: "valid" for s in _EVAL_SPLITS}},
                            f"affectnet{num_classes}")
    set_dir = root / f"{want}_set"
    label_file = set_dir / f"{want}_annotations_{num_classes}class.txt"
    lines = parse_label_file(label_file, num_classes=num_classes)
    if not lines:
        raise DatasetError(f"{label_file}: no images listed (split {split!r} is empty)")
    image_dir = set_dir / "images"
    items = [(_safe_join(image_dir, ln.name, str(label_file), ln.line_no), ln) for ln in lines]
    if check_files:
        _require_dir(image_dir, "AffectNet image folder")
        _check_exist(items, str(label_file))
    _fill_origins(origins, items, label_file)
    return [(str(p), ln.label) for p, ln in items]


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _resolve_split_dir(root: Path, split: str | None) -> Path:
    if split is None or split == "":
        return root
    exact = root / split
    if exact.is_dir():
        return exact
    if split.lower() in _EVAL_SPLITS:
        found = [root / s for s in _EVAL_SPLITS if (root / s).is_dir()]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise DatasetError(f"split folder {exact} not found and the alternatives are ambiguous: "
                               + ", ".join(str(f) for f in found))
    present = sorted(e.name for e in os.scandir(root) if e.is_dir() and not _is_hidden(e.name))
    raise DatasetError(f"split folder not found: {exact} (folders in {root}: {present or 'none'})")


def _list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, in torchvision ImageFolder's order
    (walk entries sorted by directory path, then file names sorted)."""
    walked = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        walked.append((dirpath, filenames))
    found: list[Path] = []
    for dirpath, filenames in sorted(walked):
        for f in sorted(filenames):
            if not _is_hidden(f) and f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / f)
    return found


def folder_records(root: str | os.PathLike, split: str | None = None,
                   class_names: Sequence[str] | None = None,
                   allow_empty_classes: bool = False) -> tuple[list[Record], tuple[str, ...]]:
    """Class-per-folder layout: ``<root>/<split>/<class>/**/*.{jpg,jpeg,png,bmp,webp}``.

    This is the Kaggle FER2013 layout and POSTER V2's ImageFolder layout
    (docs/faithfulness.md#datasets-and-label-orders).
    ``split=None`` uses ``<root>/<class>/`` directly.  If ``<root>/<split>`` does not exist and
    ``split`` is one of val/valid/validation/test, the single existing folder of those names is
    used (V2 reads ``valid``, Kaggle ships ``val`` or ``test``).

    Class order: ``class_names`` when given (each must be a folder, and any other class folder is
    an error), else the sorted folder names (ImageFolder's order; note "10" sorts before "2").
    ``allow_empty_classes``: a listed class whose folder is empty or missing is kept, with no
    images (evaluation on a dataset that lacks some classes).
    Hidden entries (starting with ".") are skipped; files directly in the split folder are
    ignored; file extensions are matched case-insensitively and sub-folders of a class folder are
    searched recursively.  Returns ``(records, class_names)``.
    """
    root = Path(root)
    _require_dir(root, "dataset root")
    split_dir = _resolve_split_dir(root, split)
    folders = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not _is_hidden(e.name))
    if class_names is None:
        if not folders:
            raise DatasetError(f"no class folders in {split_dir}")
        names = tuple(folders)
    else:
        names = tuple(str(c) for c in class_names)
        if len(set(names)) != len(names):
            raise DatasetError(f"class_names has duplicates: {list(names)}")
        missing = [c for c in names if c not in folders]
        if missing and not allow_empty_classes:
            raise DatasetError(f"class folder(s) missing in {split_dir}: {missing} (found: {folders})")
        extra = [f for f in folders if f not in names]
        if extra:
            raise DatasetError(f"unexpected folder(s) in {split_dir} that are not listed classes: {extra} "
                               f"(classes: {list(names)})")
    records: list[Record] = []
    empty: list[str] = []
    for label, cname in enumerate(names):
        files = _list_images(split_dir / cname) if cname in folders else []
        if not files:
            empty.append(cname)
        records.extend((str(f), label) for f in files)
    if empty and not allow_empty_classes:
        raise DatasetError(f"class folder(s) without images in {split_dir}: {empty} "
                           f"(extensions looked for: {', '.join(IMAGE_EXTENSIONS)})")
    if not records:
        raise DatasetError(f"no images found in {split_dir}")
    return records, names


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------

def _transform_order(transform: Any) -> str | None:
    cfg = getattr(transform, "input_config", None)
    order = getattr(cfg, "channel_order", None)
    return order if order in CHANNEL_ORDERS else None


class ImageListDataset(Dataset):
    """A list of ``(path, label)`` records; items are ``(transform(image), label)``.

    Images are decoded with ``load_image(path, channel_order)``.  Without a transform the item is
    the HxWx3 uint8 array itself.  ``channel_order=None`` takes the order from the transform's
    ``input_config`` (e.g. an ``EvalTransform``), else RGB; an explicit order that contradicts the
    transform's is refused, because the released V1 RAF-DB weights need BGR and silently feeding
    RGB costs accuracy without any error.
    """

    def __init__(self, records: Sequence[Record], class_names: Sequence[str],
                 transform: Callable[[Any], Any] | None = None, channel_order: str | None = None,
                 name: str = "", root: str | os.PathLike | None = None, split: str | None = None) -> None:
        self.records: list[Record] = [(str(p), int(l)) for p, l in records]
        self.class_names: tuple[str, ...] = tuple(str(c) for c in class_names)
        self.targets: list[int] = [l for _, l in self.records]
        n = len(self.class_names)
        bad = next((r for r in self.records if not 0 <= r[1] < n), None)
        if bad is not None:
            raise DatasetError(f"label {bad[1]} of {bad[0]} is out of range for {n} classes")
        t_order = _transform_order(transform)
        if channel_order is None:
            channel_order = t_order or "RGB"
        check_channel_order(channel_order)
        if t_order is not None and t_order != channel_order:
            raise ValueError(f"channel_order={channel_order!r} contradicts the transform's input config "
                             f"({t_order!r}); leave channel_order unset to follow the transform")
        self.channel_order = channel_order
        self.transform = transform
        self.name = name
        self.root = None if root is None else str(root)
        self.split = split
        # {image path: "<label file>, line N"} for label-file layouts (filled by build_dataset)
        self.origins: dict[str, str] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> Any:
        """The decoded image of record ``index`` (HxWx3 uint8, ``channel_order``), untransformed."""
        return load_image(self.records[index][0], self.channel_order)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.records[index]
        image = load_image(path, self.channel_order)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def class_counts(self) -> list[int]:
        """Number of records per class, in class order (for balanced samplers and reports)."""
        c = Counter(self.targets)
        return [c.get(i, 0) for i in range(self.num_classes)]

    def __repr__(self) -> str:
        what = f"{self.name} " if self.name else ""
        where = f", root={self.root!r}, split={self.split!r}" if self.root is not None else ""
        return (f"ImageListDataset({what}{len(self)} images, {self.num_classes} classes, "
                f"channel_order={self.channel_order!r}{where})")


# --------------------------------------------------------------------------------------------
# up-front image check
# --------------------------------------------------------------------------------------------

def check_images(records: Sequence[Record], skip_bad: bool = False, *,
                 origins: dict[str, str] | None = None, workers: int = 4,
                 decode: Callable[[str], Any] | None = None) -> tuple[list[Record], list[tuple[str, str]]]:
    """Decode every image of ``records`` once, before training starts.

    Returns ``(good_records, bad)`` where ``bad`` lists ``(path, reason)`` in record order.
    Without ``skip_bad`` the first bad image (in record order) raises ``DatasetError`` naming the
    file and, when ``origins`` maps its path to ``"<label file>, line N"``
    (``ImageListDataset.origins``), the line that listed it.  With ``skip_bad`` the bad images are
    left out of ``good_records`` and reported in ``bad``; nothing is dropped silently.

    An image is bad when ``load_image`` refuses it: missing, empty, truncated, not an image.
    Grey, 16-bit, alpha and CMYK images decode (to 8-bit 3-channel) and are good.  ``decode``
    replaces ``load_image`` (for tests).  Decoding runs on ``workers`` threads (OpenCV releases the
    GIL); each decoded array is dropped at once, so memory stays at ``workers`` images.
    """
    from concurrent.futures import ThreadPoolExecutor

    records = [(str(p), int(l)) for p, l in records]
    origins = origins or {}
    dec = decode if decode is not None else load_image

    def reason(path: str) -> str | None:
        try:
            dec(path)
        except DatasetError as exc:
            return str(exc)
        except MemoryError:
            return f"image too large to decode in memory: {path}"
        return None

    if workers > 1 and len(records) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = pool.map(reason, [p for p, _ in records])
            results = []
            for (p, l), why in zip(records, reasons):
                if why is not None and not skip_bad:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise _bad_image_error(p, why, origins)
                results.append(why)
    else:
        results = []
        for p, _ in records:
            why = reason(p)
            if why is not None and not skip_bad:
                raise _bad_image_error(p, why, origins)
            results.append(why)
    good = [r for r, why in zip(records, results) if why is None]
    bad = [(r[0], (f"{origins[r[0]]}: {why}" if r[0] in origins else why))
           for r, why in zip(records, results) if why is not None]
    return good, bad


def _bad_image_error(path: str, why: str, origins: dict[str, str]) -> DatasetError:
    where = f"{origins[path]}: " if path in origins else ""
    return DatasetError(f"{where}{why} (use {option('skip_bad', True)} to skip and count bad images instead)")
