"""The released POSTER weight sets, found on local disk (nothing is ever downloaded).

``poster.load_model('poster_v1_large.rafdb')`` looks for the official file under
``$POSTER_WEIGHTS`` (default ``~/.cache/poster/weights``) and the current folder; a path
always works too.

One model ships inside the package: ``poster_v1_tiny.fer2013`` (``BUNDLED_MODEL``), a compact
POSTER trained on FER2013 so that ``poster predict`` works offline with no download.  It is a
demonstration model on research data; the official checkpoints are the accurate choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError


@dataclass(frozen=True)
class Release:
    name: str
    file_names: tuple[str, ...]  # names the authors used for the file
    dataset: str
    paper_accuracy: float
    note: str = ""


RELEASES = {r.name: r for r in (
    Release("poster_v1_large.rafdb", ("rafdb_best.pth",), "rafdb", 92.05, "POSTER V1, BGR input"),
    Release("poster_v1_large.affectnet7", ("affectnet_best.pth", "affectnet7_best.pth"), "affectnet7", 67.31),
    Release("poster_v1_large.affectnet8", ("affectnet8_best.pth", "affectnet8class_best.pth"), "affectnet8", 63.34),
    Release("poster_v2.rafdb", ("raf-db-model_best.pth", "rafdb_model_best.pth"), "rafdb", 92.21),
    Release("poster_v2.affectnet7", ("affecnet-7-model_best.pth", "affectnet-7-model_best.pth"), "affectnet7", 67.49),
    Release("poster_v2.affectnet8", ("affecnet-8-model_best.pth", "affectnet-8-model_best.pth"), "affectnet8", 63.77),
)}


BUNDLED_RELEASE = "poster_v1_tiny.fer2013"
BUNDLED_MODEL = Path(__file__).resolve().parent / "assets" / "poster_v1_tiny_fer2013.pth"


def bundled_model_path() -> Path:
    """The packaged default model (``CheckpointError`` if this install lacks the file)."""
    if not BUNDLED_MODEL.is_file():
        raise CheckpointError(f"the bundled model {BUNDLED_MODEL} is missing from this install of poster; "
                              "reinstall the package or pass a checkpoint")
    return BUNDLED_MODEL


def weights_dir() -> Path:
    return Path(os.environ.get("POSTER_WEIGHTS", Path.home() / ".cache" / "poster" / "weights"))


def resolve_weights(path_or_name: str | os.PathLike) -> Path:
    """A file path as given, or the local file of a release name; a clear error otherwise."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    if str(path_or_name) == BUNDLED_RELEASE:
        return bundled_model_path()
    release = RELEASES.get(str(path_or_name))
    if release is not None:
        for folder in (weights_dir(), Path.cwd()):
            for file_name in release.file_names:
                if (folder / file_name).is_file():
                    return folder / file_name
        raise CheckpointError(
            f"{release.name}: none of {list(release.file_names)} found in {weights_dir()} or the current folder. "
            "Download the official file from the authors' release page and put it there, or pass its path.")
    if path.exists():
        raise CheckpointError(f"{path}: is not a file")
    raise CheckpointError(f"{path}: no such file (and not a release name: {', '.join([BUNDLED_RELEASE, *RELEASES])})")
