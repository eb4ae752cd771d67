"""``poster predict``: expressions of the faces in photos, folders, videos, webcams and streams.

Each run writes to a fresh folder: ``runs/predict``, then ``runs/predict2``, ``runs/predict3``, ...
(an ``-o`` folder that exists and is not empty is incremented the same way; ``--exist-ok`` reuses
it).  The folder is locked while the run lasts (``poster.runlock``) and marked as a run folder, so
that predicting a folder that contains it never reads earlier results as inputs.

Results stream to ``<output-dir>/results.jsonl`` (or ``.csv``) as they come: one record per face,
one record with ``num_faces: 0`` for an image or frame without a face, one record with an
``error`` for an input that could not be read.  Annotated copies of the images (and annotated
videos, ``mp4v``) go to ``<output-dir>/annotated/``.  Unreadable inputs are named, skipped and
counted; the exit status is 0 unless nothing at all could be processed.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, TextIO

import cv2

from ..data.transforms import IMAGE_EXTENSIONS
from ..errors import PosterError
from ..face.detect import LANDMARK_NAMES, list_detectors
from ..fileio import atomic_write_bytes, create_new_file, safe_mkdirs, safe_subfolder
from ..runlock import RunLock
from ..textsafe import csv_cell, printable
from ..video import VIDEO_EXTENSIONS, parse_source

log = logging.getLogger("poster")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="recognise the expressions of faces in images, folders, videos, webcams, streams",
        description="Find every face (YuNet, bundled), align it like the training crops, and predict its "
                    "expression with a POSTER checkpoint. INPUTS may be image files, folders (searched "
                    "recursively), video files, webcams (0, webcam:0) or stream URLs (rtsp://, http://).",
        epilog="Records: source, frame, face index, box (x y w h), 5 landmarks (right eye, left eye, nose, "
               "right and left mouth corner), detection score, per-class probabilities, top label.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image, folder, video, webcam index or URL")
    p.add_argument("-c", "--checkpoint", default=None,
                   help="weights file or release name (default: the bundled model, when installed)")
    p.add_argument("--detector", default="yunet", choices=list_detectors(),
                   help="face detector; 'none': every image is already one aligned face (default: yunet)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnx", "torchscript"),
                   help="what runs the model: auto picks by the file (.onnx: ONNX Runtime; a TorchScript "
                        "export; else PyTorch)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="PyTorch runtime, which runs BN-folded and channels-last: bf16 autocast (much faster "
                        "on GPUs and on CPUs with bf16 instructions such as AMX; probabilities within ~1e-2) or "
                        "fp32 (within 1e-4 of the exact function); auto (default): bf16 where it is native, "
                        "else fp32")
    p.add_argument("--eager", action="store_true",
                   help="PyTorch runtime: run the model exactly as written in fp32 (no BN folding, no "
                        "channels-last; slower)")
    p.add_argument("--compile", action="store_true",
                   help="PyTorch runtime: torch.compile the model (the first batch pays the compile time)")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="faces per model batch (default 32)")
    p.add_argument("-k", "--top-k", type=int, default=3,
                   help="classes shown per face in the annotations, the printout and the top_k field (default 3)")
    p.add_argument("--min-face", type=float, default=0.0, help="ignore faces smaller than this many pixels")
    p.add_argument("--crop-size", type=int, default=100,
                   help="side of the aligned face crop before the model's resize (default 100, like RAF-DB's "
                        "aligned faces; 0: the model's input size)")
    p.add_argument("--grayscale", action=argparse.BooleanOptionalAction, default=None,
                   help="turn face crops grey first (for models trained on grey faces, e.g. FER2013); "
                        "default: what the checkpoint's metadata says")
    p.add_argument("--score-threshold", type=float, default=0.6, help="YuNet face score threshold (default 0.6)")
    p.add_argument("-o", "--output-dir", default="runs/predict", help="where results and annotations go "
                   "(default runs/predict; an existing non-empty folder becomes DIR2, DIR3, ...)")
    p.add_argument("--exist-ok", action="store_true",
                   help="write into --output-dir even if it holds an earlier run (its results file is replaced)")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="results file format")
    p.add_argument("--annotate", action=argparse.BooleanOptionalAction, default=True,
                   help="write annotated images/videos (default: yes)")
    p.add_argument("--smooth", type=float, default=None, metavar="ALPHA",
                   help="videos: exponential smoothing of each face's probabilities across frames, "
                        "new = ALPHA * previous + (1 - ALPHA) * current (0 <= ALPHA < 1)")
    p.add_argument("--every-n", type=int, default=1, metavar="N", help="videos: process one frame in N")
    p.add_argument("--max-frames", type=int, default=None, help="videos: stop after this many processed frames")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print one line per face")
    p.set_defaults(run=run)


# ---------------------------------------------------------------------------------------------
# Inputs


RUN_MARKER = ".poster-predict-run"  # marks a predict output folder; folder walks do not read it


@dataclass
class _Input:
    kind: str  # "image", "video", "skip", "missing", "special", "run-folder"
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


def _classify(path: Path, rel: Path) -> _Input:
    if not _is_image(path) and not _is_video(path):
        return _Input("skip", path)
    if not _is_regular_file(path):
        return _Input("special", path)
    return _Input("image" if _is_image(path) else "video", path, rel)


def _walk(folder: Path, exclude: set[Path]) -> Iterator[_Input]:
    """Files under ``folder`` in a stable (sorted) order, lazily; run folders of ``poster predict``
    (this run's output folder and earlier ones) are not entered."""
    label = _folder_label(folder)
    for root, dirs, files in os.walk(folder):
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            sub = Path(root) / d
            if sub.resolve() in exclude or (sub / RUN_MARKER).exists():
                yield _Input("run-folder", sub)
            else:
                kept.append(d)
        dirs[:] = kept
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            yield _classify(path, Path(label) / path.relative_to(folder))


def expand_inputs(inputs: list[str], exclude: set[Path] | None = None) -> Iterator[_Input]:
    """What each command-line input stands for; ``exclude``: resolved folders never walked into."""
    exclude = exclude or set()
    for text in inputs:
        kind, target = parse_source(text)
        if kind == "webcam":
            yield _Input("video", target, Path(f"webcam{target}.mp4"))
            continue
        if kind == "stream":
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(target).split("://", 1)[-1])[:80]
            yield _Input("video", target, Path(f"stream_{safe}.mp4"))
            continue
        path = Path(text)
        if path.is_dir():
            if path.resolve() in exclude:
                yield _Input("run-folder", path)
            else:
                yield from _walk(path, exclude)
        elif path.is_file():
            yield _Input("video" if _is_video(path) else "image", path, Path(path.name))
        elif path.exists():
            yield _Input("special", path)
        else:
            yield _Input("missing", path)


