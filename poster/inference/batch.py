"""Predict over many sources into a results file: what ``poster predict`` runs, and what a server can run.

::

    from poster.inference.batch import BatchOptions, open_run_folder, run_batch

    rec = poster.Recognizer.from_checkpoint("rafdb_best.pth")
    with open_run_folder("runs/predict") as run:          # fresh folder (DIR, DIR2, ...), locked
        summary = run_batch(rec, ["photos/", "clip.mp4"], run.folder, BatchOptions(top_k=3))

Each input (``poster.inference.inputs.expand_inputs``: files, folders, webcams, streams) gives
records in the results file (``poster.inference.writer.ResultsWriter``): one per face, one with
``num_faces: 0`` for a picture without a face, one with an ``error`` for an input that could not
be read; annotated copies go to ``annotated/`` (links planted there are never followed).  Under
``torchrun`` each process takes every ``world_size``-th input (``Shard``) and rank 0 merges the
parts.  Nothing is printed: what happens is told to a ``BatchListener`` (the CLI prints it).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2

from ..errors import PosterError
from ..fileio import atomic_write_bytes, claim_run_folder, safe_mkdirs, safe_subfolder
from ..runlock import LOCK_NAME, RunLock, pid_alive
from ..textsafe import printable
from .drawing import annotate
from .options import BatchOptions  # where the command line reads it without torch
from .inputs import RUN_MARKER, BatchInput, expand_inputs, why_nothing_in
from .results import ImageResult
from .timeline_files import TimelineFiles, timeline_stem
from .video import VideoSink
from .writer import ResultsWriter, complete_records

log = logging.getLogger(__name__)

__all__ = ["BatchListener", "BatchOptions", "BatchSummary", "Shard", "RunFolder", "check_inputs", "interrupted_runs",
           "open_run_folder", "run_batch"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # annotated copies keep these, others become .png


@dataclass
class BatchSummary:
    images: int = 0
    images_without_face: int = 0
    videos: int = 0
    frames: int = 0
    frames_failed: int = 0
    videos_cut_short: int = 0  # files that ended well before the frame count of their header
    faces: int = 0
    unreadable: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    annotated: bool = False  # whether any annotated copy was written
    interrupted: bool = False

    @property
    def processed(self) -> int:
        return self.images + self.frames


class BatchListener:
    """Told what a batch job does, as it does it (the default says nothing).  ``note``: a line about
    an input (``problem``: it was unreadable or skipped, rather than processed)."""

    def image(self, result: ImageResult) -> None:
        pass

    def note(self, text: str, problem: bool = False) -> None:
        pass


@dataclass
class Shard:
    """This process's share of a ``torchrun`` launch: every ``world_size``-th input, starting at ``rank``.

    Each rank writes ``results.rank<r>.<fmt>``; when all are done, rank 0 merges them into
    ``results.<fmt>`` (rank order, one CSV header) and removes the parts.
    """

    rank: int = 0
    world_size: int = 1
    device: str = "auto"

    @classmethod
    def from_environment(cls, device: str) -> "Shard":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=device)
        import torch

        from ..distributed import init_distributed

        use_cuda = device == "auto" and torch.cuda.is_available() or str(device).startswith("cuda")
        info = init_distributed("cuda" if use_cuda else "cpu")
        return cls(info.rank, info.world_size, f"cuda:{info.local_rank}" if use_cuda else device)

    def results_name(self, fmt: str) -> str:
        return f"results.{fmt}" if self.world_size == 1 else f"results.rank{self.rank}.{fmt}"

    def share(self, make: Callable[[], Any]) -> Any:
        """``make()`` run on rank 0 only, its value handed to every rank (one output folder for all)."""
        if self.world_size == 1:
            return make()
        import torch.distributed as dist

        box = [make() if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def take(self, items: Iterator[BatchInput]) -> Iterator[BatchInput]:
        return (item for i, item in enumerate(items) if i % self.world_size == self.rank)

    def merge(self, part: Path, final: Path, fmt: str) -> Path:
        if self.world_size == 1:
            return part
        import torch.distributed as dist

        dist.barrier()
        if self.rank == 0:
            parts = [final.with_name(f"results.rank{r}.{fmt}") for r in range(self.world_size)]
            lines: list[str] = []
            for i, path in enumerate(parts):
                text = path.read_text(encoding="utf-8").splitlines(keepends=True)
                lines.extend(text[1:] if fmt == "csv" and i > 0 else text)
            atomic_write_bytes(final, "".join(lines).encode("utf-8"))
            for path in parts:
                path.unlink()
        dist.barrier()
        dist.destroy_process_group()
        return final


def check_inputs(inputs: Iterable[str]) -> None:
    """Refuse (``PosterError``) a job none of whose inputs can give anything: missing paths, empty
    folders, ... (``why_nothing_in``).  Called before the run folder is made, so such a run leaves
    nothing behind; a job with some usable inputs runs, and names the others as it meets them."""
    reasons = [why_nothing_in(str(text)) for text in inputs]
    if all(reasons):
        raise PosterError("nothing to predict: " + ("; ".join(reasons) or "no inputs"))


# ---------------------------------------------------------------------------------------------
# The run folder


@dataclass
class RunFolder:
    """A claimed output folder, locked (on rank 0) until ``close``.  ``fresh``: it was made for this
    run, so a run that fails before writing anything (a model that cannot be loaded or downloaded)
    removes it instead of leaving an empty folder for the next run to take."""

    folder: Path
    shard: Shard
    lock: RunLock | None = None
    fresh: bool = False

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
            if self.fresh:
                with contextlib.suppress(OSError):  # not empty: the run wrote something, which stays
                    self.folder.rmdir()

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _claim(requested: str, exist_ok: bool) -> tuple[str, bool]:
    """The claimed folder, and whether this run made it (a folder the user had is never removed)."""
    existed = os.path.lexists(requested)
    try:
        folder = claim_run_folder(requested, exist_ok=exist_ok)
        return str(folder), not (existed and folder == Path(requested))
    except OSError as exc:
        where = printable(exc.filename or requested)
        raise PosterError(f"cannot use output folder {where}: {exc.strerror or exc}") from None


# The results files of either format: an earlier run's would sit beside this run's as if one.
_RESULTS_NAMES = ("results.jsonl", "results.csv")


def _lock_and_clear(folder: Path, results_name: str) -> RunLock:
    """Lock the run folder and clear what an earlier run in it left (``--exist-ok``): its results
    file (a killed run must not leave the previous results) and, in the folder of an earlier
    ``poster predict`` run, its other results file and ``annotated/`` (the new run's copies must
    not sit among the old ones).  An ``annotated/`` that no predict run made is refused, not
    deleted.  Links are refused, never followed."""
    lock = RunLock(folder, "poster predict").acquire()
    try:
        for name in (results_name, results_name + ".partial", "annotated", "timelines"):
            entry = folder / name
            if entry.is_symlink():
                raise PosterError(f"{printable(entry)} is a symbolic link: refusing to write through it "
                                  "(remove it or choose another output folder)")
        (folder / results_name).unlink(missing_ok=True)
        annotated = folder / "annotated"
        if not (folder / RUN_MARKER).exists():
            if annotated.exists():
                raise PosterError(f"{printable(annotated)} exists and no poster predict run made it: refusing to "
                                  "replace it (choose another output folder)")
            return lock
        for name in _RESULTS_NAMES:
            (folder / name).unlink(missing_ok=True)
        for earlier in (annotated, folder / "timelines"):
            if earlier.exists():
                shutil.rmtree(earlier)  # links inside are removed, never followed
                log.info("%s: removed the earlier run's %s/ (--exist-ok)", printable(folder), earlier.name)
    except BaseException:
        lock.release()
        raise
    return lock


def open_run_folder(requested: str | os.PathLike, exist_ok: bool = False, fmt: str = "jsonl",
                    shard: Shard | None = None) -> RunFolder:
    """A fresh run folder (``DIR``, ``DIR2``, ... the first one missing or empty) or, with
    ``exist_ok``, ``DIR`` itself, cleared of an earlier run's outputs; refused (``PosterError``)
    when it is a file, a link, not writable or locked by another run.  Under ``torchrun`` rank 0
    claims it for every rank."""
    shard = shard or Shard()
    claimed, fresh = shard.share(lambda: _claim(str(requested), exist_ok))
    folder = Path(claimed)
    results_name = shard.results_name(fmt)
    if shard.rank != 0:
        (folder / results_name).unlink(missing_ok=True)
        return RunFolder(folder, shard)
    return RunFolder(folder, shard, _lock_and_clear(folder, results_name), fresh)


def interrupted_runs(requested: str | os.PathLike, claimed: Path) -> list[tuple[Path, int]]:
    """``(partial results file, complete records)`` of each killed run in ``requested``, ``requested2``,
    ... up to ``claimed`` (the folder this run got): what the CLI names so that a second run says
    whether it starts afresh beside the killed one or (``--exist-ok``) in its place.  A folder whose
    lock names a live process is a run in progress, not a killed one."""
    requested, found = Path(requested), []
    candidates = [requested] + [requested.with_name(f"{requested.name}{n}") for n in range(2, 10_000)]
    for folder in candidates:
        if folder.is_dir() and not folder.is_symlink() and (folder == claimed or not _run_in_progress(folder)):
            found += [(partial, complete_records(partial)) for partial in sorted(folder.glob("results*.partial"))
                      if partial.is_file() and not partial.is_symlink()]
        if folder == claimed or not os.path.lexists(folder):
            break
    return found


def _run_in_progress(folder: Path) -> bool:
    lock = folder / LOCK_NAME
    try:
        owner = json.loads(lock.read_text(encoding="utf-8")) if lock.is_file() and not lock.is_symlink() else {}
        return owner.get("host") == socket.gethostname() and pid_alive(int(owner["pid"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


# ---------------------------------------------------------------------------------------------
# The job


def _unique(path: Path, used: set[Path]) -> Path:
    candidate, n = path, 1
    while candidate in used:
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    used.add(candidate)
    return candidate


class _Job:
    """One batch run: where its records and annotated copies go, and what it has counted."""

    def __init__(self, recognizer: Any, folder: Path, options: BatchOptions, writer: ResultsWriter,
                 listener: BatchListener) -> None:
        self.rec = recognizer
        self.options = options
        self.writer = writer
        self.listener = listener
        self.annotated_dir = folder / "annotated"
        self.summary = BatchSummary()
        self.used: set[Path] = set()

    def _annotated_name(self, rel: Path) -> Path:
        """A name under ``annotated/`` that this run has not used yet."""
        self.summary.annotated = True
        return _unique(self.annotated_dir / rel, self.used)

    def _safe_target(self, out: Path) -> Path:
        """``out``'s folders created under ``annotated/`` without following links planted there."""
        safe_mkdirs(self.annotated_dir)
        folder = safe_subfolder(self.annotated_dir, out.parent.relative_to(self.annotated_dir))
        return folder / out.name

    def unreadable(self, source: str, error: str, message: str) -> None:
        self.listener.note(message, problem=True)
        self.summary.unreadable.append(source)
        self.writer.write(source, None, None, error=error)

    def images(self, items: Iterable[BatchInput]) -> None:
        rel_of: dict[str, Path | None] = {}

        def named() -> Iterator[tuple[str, Path]]:
            for item in items:
                rel_of[str(item.target)] = item.rel
                yield str(item.target), Path(item.target)

        for result in self.rec.predict_many(named(), keep_images=self.options.annotate):
            rel = rel_of.pop(result.source, None)
            if result.error is not None:
                self.unreadable(result.source, result.error, f"skipped unreadable file: {printable(result.error)}")
                continue
            self.summary.images += 1
            self.summary.faces += len(result.faces)
            if not result.faces:
                self.summary.images_without_face += 1
                self.writer.write(result.source, None, None, "no face found")
            for face in result.faces:
                self.writer.write(result.source, None, face)
            self.listener.image(result)
            if self.options.annotate and result.image is not None:
                self._save_picture(result, rel or Path(Path(result.source).name))

    def _save_picture(self, result: ImageResult, rel: Path) -> None:
        picture = annotate(result.image, result, self.options.top_k, self.rec.class_names)
        if rel.suffix.lower() not in _IMAGE_SUFFIXES:
            rel = rel.with_suffix(".png")
        out = self._annotated_name(rel)
        ok, data = cv2.imencode(out.suffix.lower(), picture)
        if ok:
            atomic_write_bytes(self._safe_target(out), data.tobytes())

    def _timeline_files(self, item: BatchInput) -> TimelineFiles | None:
        if not self.options.timeline:
            return None
        folder = safe_mkdirs(self.annotated_dir.parent / "timelines")
        stem = _unique(folder / timeline_stem(str(item.target), item.rel), self.used).name
        return TimelineFiles(folder, stem, self.rec.class_names)

    def _finish_timeline(self, files: TimelineFiles | None, video: Any) -> None:
        """The timeline files of what was processed, also after Ctrl-C or an error; none without a frame."""
        if files is None:
            return
        if not video.timeline.frames:
            files.abort()
            return
        follower = video.follower
        counts = {"frames_failed": video.frames_failed, "detect_every": video.detect_every,
                  "full_detections": follower.full_detections if follower else video.timeline.frames}
        files.close(video.timeline, counts)
        timeline = video.timeline
        odd = [f"{n} {what}" for n, what in ((timeline.irregular_intervals, "irregular frame intervals (variable frame "
                                               "rate or dropped frames)"),
                                              (timeline.timestamps_repaired, "missing or backward timestamps replaced"))
               if n]
        self.listener.note(f"timeline: {printable(files.paths['.timeline.png'])} ({len(timeline.tracks)} faces"
                           + "".join(f"; {t}" for t in odd) + ")")

    def video(self, item: BatchInput) -> None:
        options = self.options
        files = self._timeline_files(item)
        try:
            video = self.rec.predict_video(item.target, every_n=options.every_n, smoothing=options.smoothing,
                                           keep_images=options.annotate, max_frames=options.max_frames,
                                           detect_every=options.detect_every,
                                           timeline_sink=files.write if files is not None else None)
        except PosterError as exc:
            if files is not None:
                files.abort()
            self.unreadable(str(item.target), str(exc), f"skipped unreadable video: {printable(exc)}")
            return
        sink = None
        if options.annotate:
            rel = (item.rel or Path(f"{video.source}.mp4")).with_suffix(".mp4")
            fps = (video.fps or 25.0) / max(1, options.every_n)
            sink = VideoSink(self._safe_target(self._annotated_name(rel)), fps=fps)
        log.info("%s: video %s fps, %s frames", printable(video.source), round(video.fps, 2) or "?",
                 video.reader.frame_count or "?")
        try:
            frames, faces = self._video_frames(video, sink)
        finally:
            self._finish_timeline(files, video)
        if frames == 0:
            self.unreadable(video.source, "no frame could be decoded",
                            f"skipped unreadable video: no frame could be decoded from {printable(video.source)}")
            if sink is not None:
                sink.abort()
            return
        self.summary.videos += 1
        written = sink.close() if sink is not None else None
        failed = f", {video.frames_failed} undecodable frames skipped" if video.frames_failed else ""
        reader = video.reader
        if reader.cut_short:
            failed += (f", ends at frame {reader.frames_seen} of the {reader.frame_count} its header announces "
                       "(cut short?)")
            self.summary.videos_cut_short += 1
        self.listener.note(f"{printable(video.source)}: {frames} frames, {faces} faces{failed}"
                           + (f" -> {printable(written)}" if written else ""))

    def _video_frames(self, video: Any, sink: VideoSink | None) -> tuple[int, int]:
        """Records (and annotated frames) of every frame; the number of frames and of faces."""
        frames = faces = 0
        stream = iter(video)
        try:
            for result in stream:
                frames += 1
                faces += len(result.faces)
                if not result.faces:
                    self.writer.write(result.source, result.frame, None, "no face found")
                for face in result.faces:
                    self.writer.write(result.source, result.frame, face)
                if sink is not None and result.image is not None:
                    sink.write(annotate(result.image, result, self.options.top_k, self.rec.class_names,
                                        extend_canvas=False))
        except BaseException:
            if sink is not None:
                written = sink.close()  # keep what was annotated so far (e.g. webcam stopped with Ctrl-C)
                if written:
                    self.listener.note(f"annotated video (partial): {printable(written)}")
            raise
        finally:
            stream.close()
            video.close()
            self.summary.frames += frames
            self.summary.faces += faces
            self.summary.frames_failed += video.frames_failed
        return frames, faces

    def other(self, item: BatchInput) -> None:
        where = printable(item.target)
        if item.kind == "skip":
            self.listener.note(f"note: skipped (not an image or video): {where}", problem=True)
            self.summary.skipped.append(str(item.target))
        elif item.kind == "empty":
            self.listener.note(f"note: no images or videos found in {where}", problem=True)
        elif item.kind == "run-folder":
            self.listener.note(f"note: skipped the output folder of a poster predict run: {where}", problem=True)
        elif item.kind == "special":
            self.unreadable(str(item.target), "not a regular file",
                            f"skipped: not a regular file (FIFO, device or socket; never opened): {where}")
        else:
            self.unreadable(str(item.target), "no such file or folder",
                            f"skipped missing input: {where} (no such file or folder)")


