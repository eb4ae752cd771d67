"""``poster predict``: expressions of the faces in photos, folders, videos, webcams and streams.

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
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, TextIO

import cv2

from ..data.transforms import IMAGE_EXTENSIONS
from ..errors import PosterError
from ..face.detect import LANDMARK_NAMES, list_detectors
from ..fileio import atomic_write_bytes
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
                   "(default runs/predict)")
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


@dataclass
class _Input:
    kind: str  # "image", "video", "skip", "missing"
    target: Any
    rel: Path | None = None  # path under the annotated/ folder (without suffix change)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _walk(folder: Path) -> Iterator[_Input]:
    """Files under ``folder`` in a stable (sorted) order, lazily."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            rel = Path(folder.name) / path.relative_to(folder)
            if name.startswith("."):
                continue
            if _is_image(path):
                yield _Input("image", path, rel)
            elif _is_video(path):
                yield _Input("video", path, rel)
            else:
                yield _Input("skip", path)


def expand_inputs(inputs: list[str]) -> Iterator[_Input]:
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
            yield from _walk(path)
        elif path.is_file():
            yield _Input("video" if _is_video(path) else "image", path, Path(path.name))
        else:
            yield _Input("missing", path)


# ---------------------------------------------------------------------------------------------
# Results file


class _ResultsWriter:
    """Records appended as they come to ``<final>.partial``; renamed to ``final`` on ``close``."""

    def __init__(self, path: Path, fmt: str, class_names: tuple[str, ...], top_k: int) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".partial")
        self.fmt = fmt
        self.class_names = class_names
        self.top_k = top_k
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: TextIO = open(self.tmp, "w", encoding="utf-8", newline="")
        self._csv = None
        if fmt == "csv":
            self._csv = csv.writer(self._f)
            lm_cols = [f"{n}_{a}" for n in LANDMARK_NAMES for a in ("x", "y")]
            self._csv.writerow(["source", "frame", "face", "x", "y", "w", "h", *lm_cols, "score", "label",
                                "confidence", *[f"p_{c}" for c in class_names], "top_k", "note"])

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
                row = [source, frame_cell] + [""] * (1 + 4 + 10 + 3 + len(self.class_names) + 1) + [text]
            else:
                lm = [f"{v:.2f}" for pt in (face.landmarks or ()) for v in pt] or [""] * 10
                row = [source, frame_cell, face.index, *[f"{v:.2f}" for v in face.box], *lm,
                       f"{face.score:.5f}", face.label, f"{face.confidence:.6f}",
                       *[f"{face.probabilities[c]:.6f}" for c in self.class_names],
                       ";".join(f"{n}:{p:.4f}" for n, p in face.top_k(self.top_k)), text]
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