# ---------------------------------------------------------------------------------------------
# Results file


class _ResultsWriter:
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
            lm_cols = [f"{n}_{a}" for n in LANDMARK_NAMES for a in ("x", "y")]
            self._csv.writerow(["source", "frame", "face", "x", "y", "w", "h", *lm_cols, "score", "label",
                                "confidence", *[csv_cell(f"p_{c}") for c in class_names], "top_k", "note"])

    def write(self, source: str, frame: int | None, face=None, note: str = "", error: str | None = None) -> None:
        """One record: a face, or (``face=None``) an input without a face or with an ``error``."""
        if self.fmt == "jsonl":
            rec: dict[str, Any] = {"source": source, "frame": frame}
            if face is not None:
                rec.update(face.to_dict())
                rec["top_k"] = [[n, round(p, 6)] for n, p in face.top_k(self.top_k)]
            else:
                rec.update({"face": None, "num_faces": 0})
            if error is not None:
                rec["error"] = error
            if note:
                rec["note"] = note
            self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        else:
            text = "; ".join(t for t in (note, f"error: {error}" if error is not None else "") if t)
            frame_cell = "" if frame is None else frame
            if face is None:
                row = [csv_cell(source), frame_cell] + [""] * (1 + 4 + 10 + 3 + len(self.class_names) + 1) \
                    + [csv_cell(text)]
            else:
                lm = [f"{v:.2f}" for pt in (face.landmarks or ()) for v in pt] or [""] * 10
                row = [csv_cell(source), frame_cell, face.index, *[f"{v:.2f}" for v in face.box], *lm,
                       f"{face.score:.5f}", csv_cell(face.label), f"{face.confidence:.6f}",
                       *[f"{face.probabilities[c]:.6f}" for c in self.class_names],
                       csv_cell(";".join(f"{n}:{p:.4f}" for n, p in face.top_k(self.top_k))), csv_cell(text)]
            self._csv.writerow(row)
        self._f.flush()

    def close(self) -> Path:
        self._f.close()
        os.replace(self.tmp, self.path)
        return self.path


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class _Summary:
    images: int = 0
    images_without_face: int = 0
    videos: int = 0
    frames: int = 0
    frames_failed: int = 0
    faces: int = 0
    unreadable: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.images + self.frames


