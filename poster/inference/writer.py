"""The results file of a batch job: one record per face, JSON lines or CSV, written as it comes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, TextIO

from ..face.detect import LANDMARK_NAMES
from ..fileio import create_new_file
from ..textsafe import csv_cell

__all__ = ["ResultsWriter", "complete_records", "csv_header", "face_record"]


def csv_header(class_names: tuple[str, ...]) -> list[str]:
    landmarks = [f"{n}_{a}" for n in LANDMARK_NAMES for a in ("x", "y")]
    return ["source", "frame", "face", "x", "y", "w", "h", *landmarks, "score", "label", "confidence",
            *[csv_cell(f"p_{c}") for c in class_names], "top_k", "note"]


def face_record(source: str, frame: int | None, face: Any, top_k: int) -> dict[str, Any]:
    """The JSON record of one face (``FaceResult``), as ``poster predict`` writes it."""
    return {"source": source, "frame": frame, **face.to_dict(),
            "top_k": [[n, round(p, 6)] for n, p in face.top_k(top_k)]}


def _csv_face_row(source: str, frame: int | None, face: Any, class_names: tuple[str, ...], top_k: int,
                  note: str) -> list[Any]:
    landmarks = [f"{v:.2f}" for pt in (face.landmarks or ()) for v in pt] or [""] * 2 * len(LANDMARK_NAMES)
    return [csv_cell(source), "" if frame is None else frame, face.index, *[f"{v:.2f}" for v in face.box],
            *landmarks, f"{face.score:.5f}", csv_cell(face.label), f"{face.confidence:.6f}",
            *[f"{face.probabilities[c]:.6f}" for c in class_names],
            csv_cell(";".join(f"{n}:{p:.4f}" for n, p in face.top_k(top_k))), csv_cell(note)]


class ResultsWriter:
    """Records appended as they come to ``<final>.partial``; renamed to ``final`` on ``close``.

    The partial file is created new without following links (a link planted under its name is
    removed, its target untouched); in CSV, text cells that a spreadsheet would run as formulas
    (``=...``) get a leading apostrophe."""

    def __init__(self, path: Path, fmt: str, class_names: tuple[str, ...], top_k: int) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".partial")
        self.fmt = fmt
        self.class_names = class_names
        self.top_k = top_k
        self._f: TextIO = create_new_file(self.tmp, "w", encoding="utf-8", newline="")
        self._csv = None
        if fmt == "csv":
            self._csv = csv.writer(self._f)
            self._header = csv_header(class_names)
            self._csv.writerow(self._header)

    def write(self, source: str, frame: int | None, face=None, note: str = "", error: str | None = None) -> None:
        """One record: a face, or (``face=None``) an input without a face or with an ``error``."""
        if self.fmt == "jsonl":
            rec = face_record(source, frame, face, self.top_k) if face is not None else {
                "source": source, "frame": frame, "face": None, "num_faces": 0}
            if error is not None:
                rec["error"] = error
            if note:
                rec["note"] = note
            self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        else:
            text = "; ".join(t for t in (note, f"error: {error}" if error is not None else "") if t)
            if face is None:  # source and frame, every face column empty, the note last
                row = [csv_cell(source), "" if frame is None else frame] + [""] * (len(self._header) - 3) \
                    + [csv_cell(text)]
            else:
                row = _csv_face_row(source, frame, face, self.class_names, self.top_k, text)
            self._csv.writerow(row)
        self._f.flush()

    def close(self) -> Path:
        self._f.close()
        os.replace(self.tmp, self.path)
        return self.path


def complete_records(path: Path) -> int:
    """Records in a results file (or the ``.partial`` of a run that was killed) that are whole: each
    record is one flushed line, so only a last line the kill cut short can be incomplete."""
    text = path.read_bytes().decode("utf-8", "replace")
    text = text[:text.rfind("\n") + 1]  # up to the last complete line
    if path.name.removesuffix(".partial").endswith(".csv"):
        return max(0, sum(1 for _ in csv.reader(text.splitlines(keepends=True))) - 1)  # less the header
    count = 0
    for line in text.splitlines():
        try:
            count += isinstance(json.loads(line), dict)
        except ValueError:
            pass
    return count
