"""What the inputs of a batch job stand for: image files, video files, folders (walked lazily, in
sorted order), webcams and streams; and what is skipped without being opened (other files, FIFOs,
devices, sockets, missing paths, the output folders of earlier runs)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..data.transforms import IMAGE_EXTENSIONS
from .video import VIDEO_EXTENSIONS, parse_source

__all__ = ["RUN_MARKER", "BatchInput", "expand_inputs", "why_nothing_in"]

RUN_MARKER = ".poster-predict-run"  # marks a predict output folder; folder walks do not read it


@dataclass
class BatchInput:
    kind: str  # "image", "video", "skip", "missing", "special", "run-folder", "empty" (a folder without either)
    target: Any
    rel: Path | None = None  # path under the annotated/ folder (without suffix change)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _is_regular_file(path: Path) -> bool:
    """A regular file (through links): a FIFO, socket or device named ``*.jpg`` is never opened."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _folder_label(folder: Path) -> str:
    """The name an input folder has under ``annotated/``: ``.`` and ``..`` are named by what they
    are (the resolved folder's name), so no annotated copy is written outside ``annotated/``."""
    name = folder.name
    if name in ("", ".", ".."):
        name = folder.resolve().name or "root"
    return name


def _classify(path: Path, rel: Path) -> BatchInput:
    if not _is_image(path) and not _is_video(path):
        return BatchInput("skip", path)
    if not _is_regular_file(path):
        return BatchInput("special", path)
    return BatchInput("image" if _is_image(path) else "video", path, rel)


def _walk(folder: Path, exclude: set[Path]) -> Iterator[BatchInput]:
    """Files under ``folder`` in a stable (sorted) order, lazily; run folders of ``poster predict``
    (this run's output folder and earlier ones) are not entered."""
    label = _folder_label(folder)
    for root, dirs, files in os.walk(folder):
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            sub = Path(root) / d
            if sub.resolve() in exclude or (sub / RUN_MARKER).exists():
                yield BatchInput("run-folder", sub)
            else:
                kept.append(d)
        dirs[:] = kept
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            yield _classify(path, Path(label) / path.relative_to(folder))


def expand_inputs(inputs: list[str], exclude: set[Path] | None = None) -> Iterator[BatchInput]:
    """What each command-line input stands for; ``exclude``: resolved folders never walked into."""
    exclude = exclude or set()
    for text in inputs:
        kind, target = parse_source(text)
        if kind == "webcam":
            yield BatchInput("video", target, Path(f"webcam{target}.mp4"))
            continue
        if kind == "stream":
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(target).split("://", 1)[-1])[:80]
            yield BatchInput("video", target, Path(f"stream_{safe}.mp4"))
            continue
        path = Path(text)
        if path.is_dir():
            if path.resolve() in exclude:
                yield BatchInput("run-folder", path)
            else:
                found = False
                for item in _walk(path, exclude):
                    found = found or item.kind in ("image", "video")
                    yield item
                if not found:
                    yield BatchInput("empty", path)
        elif path.is_file():
            yield BatchInput("video" if _is_video(path) else "image", path, Path(path.name))
        elif path.exists():
            yield BatchInput("special", path)
        else:
            yield BatchInput("missing", path)


def why_nothing_in(text: str) -> str | None:
    """Why the input ``text`` gives nothing to predict, or ``None`` when it may give something (a
    file, a folder holding an image or video, a webcam, a stream).  Decided before a run starts,
    so a run of nothing is refused without creating a run folder; a folder is walked only as far
    as its first image or video."""
    kind, _ = parse_source(text)
    if kind != "file":
        return None
    path = Path(text)
    if path.is_dir():
        if any(item.kind in ("image", "video") for item in _walk(path, set())):
            return None
        return f"no images or videos found in {text}"
    if path.is_file():
        return None
    return f"not a regular file: {text}" if path.exists() else f"no such file or folder: {text}"