def _unique(path: Path, used: set[Path]) -> Path:
    candidate, n = path, 1
    while candidate in used:
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    used.add(candidate)
    return candidate


def _safe_target(annotated_dir: Path, out: Path) -> Path:
    """``out``'s folders created under ``annotated/`` without following links planted there."""
    safe_mkdirs(annotated_dir)
    folder = safe_subfolder(annotated_dir, out.parent.relative_to(annotated_dir))
    return folder / out.name


def _print_faces(result, top_k: int, quiet: bool) -> None:
    if quiet:
        return
    source = printable(result.source)
    where = source if result.frame is None else f"{source} frame {result.frame}"
    if not result.faces:
        print(f"{where}: no face found")
        return
    for face in result.faces:
        others = ", ".join(f"{printable(n)} {p:.2f}" for n, p in face.top_k(top_k)[1:])
        x, y, w, h = (int(round(v)) for v in face.box)
        print(f"{where}: face {face.index} at ({x},{y},{w}x{h}): {printable(face.label)} {face.confidence:.2f}"
              + (f" ({others})" if others else ""))


def _run_images(rec, items: list[_Input] | Iterator[_Input], args, writer: _ResultsWriter, summary: _Summary,
                annotated_dir: Path, used: set[Path]) -> None:
    from ..predict import annotate

    rel_of: dict[str, Path | None] = {}

    def named() -> Iterator[tuple[str, Any]]:
        for item in items:
            rel_of[str(item.target)] = item.rel
            yield str(item.target), Path(item.target)

    for result in rec.predict_many(named(), keep_images=args.annotate):
        rel = rel_of.pop(result.source, None)
        if result.error is not None:
            print(f"skipped unreadable file: {printable(result.error)}", file=sys.stderr)
            summary.unreadable.append(result.source)
            writer.write(result.source, None, None, error=result.error)
            continue
        summary.images += 1
        summary.faces += len(result.faces)
        if not result.faces:
            summary.images_without_face += 1
            writer.write(result.source, None, None, "no face found")
        for face in result.faces:
            writer.write(result.source, None, face)
        _print_faces(result, args.top_k, args.quiet)
        if args.annotate and result.image is not None:
            picture = annotate(result.image, result, args.top_k, rec.class_names)
            out = annotated_dir / (rel or Path(Path(result.source).name))
            if out.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp", ".webp"):
                out = out.with_suffix(".png")
            out = _unique(out, used)
            ok, data = cv2.imencode(out.suffix.lower(), picture)
            if ok:
                atomic_write_bytes(_safe_target(annotated_dir, out), data.tobytes())


