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
import logging
import math
import sys
from pathlib import Path

from ..precision import REQUESTS
from ..errors import PosterError
from ..face import DETECTOR_NAMES
from ..inference.options import BatchOptions
from ..textsafe import printable

log = logging.getLogger(__name__)

# The batch job's option defaults live on BatchOptions; the parser reads them from there.
DEFAULTS = BatchOptions()


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
    p.add_argument("--detector", default="yunet", choices=DETECTOR_NAMES,
                   help="face detector; 'none': every image is already one aligned face (default: yunet)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnx", "torchscript"),
                   help="what runs the model: auto picks by the file (.onnx: ONNX Runtime; a TorchScript "
                        "export; else PyTorch)")
    p.add_argument("--precision", default="auto", choices=REQUESTS,
                   help="PyTorch runtime, which runs BN-folded and channels-last: bf16 autocast (much faster "
                        "on GPUs and on CPUs with bf16 instructions such as AMX; probabilities within ~1e-2) or "
                        "fp32 (within 1e-4 of the exact function); auto (default): bf16 where it is native, "
                        "else fp32")
    p.add_argument("--eager", action="store_true",
                   help="PyTorch runtime: run the model exactly as written in fp32 (no BN folding, no "
                        "channels-last; slower)")
    p.add_argument("--compile", action="store_true",
                   help="PyTorch runtime: torch.compile the model (the first batch pays the compile time)")
    p.add_argument("-b", "--batch-size", type=int, default=None,
                   help="faces per model batch (default 8 on a CPU, where larger batches run slower, 32 on a GPU)")
    p.add_argument("--model-workers", type=int, default=None,
                   help="model batches run at once (default 2 for the PyTorch fast path on a CPU, each on half "
                        "of the threads, which keeps the cores busier; else 1)")
    p.add_argument("-k", "--top-k", type=int, default=DEFAULTS.top_k,
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
                   help="write into --output-dir even if it holds an earlier run (its results file and "
                        "annotated/ are removed first)")
    p.add_argument("--format", choices=("jsonl", "csv"), default=DEFAULTS.fmt, help="results file format")
    p.add_argument("--annotate", action=argparse.BooleanOptionalAction, default=DEFAULTS.annotate,
                   help="write annotated images/videos (default: yes)")
    p.add_argument("--smooth", type=float, default=DEFAULTS.smoothing, metavar="ALPHA",
                   help="videos: exponential smoothing of each face's probabilities across frames, "
                        "new = ALPHA * previous + (1 - ALPHA) * current (0 <= ALPHA < 1)")
    p.add_argument("--every-n", type=int, default=DEFAULTS.every_n, metavar="N", help="videos: process one frame in N")
    p.add_argument("--max-frames", type=int, default=DEFAULTS.max_frames, help="videos: stop after this many processed frames")
    p.add_argument("--detect-every", type=int, default=DEFAULTS.detect_every, metavar="K",
                   help="videos: a full face detection every K processed frames, each face followed in between "
                        "by a detection around its last box (about twice as fast; default 5; 1: detect in "
                        "every frame)")
    p.add_argument("--timeline", action=argparse.BooleanOptionalAction, default=DEFAULTS.timeline,
                   help="videos: write timelines/<video>.tracks.csv/.parquet (one row per face per frame), "
                        ".summary.csv/.json (per face) and .timeline.png (default: yes)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print one line per face")
    p.set_defaults(run=run)


# ---------------------------------------------------------------------------------------------
# Printing


class _Printer:
    """What the batch job tells (a ``poster.inference.batch.BatchListener``), printed: one line per
    face (unless ``--quiet``), problems on stderr."""

    def __init__(self, top_k: int, quiet: bool) -> None:
        self.top_k = top_k
        self.quiet = quiet

    def image(self, result) -> None:
        _print_faces(result, self.top_k, self.quiet)

    def note(self, text: str, problem: bool = False) -> None:
        print(text, file=sys.stderr if problem else sys.stdout)


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


def _print_summary(summary, results_path: Path, annotated_dir: Path | None) -> None:
    parts = [f"{summary.images} images ({summary.images_without_face} without a face)"]
    if summary.videos or summary.frames:
        parts.append(f"{summary.videos} videos ({summary.frames} frames"
                     + (f", {summary.frames_failed} undecodable frames skipped" if summary.frames_failed else "")
                     + (f", {summary.videos_cut_short} cut short" if summary.videos_cut_short else "") + ")")
    parts.append(f"{summary.faces} faces")
    parts.append(f"{len(summary.unreadable)} unreadable")
    parts.append(f"{len(summary.skipped)} skipped (not images)")
    print("Summary: " + ", ".join(parts))
    if summary.unreadable:
        print("Unreadable: " + ", ".join(printable(u) for u in summary.unreadable))
    print(f"results: {printable(results_path)}" + (f"\nannotated: {printable(annotated_dir)}" if annotated_dir else ""))



