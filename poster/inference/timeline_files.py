"""A video's timeline on disk, beside the results file: ``timelines/<video>.tracks.csv`` and
``.tracks.parquet`` (one row per face per frame), ``.summary.csv`` and ``.summary.json`` (one
entry per face: duration, dominant expression, share of time per expression) and ``.timeline.png``.

The rows stream to ``<name>.partial`` files as they come (the CSV is flushed every frame, the
Parquet file gets a row group every ``ROW_GROUP`` rows), so a long video's memory stays flat and a
killed run leaves a readable CSV; ``close`` finishes the Parquet file, renames both into place
and writes the summaries and the plot atomically.  Every file is created new, never through a
link planted under its name.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence, TextIO

from ..fileio import atomic_write_bytes, atomic_write_text, create_new_file
from ..textsafe import csv_cell
from .timeline import Timeline, row_columns

__all__ = ["TimelineFiles", "ROW_GROUP", "timeline_stem"]

ROW_GROUP = 8192
SUFFIXES = (".tracks.csv", ".tracks.parquet", ".summary.csv", ".summary.json", ".timeline.png")


def timeline_stem(source: str, rel: Path | None) -> str:
    """A plain file name for a video's timeline files: its path under the inputs without the
    suffix (``clips/a.mp4`` -> ``clips_a``), or the source (``webcam:0`` -> ``webcam_0``)."""
    text = "_".join(Path(rel).with_suffix("").parts) if rel is not None else source
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:120] or "video"


def _parquet_schema(class_names: Sequence[str]):
    import pyarrow as pa

    types = {"source": pa.string(), "track": pa.int64(), "frame": pa.int64(), "face": pa.int64(),
             "label": pa.string(), "smooth_label": pa.string()}
    return pa.schema([(name, types.get(name, pa.float64())) for name in row_columns(class_names)])


class TimelineFiles:
    """The timeline files of one video, ``folder / (stem + suffix)``; ``write(rows)`` is a ``Timeline`` sink."""

    def __init__(self, folder: Path, stem: str, class_names: Sequence[str]) -> None:
        self.folder = Path(folder)
        self.stem = stem
        self.class_names = tuple(class_names)
        self.paths = {suffix: self.folder / f"{stem}{suffix}" for suffix in SUFFIXES}
        self.rows_written = 0
        self._csv_file: TextIO = create_new_file(self._partial(".tracks.csv"), "w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow([csv_cell(c) for c in row_columns(self.class_names)])
        self._parquet_file = create_new_file(self._partial(".tracks.parquet"), "wb")
        self._parquet = None
        self._pending: list[tuple] = []

    def _partial(self, suffix: str) -> Path:
        path = self.paths[suffix]
        return path.with_name(path.name + ".partial")

    def write(self, rows: Sequence[tuple]) -> None:
        for row in rows:
            self._csv.writerow([csv_cell(v) if isinstance(v, str) else _number(v) for v in row])
        self._csv_file.flush()
        self._pending.extend(rows)
        self.rows_written += len(rows)
        if len(self._pending) >= ROW_GROUP:
            self._flush_parquet()

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _parquet_schema(self.class_names)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._parquet_file, schema)
        columns = list(zip(*self._pending)) if self._pending else [[] for _ in schema.names]
        self._parquet.write_table(pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in
                                                        zip(columns, schema)], schema=schema))
        self._pending.clear()
        self._parquet_file.flush()

    def close(self, timeline: Timeline, extra: dict[str, Any] | None = None) -> list[Path]:
        """Finish the tables, write the summaries and the plot; the paths written."""
        self._csv_file.close()
        os.replace(self._partial(".tracks.csv"), self.paths[".tracks.csv"])
        self._flush_parquet()
        self._parquet.close()
        self._parquet_file.close()
        os.replace(self._partial(".tracks.parquet"), self.paths[".tracks.parquet"])
        summaries = [s.to_dict() for s in timeline.summary()]
        atomic_write_text(self.paths[".summary.json"], json.dumps(
            {**timeline.info(), **(extra or {}), "faces": summaries}, indent=1, ensure_ascii=False) + "\n")
        atomic_write_text(self.paths[".summary.csv"], _summary_csv(summaries, timeline.class_names))
        from .timeline_plot import timeline_png

        atomic_write_bytes(self.paths[".timeline.png"], timeline_png(timeline))
        return list(self.paths.values())


    def abort(self) -> None:
        """Remove the partial tables (nothing was processed)."""
        self._csv_file.close()
        self._parquet_file.close()
        for suffix in (".tracks.csv", ".tracks.parquet"):
            self._partial(suffix).unlink(missing_ok=True)


def _number(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def _summary_csv(summaries: list[dict[str, Any]], class_names: Sequence[str]) -> str:
    buffer = io.StringIO(newline="")
    header = ["track", "first_frame", "last_frame", "start_s", "end_s", "duration_s", "seen_s", "frames",
              "dominant", *[f"share_{c}" for c in class_names], *[f"mean_{c}" for c in class_names]]
    writer = csv.writer(buffer)
    writer.writerow([csv_cell(h) for h in header])
    for s in summaries:
        writer.writerow([csv_cell(s[h]) if isinstance(s[h], str) else s[h] for h in header])
    return buffer.getvalue()
