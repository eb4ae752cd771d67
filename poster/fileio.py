"""Atomic file writes: a crash leaves either the old file or the new one, never half of one.

Files are created without following links: the temporary file is opened with ``O_EXCL`` (a link
planted under its name makes the open fail), the rename replaces a link at the target instead of
writing through it, and ``safe_mkdirs`` refuses folders that are links.  Finished files get the
normal permissions of the user's umask (``0o666 & ~umask``), like ``open(..., "w")`` would give,
not the ``0o600`` of ``mkstemp``.
"""

from __future__ import annotations

import errno
import io
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


# mkstemp(prefix=".<name>.", suffix=".tmp"): a dot, the target's name, 8 random characters.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def default_file_mode() -> int:
    """``0o666`` less the process's umask: what ``open(path, "w")`` would give a new file."""
    try:  # Linux: read it without changing it (os.umask would briefly change it for every thread)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def safe_mkdirs(folder: str | os.PathLike) -> Path:
    """``mkdir -p`` for an output folder that refuses a folder which is a symbolic link (a link
    planted where outputs go would send them elsewhere) or an existing non-folder."""
    folder = Path(folder)
    if folder.is_symlink():
        raise FileExistsError(errno.EEXIST, "refusing to write into a symbolic link", str(folder))
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(errno.EEXIST, "exists and is not a folder", str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def claim_run_folder(folder: str | os.PathLike, exist_ok: bool = False) -> Path:
    """A run folder for a new run: ``folder`` when it is missing or empty, else the first of
    ``folder2``, ``folder3``, ... that is (like YOLO's ``runs/predict2``); ``exist_ok``: ``folder``
    as it is.  New folders are claimed with an atomic ``mkdir``, so two runs started together get
    two folders.  A path that is a file or a symbolic link is refused (``FileExistsError``)."""
    folder = Path(folder)
    if exist_ok:
        return safe_mkdirs(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    candidate, number = folder, 2
    while True:
        if candidate.is_symlink() or (candidate.exists() and not candidate.is_dir()):
            if candidate == folder:
                safe_mkdirs(candidate)  # raises, naming what is wrong
        else:
            try:
                os.mkdir(candidate)
                return candidate
            except FileExistsError:
                if candidate.is_dir() and not candidate.is_symlink() and not any(candidate.iterdir()):
                    return candidate
        candidate = folder.with_name(f"{folder.name}{number}")
        number += 1


def safe_subfolder(base: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """``base / relative`` created as folders, refusing ``..``, absolute parts and any component
    below ``base`` that is a symbolic link (a link planted in an output folder)."""
    base = Path(base)
    current = base
    for part in Path(relative).parts:
        if part in ("", ".", "..") or os.sep in part or (os.altsep and os.altsep in part) or Path(part).is_absolute():
            raise ValueError(f"unsafe path component {part!r} in {relative}")
        current = current / part
        if current.is_symlink():
            raise FileExistsError(errno.EEXIST, "refusing to write through a symbolic link", str(current))
        try:
            os.mkdir(current)
        except FileExistsError:
            if current.is_symlink() or not current.is_dir():
                raise FileExistsError(errno.EEXIST, "refusing to write through a symbolic link or non-folder",
                                      str(current)) from None
    return current


def create_new_file(path: str | os.PathLike, mode: str = "w", **open_kwargs):
    """Open a *new* file for writing without following links (``O_CREAT | O_EXCL | O_NOFOLLOW``):
    a link or file planted under that name is removed first (the link itself, never its target).
    For files written as a stream (e.g. a results file as records come)."""
    path = Path(path)
    try:
        os.unlink(path)  # removes a planted link itself, not what it points to
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    return os.fdopen(fd, mode, **open_kwargs)


def new_temporary_beside(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A new empty file ``.<name>.<8 chars><suffix>`` in ``path``'s folder (created if needed),
    with the umask's permissions: a rename over ``path`` is then atomic (same file system) and
    does not leave the file at ``mkstemp``'s ``0o600``.  For writers that need the file open
    between calls (a video sink); others use :func:`atomic_output`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, default_file_mode())
    finally:
        os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (see :func:`new_temporary_beside`) to write to;
    renames it over ``path`` when the block ends normally and deletes it when the block raises, so
    ``path`` is either the old file or the complete new one."""
    path = Path(path)
    tmp = new_temporary_beside(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    The temporary file is created with ``O_EXCL`` and reopened without following links, and it is
    renamed over the target, so a link planted at either name is replaced, never written through;
    the result has the umask's permissions."""
    path = Path(path)
    with atomic_output(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the target
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` made atomic (serialised in memory first, then written and renamed)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes (kill -9, power loss) left in
    ``folder``; returns them.  Only names of the form ``.<target>.<8 chars>.tmp`` are touched, and
    only files: the finished targets themselves are never at risk.  Call it when no other process
    is writing to the folder (e.g. at the start of a resumed run)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if _TEMPORARY.match(entry.name) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            removed.append(entry)
    return removed