def _run_video(rec, item: _Input, args, writer: _ResultsWriter, summary: _Summary, annotated_dir: Path,
               used: set[Path]) -> None:
    from ..predict import annotate
    from ..video import VideoSink

    try:
        video = rec.predict_video(item.target, every_n=args.every_n, smoothing=args.smooth,
                                  keep_images=args.annotate, max_frames=args.max_frames)
    except PosterError as exc:
        print(f"skipped unreadable video: {printable(exc)}", file=sys.stderr)
        summary.unreadable.append(str(item.target))
        writer.write(str(item.target), None, None, error=str(exc))
        return
    sink = None
    if args.annotate:
        rel = (item.rel or Path(f"{video.source}.mp4")).with_suffix(".mp4")
        fps = (video.fps or 25.0) / max(1, args.every_n)
        sink = VideoSink(_safe_target(annotated_dir, _unique(annotated_dir / rel, used)), fps=fps)
    frames = faces = 0
    log.info("%s: video %s fps, %s frames", printable(video.source), round(video.fps, 2) or "?", video.reader.frame_count or "?")
    stream = iter(video)
    try:
        for result in stream:
            frames += 1
            faces += len(result.faces)
            if not result.faces:
                writer.write(result.source, result.frame, None, "no face found")
            for face in result.faces:
                writer.write(result.source, result.frame, face)
            if sink is not None and result.image is not None:
                sink.write(annotate(result.image, result, args.top_k, rec.class_names, extend_canvas=False))
    except BaseException:
        if sink is not None:
            written = sink.close()  # keep what was annotated so far (e.g. webcam stopped with Ctrl-C)
            if written:
                print(f"annotated video (partial): {printable(written)}")
        raise
    finally:
        stream.close()
        video.close()
        summary.frames += frames
        summary.faces += faces
        summary.frames_failed += video.frames_failed
    if frames == 0:
        print(f"skipped unreadable video: no frame could be decoded from {printable(video.source)}", file=sys.stderr)
        summary.unreadable.append(video.source)
        writer.write(video.source, None, None, error="no frame could be decoded")
        if sink is not None:
            sink.abort()
        return
    summary.videos += 1
    written = sink.close() if sink is not None else None
    failed = f", {video.frames_failed} undecodable frames skipped" if video.frames_failed else ""
    print(f"{printable(video.source)}: {frames} frames, {faces} faces{failed}"
          + (f" -> {printable(written)}" if written else ""))


