"""``poster benchmark``: our fast path against a reference-equivalent path, in one process."""

from __future__ import annotations

import argparse
import logging

from ..errors import PosterError

log = logging.getLogger(__name__)


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
    p.add_argument("--model", default="poster_v1_large", choices=("poster_v1_large", "poster_v2", "poster_v1_tiny"))
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-sizes", type=_int_list, default=None,
                   help="inference batch sizes, comma-separated (default 1,32,256 on GPU, 1,8 on CPU)")
    p.add_argument("--train-batch-size", type=int, default=None,
                   help="SAM training batch (default: the recipe's on GPU - 200 V1, 144 V2 -, 8 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed SAM steps per path (default 10 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed SAM steps first (default 3 GPU, 1 CPU)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    p.add_argument("--compile", action="store_true", help="torch.compile the fast path (compile time reported)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="fast path precision (auto: bf16 autocast on CUDA and on CPUs with bf16 instructions "
                        "(AMX/AVX512-BF16), fp32 otherwise)")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="fast path memory format (auto: channels-last whenever bf16 is on)")
    p.add_argument("--workers", type=int, default=2, help="reference DataLoader workers (the original's 2)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per inference measurement")
    p.add_argument("--no-cpu-compare", action="store_true", help="skip the CPU batch-1 comparison")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime in the CPU comparison")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", default=None, help="write every number as JSON here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..benchmark import BenchmarkOptions, format_report, run_benchmark

    if args.threads is not None:
        if args.threads < 1:
            raise PosterError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    options = BenchmarkOptions(
        model=args.model, device=args.device, batch_sizes=args.batch_sizes, train_batch_size=args.train_batch_size,
        steps=args.steps, warmup=args.warmup, quick=args.quick, compile=args.compile, precision=args.precision,
        channels_last=args.channels_last, workers=args.workers, cpu_compare=not args.no_cpu_compare,
        onnx=not args.no_onnx, min_time=args.min_time, seed=args.seed, json_path=args.json_path)
    report = run_benchmark(options)
    print(format_report(report))
    if args.json_path:
        print(f"json: {args.json_path}")
    return 0