# ---------------------------------------------------------------------------------------------
# Running


MAX_MODEL_WORKERS = 64  # each holds a batch of activations; more than the cores only adds memory
MAX_CROP_SIZE = 1024  # a face crop of 20,000 pixels a side would take gigabytes per face


def _check_options(args: argparse.Namespace) -> None:
    """Every out-of-range value is one clear error before any model or file is touched."""
    if args.batch_size is not None and args.batch_size < 1:
        raise PosterError("--batch-size must be at least 1")
    if args.model_workers is not None and not 1 <= args.model_workers <= MAX_MODEL_WORKERS:
        raise PosterError(f"--model-workers must be 1 to {MAX_MODEL_WORKERS}")
    if args.every_n < 1:
        raise PosterError("--every-n must be at least 1")
    if args.detect_every < 1:
        raise PosterError("--detect-every must be at least 1")
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
    from ..inference.runtime import is_torchscript_file as check

    return path.is_file() and check(path)


def _load_recognizer(args: argparse.Namespace, checkpoint: str, runtime: str, device: str):
    from ..inference.recognizer import Recognizer

    options = {"score_threshold": args.score_threshold} if args.detector == "yunet" else {}
    rec = Recognizer.open(checkpoint, runtime=runtime, device=device, detector=args.detector,
                          precision=args.precision, eager=args.eager, compile=args.compile,
                          batch_size=args.batch_size, min_face=args.min_face, detector_options=options,
                          crop_size=args.crop_size if args.crop_size > 0 else None, grayscale=args.grayscale,
                          model_workers=args.model_workers)
    log.info("model %s (%s input, classes %s) on %s with %s; detector %s", printable(rec.meta.arch),
             rec.channel_order, printable(", ".join(rec.class_names)), rec.device, rec.engine, args.detector)
    return rec


def _say_what_becomes_of_killed_runs(requested: str, folder: Path) -> None:
    """A second run after a killed one says whether it starts afresh beside it or in its place."""
    from ..inference.batch import interrupted_runs

    for partial, records in interrupted_runs(requested, folder):
        what = (f"{printable(partial.parent)} holds an interrupted run ({printable(partial.name)}, "
                f"{records} complete records)")
        if partial.parent == folder:
            print(f"note: {what}; --exist-ok: it is replaced, this run starts afresh there")
        else:
            print(f"note: {what}, kept as it is; this run starts afresh in {printable(folder)}")


def run(args: argparse.Namespace) -> int:
    # torch, OpenCV and the inference stack load here, not when the parser is built (poster --help)
    from ..device import resolve_device
    from ..inference.batch import Shard, check_inputs, open_run_folder, run_batch
    from ..inference.recognizer import default_checkpoint
    from ..inference.runtime import detect_runtime

    _check_options(args)
    if args.device != "auto":
        resolve_device(args.device)  # a bad device name is an error before anything is loaded
    checkpoint = args.checkpoint if args.checkpoint is not None else default_checkpoint()
    runtime = detect_runtime(checkpoint) if args.runtime == "auto" else args.runtime
    _check_runtime(checkpoint, runtime)
    check_inputs(args.inputs)  # a run of nothing (missing paths, empty folders) is refused here
    shard = Shard.from_environment(args.device)
    # the run folder is claimed and locked before the model loads: a busy or unusable folder is
    # the first and only thing said
    with open_run_folder(args.output_dir, args.exist_ok, args.format, shard) as run_folder:
        if shard.rank == 0:
            _say_what_becomes_of_killed_runs(args.output_dir, run_folder.folder)
        rec = _load_recognizer(args, checkpoint, runtime, shard.device)
        options = BatchOptions(fmt=args.format, top_k=args.top_k, annotate=args.annotate, every_n=args.every_n,
                               smoothing=args.smooth, max_frames=args.max_frames,
                               detect_every=args.detect_every, timeline=args.timeline)
        summary, results_path = run_batch(rec, args.inputs, run_folder.folder, options, shard,
                                          _Printer(args.top_k, args.quiet))
    _print_summary(summary, results_path, run_folder.folder / "annotated" if summary.annotated else None)
    if summary.interrupted:
        print("interrupted: the results so far are kept", file=sys.stderr)
        if summary.processed == 0:
            return 130
    if summary.processed == 0:
        print("error: nothing could be processed", file=sys.stderr)
        return 1
    return 0