@dataclass
class _Shard:
    """This process's share of a ``torchrun`` launch: every ``world_size``-th input, starting at ``rank``.

    Each rank writes ``results.rank<r>.<fmt>``; when all are done, rank 0 merges them into
    ``results.<fmt>`` (rank order, one CSV header) and removes the parts.
    """

    rank: int = 0
    world_size: int = 1
    device: str = "auto"

    @classmethod
    def from_environment(cls, device: str) -> "_Shard":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=device)
        import torch

        from ..train.distributed import init_distributed

        use_cuda = device == "auto" and torch.cuda.is_available() or str(device).startswith("cuda")
        info = init_distributed("cuda" if use_cuda else "cpu")
        return cls(info.rank, info.world_size, f"cuda:{info.local_rank}" if use_cuda else device)

    def share(self, make: Any) -> Any:
        """``make()`` run on rank 0 only, its value handed to every rank (one output folder for all)."""
        if self.world_size == 1:
            return make()
        import torch.distributed as dist

        box = [make() if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def take(self, items: Iterator[_Input]) -> Iterator[_Input]:
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


MAX_CROP_SIZE = 1024  # a face crop of 20,000 pixels a side would take gigabytes per face


def _check_options(args: argparse.Namespace) -> None:
    """Every out-of-range value is one clear error before any model or file is touched."""
    if args.batch_size < 1:
        raise PosterError("--batch-size must be at least 1")
    if args.every_n < 1:
        raise PosterError("--every-n must be at least 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise PosterError("--max-frames must be at least 1")
    if args.smooth is not None and not 0.0 <= args.smooth < 1.0:
        raise PosterError("--smooth must be in [0, 1)")
    if args.crop_size < 0 or 0 < args.crop_size < 8 or args.crop_size > MAX_CROP_SIZE:
        raise PosterError(f"--crop-size must be 0 (the model's input size) or 8 to {MAX_CROP_SIZE} pixels")
    if args.top_k < 0:
        raise PosterError("--top-k must be >= 0")
    if not math.isfinite(args.min_face) or args.min_face < 0:
        raise PosterError(f"--min-face must be a number of pixels >= 0, got {args.min_face}")
    if not (math.isfinite(args.score_threshold) and 0.0 <= args.score_threshold <= 1.0):
        raise PosterError(f"--score-threshold must be between 0 and 1, got {args.score_threshold}")


def _check_runtime(checkpoint: str, runtime: str) -> None:
    """A file that the asked-for runtime cannot run is named with the way to get one it can."""
    path = Path(checkpoint)
    if runtime == "onnx" and path.suffix.lower() != ".onnx":
        raise PosterError(f"--runtime onnx needs an ONNX file, not {printable(checkpoint)}; export it first: "
                          f"poster export -c {printable(checkpoint)}")
    if runtime == "torchscript" and not is_torchscript_file(path):
        raise PosterError(f"--runtime torchscript needs a TorchScript export, not {printable(checkpoint)}; export it "
                          f"first: poster export -f torchscript -c {printable(checkpoint)}")


def is_torchscript_file(path: Path) -> bool:
    from ..runtime import is_torchscript_file as check

    return path.is_file() and check(path)


def _claim_output_dir(requested: str, exist_ok: bool) -> Path:
    """A fresh run folder (``DIR``, ``DIR2``, ... first one missing or empty) or, with ``exist_ok``,
    ``DIR`` itself; refused when it is a file, a link, or not writable."""
    from ..fileio import claim_run_folder

    try:
        return claim_run_folder(requested, exist_ok=exist_ok)
    except OSError as exc:
        where = printable(exc.filename or requested)
        raise PosterError(f"cannot use output folder {where}: {exc.strerror or exc}") from None


def _prepare_output_dir(out_dir: Path, results_name: str) -> RunLock:
    """Lock the run folder, mark it as one, and clear what an earlier run in it (``--exist-ok``)
    left under the names this run writes: a killed run must not leave the previous results."""
    lock = RunLock(out_dir, "poster predict").acquire()
    for name in (results_name, results_name + ".partial", "annotated"):
        entry = out_dir / name
        if entry.is_symlink():
            lock.release()
            raise PosterError(f"{printable(entry)} is a symbolic link: refusing to write through it "
                              "(remove it or choose another output folder)")
    (out_dir / results_name).unlink(missing_ok=True)
    return lock


def _print_summary(summary: _Summary, results_path: Path, annotated_dir: Path | None) -> None:
    parts = [f"{summary.images} images ({summary.images_without_face} without a face)"]
    if summary.videos or summary.frames:
        parts.append(f"{summary.videos} videos ({summary.frames} frames"
                     + (f", {summary.frames_failed} undecodable frames skipped" if summary.frames_failed else "") + ")")
    parts.append(f"{summary.faces} faces")
    parts.append(f"{len(summary.unreadable)} unreadable")
    parts.append(f"{len(summary.skipped)} skipped (not images)")
    print("Summary: " + ", ".join(parts))
    if summary.unreadable:
        print("Unreadable: " + ", ".join(printable(u) for u in summary.unreadable))
    print(f"results: {printable(results_path)}" + (f"\nannotated: {printable(annotated_dir)}" if annotated_dir else ""))


def _report_other(item: _Input, writer: _ResultsWriter, summary: _Summary) -> None:
    where = printable(item.target)
    if item.kind == "skip":
        print(f"note: skipped (not an image or video): {where}", file=sys.stderr)
        summary.skipped.append(str(item.target))
    elif item.kind == "run-folder":
        print(f"note: skipped the output folder of a poster predict run: {where}", file=sys.stderr)
    elif item.kind == "special":
        print(f"skipped: not a regular file (FIFO, device or socket; never opened): {where}", file=sys.stderr)
        summary.unreadable.append(str(item.target))
        writer.write(str(item.target), None, None, error="not a regular file")
    else:
        print(f"skipped missing input: {where} (no such file or folder)", file=sys.stderr)
        summary.unreadable.append(str(item.target))
        writer.write(str(item.target), None, None, error="no such file or folder")


def _load_recognizer(args: argparse.Namespace, checkpoint: str, runtime: str, device: str):
    from ..accelerate import describe_inference
    from ..predict import Recognizer
    from ..runtime import load_backend

    options = {"score_threshold": args.score_threshold} if args.detector == "yunet" else {}
    common = dict(device=device, detector=args.detector, batch_size=args.batch_size, min_face=args.min_face,
                  detector_options=options, crop_size=args.crop_size if args.crop_size > 0 else None,
                  grayscale=args.grayscale)
    if runtime == "torch":
        if args.eager and args.precision == "bf16":
            raise PosterError("--eager runs the model as written in fp32; it cannot be combined with --precision bf16")
        precision = "fp32" if args.eager else args.precision
        rec = Recognizer(checkpoint, precision=precision, compile=args.compile, fast=not args.eager, **common)
        engine = "PyTorch " + describe_inference(rec.fast_inference)
    else:
        if args.precision != "auto" or args.compile or args.eager:
            raise PosterError(f"--precision, --eager and --compile apply to the PyTorch runtime, not {runtime}")
        backend, meta = load_backend(checkpoint, runtime, device=device)
        rec = Recognizer(None, backend=backend, meta=meta, **common)
        engine = {"onnx": "ONNX Runtime", "torchscript": "TorchScript"}[runtime]
    log.info("model %s (%s input, classes %s) on %s with %s; detector %s", printable(rec.meta.arch),
             rec.channel_order, printable(", ".join(rec.class_names)), rec.device, engine, args.detector)
    return rec


def run(args: argparse.Namespace) -> int:
    from ..evaluate import resolve_device
    from ..predict import default_checkpoint
    from ..runtime import detect_runtime

    _check_options(args)
    if args.device != "auto":
        resolve_device(args.device)  # a bad device name is an error before anything is loaded
    checkpoint = args.checkpoint if args.checkpoint is not None else default_checkpoint()
    runtime = detect_runtime(checkpoint) if args.runtime == "auto" else args.runtime
    _check_runtime(checkpoint, runtime)
    shard = _Shard.from_environment(args.device)
    # the run folder is claimed and locked before the model loads: a busy or unusable folder is
    # the first and only thing said
    out_dir = Path(shard.share(lambda: str(_claim_output_dir(args.output_dir, args.exist_ok))))
    results_name = f"results.{args.format}" if shard.world_size == 1 else f"results.rank{shard.rank}.{args.format}"
    lock = _prepare_output_dir(out_dir, results_name) if shard.rank == 0 else None
    try:
        if shard.rank != 0:
            (out_dir / results_name).unlink(missing_ok=True)
        rec = _load_recognizer(args, checkpoint, runtime, shard.device)
        return _predict_into(rec, args, shard, out_dir, results_name)
    finally:
        if lock is not None:
            lock.release()


def _predict_into(rec, args: argparse.Namespace, shard: _Shard, out_dir: Path, results_name: str) -> int:
    marker = out_dir / RUN_MARKER
    if shard.rank == 0 and not marker.exists():
        atomic_write_bytes(marker, b"poster predict output folder: folder inputs never read it\n")
    annotated_dir = out_dir / "annotated"
    writer = _ResultsWriter(out_dir / results_name, args.format, rec.class_names, args.top_k)
    summary = _Summary()
    used: set[Path] = set()
    interrupted = False
    try:
        kinds = (lambda it: "video" if it.kind == "video" else "image" if it.kind == "image" else "other")
        items = expand_inputs(args.inputs, exclude={out_dir.resolve()})
        for kind, group in itertools.groupby(shard.take(items), key=kinds):
            if kind == "image":
                _run_images(rec, group, args, writer, summary, annotated_dir, used)
            elif kind == "video":
                for item in group:
                    _run_video(rec, item, args, writer, summary, annotated_dir, used)
            else:
                for item in group:
                    _report_other(item, writer, summary)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        results_path = shard.merge(writer.close(), out_dir / f"results.{args.format}", args.format)

    _print_summary(summary, results_path, annotated_dir if args.annotate and used else None)
    if interrupted:
        print("interrupted: the results so far are kept", file=sys.stderr)
        if summary.processed == 0:
            return 130
    if summary.processed == 0:
        print("error: nothing could be processed", file=sys.stderr)
        return 1
    return 0