def _kind(item: BatchInput) -> str:
    return item.kind if item.kind in ("image", "video") else "other"


def run_batch(recognizer: Any, inputs: Iterable[str], folder: str | os.PathLike, options: BatchOptions = BatchOptions(),
              shard: Shard | None = None, listener: BatchListener | None = None) -> tuple[BatchSummary, Path]:
    """Predict every input (paths, folders, webcams, stream URLs) with ``recognizer`` into
    ``folder`` (a run folder, see ``open_run_folder``): the results file and ``annotated/``.

    Consecutive images share model batches; unreadable inputs are recorded and counted, never
    raised.  Ctrl-C stops the run keeping the results so far (``summary.interrupted``).  Returns
    the summary and the path of the results file."""
    folder, shard = Path(folder), shard or Shard()
    listener = listener or BatchListener()
    marker = folder / RUN_MARKER
    if shard.rank == 0 and not marker.exists():
        atomic_write_bytes(marker, b"poster predict output folder: folder inputs never read it\n")
    writer = ResultsWriter(folder / shard.results_name(options.fmt), options.fmt, recognizer.class_names,
                           options.top_k)
    job = _Job(recognizer, folder, options, writer, listener)
    try:
        items = shard.take(expand_inputs(list(inputs), exclude={folder.resolve()}))
        for kind, group in itertools.groupby(items, key=_kind):
            if kind == "image":
                job.images(group)
            else:
                for item in group:
                    if kind == "video":
                        job.video(item)
                    else:
                        job.other(item)
    except KeyboardInterrupt:
        job.summary.interrupted = True
    finally:
        results_path = shard.merge(writer.close(), folder / f"results.{options.fmt}", options.fmt)
    return job.summary, results_path