def _print_faces(result, top_k: int, quiet: bool) -> None:
    if quiet:
        return
    where = result.source if result.frame is None else f"{result.source} frame {result.frame}"
    if not result.faces:
        print(f"{where}: no face found")
        return
    for face in result.faces:
        others = ", ".join(f"{n} {p:.2f}" for n, p in face.top_k(top_k)[1:])
        x, y, w, h = (int(round(v)) for v in face.box)
        print(f"{where}: face {face.index} at ({x},{y},{w}x{h}): {face.label} {face.confidence:.2f}"
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
            print(f"skipped unreadable file: {result.error}", file=sys.stderr)
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
                atomic_write_bytes(out, data.tobytes())


def _run_video(rec, item: _Input, args, writer: _ResultsWriter, summary: _Summary, annotated_dir: Path,
               used: set[Path]) -> None:
    from ..predict import annotate
    from ..video import VideoSink

    try:
        video = rec.predict_video(item.target, every_n=args.every_n, smoothing=args.smooth,
                                  keep_images=args.annotate, max_frames=args.max_frames)
    except PosterError as exc:
        print(f"skipped unreadable video: {exc}", file=sys.stderr)
        summary.unreadable.append(str(item.target))
        writer.write(str(item.target), None, None, error=str(exc))
        return
    sink = None
    if args.annotate:
        rel = (item.rel or Path(f"{video.source}.mp4")).with_suffix(".mp4")
        fps = (video.fps or 25.0) / max(1, args.every_n)
        sink = VideoSink(_unique(annotated_dir / rel, used), fps=fps)
    frames = faces = 0
    log.info("%s: video %s fps, %s frames", video.source, round(video.fps, 2) or "?", video.reader.frame_count or "?")
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
                print(f"annotated video (partial): {written}")
        raise
    finally:
        stream.close()
        video.close()
        summary.frames += frames
        summary.faces += faces
        summary.frames_failed += video.frames_failed
    if frames == 0:
        print(f"skipped unreadable video: no frame could be decoded from {video.source}", file=sys.stderr)
        summary.unreadable.append(video.source)
        writer.write(video.source, None, None, error="no frame could be decoded")
        if sink is not None:
            sink.abort()
        return
    summary.videos += 1
    written = sink.close() if sink is not None else None
    failed = f", {video.frames_failed} undecodable frames skipped" if video.frames_failed else ""
    print(f"{video.source}: {frames} frames, {faces} faces{failed}" + (f" -> {written}" if written else ""))


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


def run(args: argparse.Namespace) -> int:
    from ..accelerate import describe_inference
    from ..predict import Recognizer, default_checkpoint
    from ..runtime import detect_runtime, load_backend

    if args.batch_size < 1:
        raise PosterError("--batch-size must be at least 1")
    if args.every_n < 1:
        raise PosterError("--every-n must be at least 1")
    if args.smooth is not None and not 0.0 <= args.smooth < 1.0:
        raise PosterError("--smooth must be in [0, 1)")
    if args.crop_size < 0 or 0 < args.crop_size < 8:
        raise PosterError("--crop-size must be 0 (the model's input size) or at least 8 pixels")
    if args.top_k < 0:
        raise PosterError("--top-k must be >= 0")
    checkpoint = args.checkpoint if args.checkpoint is not None else default_checkpoint()
    options = {"score_threshold": args.score_threshold} if args.detector == "yunet" else {}
    shard = _Shard.from_environment(args.device)
    common = dict(device=shard.device, detector=args.detector, batch_size=args.batch_size, min_face=args.min_face,
                  detector_options=options, crop_size=args.crop_size if args.crop_size > 0 else None,
                  grayscale=args.grayscale)
    runtime = detect_runtime(checkpoint) if args.runtime == "auto" else args.runtime
    if runtime == "torch":
        if args.eager and args.precision == "bf16":
            raise PosterError("--eager runs the model as written in fp32; it cannot be combined with --precision bf16")
        precision = "fp32" if args.eager else args.precision
        rec = Recognizer(checkpoint, precision=precision, compile=args.compile, fast=not args.eager, **common)
        how = "PyTorch " + describe_inference(rec.fast_inference)
    else:
        if args.precision != "auto" or args.compile or args.eager:
            raise PosterError(f"--precision, --eager and --compile apply to the PyTorch runtime, not {runtime}")
        backend, meta = load_backend(checkpoint, runtime, device=shard.device)
        rec = Recognizer(None, backend=backend, meta=meta, **common)
        how = {"onnx": "ONNX Runtime"}.get(runtime, runtime)
    log.info("model %s (%s input, classes %s) on %s, %s; detector %s", rec.meta.arch, rec.channel_order,
             ", ".join(rec.class_names), rec.device, how, args.detector)

    out_dir = Path(args.output_dir)
    annotated_dir = out_dir / "annotated"
    results_name = f"results.{args.format}" if shard.world_size == 1 else f"results.rank{shard.rank}.{args.format}"
    writer = _ResultsWriter(out_dir / results_name, args.format, rec.class_names, args.top_k)
    summary = _Summary()
    used: set[Path] = set()
    interrupted = False
    try:
        kinds = (lambda it: "video" if it.kind == "video" else "image" if it.kind == "image" else "other")
        for kind, group in itertools.groupby(shard.take(expand_inputs(args.inputs)), key=kinds):
            if kind == "image":
                _run_images(rec, group, args, writer, summary, annotated_dir, used)
            elif kind == "video":
                for item in group:
                    _run_video(rec, item, args, writer, summary, annotated_dir, used)
            else:
                for item in group:
                    if item.kind == "skip":
                        print(f"note: skipped (not an image or video): {item.target}", file=sys.stderr)
                        summary.skipped.append(str(item.target))
                    else:
                        print(f"skipped missing input: {item.target} (no such file or folder)", file=sys.stderr)
                        summary.unreadable.append(str(item.target))
                        writer.write(str(item.target), None, None, error="no such file or folder")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        results_path = shard.merge(writer.close(), out_dir / f"results.{args.format}", args.format)

    parts = [f"{summary.images} images ({summary.images_without_face} without a face)"]
    if summary.videos or summary.frames:
        parts.append(f"{summary.videos} videos ({summary.frames} frames"
                     + (f", {summary.frames_failed} undecodable frames skipped" if summary.frames_failed else "") + ")")
    parts.append(f"{summary.faces} faces")
    parts.append(f"{len(summary.unreadable)} unreadable")
    parts.append(f"{len(summary.skipped)} skipped (not images)")
    print("Summary: " + ", ".join(parts))
    if summary.unreadable:
        print("Unreadable: " + ", ".join(summary.unreadable))
    print(f"results: {results_path}" + (f"\nannotated: {annotated_dir}" if args.annotate and used else ""))
    if interrupted:
        print("interrupted: the results so far are kept", file=sys.stderr)
        if summary.processed == 0:
            return 130
    if summary.processed == 0:
        print("error: nothing could be processed", file=sys.stderr)
        return 1
    return 0
