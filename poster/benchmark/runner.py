"""``poster benchmark``: our fast path against a reference-equivalent path, in one process.

Long because both paths, their measurements and the report are kept side by side, so that it is
visible that the two paths are measured the same way.

Both paths use the same model (same initial weights), the trainer's optimizer
(``poster.train.state.build_optimizer``) and SAM step (``poster.train.sam.sam_train_step``) with
the recipe's loss, on synthetic 100x100 JPEGs (RAF-DB-like aligned faces are 100x100) written to
a temporary folder.

* **reference**: what the original code does: per-image CPU transforms at 224 in a ``DataLoader``
  with the original's 2 worker processes (``poster.reference.ReferenceTrainDataset``: cv2 decode,
  V1 flip-or-noise, PIL bilinear resize to 224, flip, ToTensor/Normalize, random erasing), eager
  fp32 model fed the 224 tensors.
* **fast**: the uint8 112x112 cache (``poster.train.cache``) built once, batched on-device
  augmentation, bf16 autocast (CUDA, and CPUs with bf16 instructions such as AMX; fp32 on other
  CPUs), channels-last (whenever bf16 is on), fused Adam (CUDA), optional ``torch.compile``; inference through
  ``poster.inference.accelerate.prepare_inference`` (BN folded) and, on CUDA, a CUDA graph at batch 1.

Measured: SAM training images/s end to end (data included, after warm-up steps), the input
pipeline alone (images/s), inference images/s at several batch sizes (device-resident inputs),
batch-1 latency (median), peak memory (``torch.cuda.max_memory_allocated`` on GPU; on CPU the
peak resident set size of this process, reset per section through ``/proc/self/clear_refs``;
DataLoader worker processes are not included), compile and cache-build times, and on the CPU a
batch-1 comparison of eager fp32, BN-folded fp32 and ONNX Runtime at the current thread count.
Timings on a shared machine are noisy; no number here is a pass/fail criterion.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..inference.accelerate import CudaGraphRunner, prepare_inference, synchronize
from ..precision import channels_last_for, cpu_has_native_bf16, resolve_precision
from ..errors import PosterError
from .options import BenchmarkOptions
from ..device import resolve_device
from ..fileio import atomic_write_text
from ..meta import InputConfig, ModelMeta
from ..models import create_model
from ..reference import ReferenceTrainDataset
from ..train.augment import AugmentConfig
from ..train.cache import CachedBatches, build_uint8_cache
from ..train.data import EpochSampler
from ..train.losses import build_loss
from ..train.recipes import Recipe, get_recipe
from ..train.sam import sam_train_step
from ..train.state import build_optimizer

log = logging.getLogger(__name__)

__all__ = ["BenchmarkOptions", "run_benchmark", "format_report", "recipe_for"]

# --------------------------------------------------------------------------- helpers
def recipe_for(model: str) -> Recipe:
    """The training recipe whose augmentation/loss/optimizer the benchmark uses for ``model``."""
    if model == "poster_v2":
        return get_recipe("v2_rafdb")
    recipe = get_recipe("v1_rafdb")
    if model == "poster_v1_tiny":
        recipe = recipe.replace(arch="poster_v1_tiny", arch_options={"token_mixing": False})
    return recipe


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if found:
            return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _Memory:
    """Peak memory of a section: CUDA allocator peak, or this process's peak RSS on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (Linux >= 4.0)
        except OSError:
            pass

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            found = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
            return int(found.group(1)) / 1024 if found else None
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_synthetic_jpegs(folder: Path, count: int, seed: int = 0, size: int = 100) -> list[Path]:
    """``count`` smooth random colour images (size x size), JPEG quality 90 like the golden set."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise PosterError("cv2 could not encode a synthetic JPEG")
        p = folder / f"img_{i:05d}.jpg"
        p.write_bytes(buf.tobytes())
        paths.append(p)
    return paths


def _paired_seconds(fns: dict[str, tuple[Callable[[Any], Any], Any]], device: torch.device, min_time: float,
                    calls_per_round: bool = True, min_rounds: int = 3, max_rounds: int = 200) -> dict[str, dict]:
    """Seconds per call of several functions measured in *alternating* rounds (the order rotates
    every round), so that load from other processes hits all of them alike.

    Each entry of ``fns`` is ``name -> (fn, argument)``.  With ``calls_per_round`` a round is k
    back-to-back calls then one synchronisation (k chosen so a round takes about
    ``min_time / min_rounds / len(fns)``: throughput, launches may overlap); otherwise one
    synchronised call (latency).  Returns ``name -> {"median": s, "min": s, "rounds": n}``.
    """
    names = list(fns)
    per_call: dict[str, float] = {}
    for name in names:  # warm-up and calibration
        fn, arg = fns[name]
        fn(arg)
        synchronize(device)
        start = time.perf_counter()
        fn(arg)
        synchronize(device)
        per_call[name] = max(time.perf_counter() - start, 1e-6)
    target = min_time / (min_rounds * len(names))
    k = {n: (max(1, int(target / per_call[n])) if calls_per_round else 1) for n in names}
    samples: dict[str, list[float]] = {n: [] for n in names}
    began = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - began < min_time and rounds < max_rounds):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            fn, arg = fns[name]
            start = time.perf_counter()
            for _ in range(k[name]):
                fn(arg)
            synchronize(device)
            samples[name].append((time.perf_counter() - start) / k[name])
        rounds += 1
    return {n: {"median": statistics.median(v), "min": min(v), "rounds": len(v), "calls_per_round": k[n]}
            for n, v in samples.items()}


def _ratio(fast: float | None, ref: float | None) -> float | None:
    if not fast or not ref:
        return None
    return fast / ref


# --------------------------------------------------------------------------- sections
@dataclass
class _Plan:
    device: torch.device
    batch_sizes: tuple[int, ...]
    train_batch: int
    steps: int
    warmup: int
    min_time: float
    bf16: bool
    channels_last: bool
    images: int


def _plan(o: BenchmarkOptions, device: torch.device, recipe: Recipe) -> _Plan:
    cuda = device.type == "cuda"
    if o.quick:
        batch_sizes, train_batch, steps, warmup, min_time = (1, 2), 2, 1, 1, 0.1
    elif cuda:
        batch_sizes, train_batch, steps, warmup, min_time = (1, 32, 256), recipe.batch_size, 10, 3, 2.0
    else:
        batch_sizes, train_batch, steps, warmup, min_time = (1, 8), 8, 3, 1, 2.0
    batch_sizes = tuple(o.batch_sizes) if o.batch_sizes else batch_sizes
    train_batch = o.train_batch_size or train_batch
    steps = o.steps or steps
    warmup = o.warmup if o.warmup is not None else warmup
    min_time = o.min_time if o.min_time is not None else min_time
    # the training policy (poster.precision): the fast path is measured as `poster train` would run it
    precision = resolve_precision(o.precision, device, "train")
    bf16 = precision == "bf16"
    channels_last = channels_last_for(o.channels_last, precision)
    return _Plan(device, batch_sizes, train_batch, steps, warmup, min_time, bf16, channels_last,
                 train_batch * (steps + warmup))


def _train_reference(model: nn.Module, recipe: Recipe, records, plan: _Plan, workers: int,
                     mem: _Memory) -> dict[str, Any]:
    device = plan.device
    dataset = ReferenceTrainDataset(records, AugmentConfig.from_recipe(recipe, input_order=recipe.channel_order))
    loader = DataLoader(dataset, batch_size=plan.train_batch, shuffle=True, num_workers=workers,
                        drop_last=True, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(0))
    out: dict[str, Any] = {}
    # the input pipeline alone (decode + per-image transforms, the workers' throughput)
    start = time.perf_counter()
    seen = 0
    for x, _ in loader:
        seen += x.shape[0]
    out["pipeline_images_per_s"] = seen / (time.perf_counter() - start)

    model.train()
    optimizer = build_optimizer(model, recipe, fused=False)
    loss_fn = build_loss(recipe.loss)
    mem.reset()
    start = None
    steps = 0
    for i, (x, y) in enumerate(loader):
        if i == plan.warmup:
            synchronize(device)
            start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        sam_train_step(model, optimizer, loss_fn, x, y, bf16=False)
        if start is not None:
            steps += 1
    synchronize(device)
    elapsed = time.perf_counter() - start if start is not None else float("nan")
    out["train_images_per_s"] = steps * plan.train_batch / elapsed
    out["train_steps_timed"] = steps
    out["peak_memory_mb_train"] = mem.peak_mb()
    return out


def _fast_batches(records, recipe: Recipe, plan: _Plan, o: BenchmarkOptions,
                  out: dict[str, Any]) -> tuple[CachedBatches, list[torch.Tensor]]:
    """Build the uint8 cache (timed into ``out``) and the on-device batcher, with the epoch's
    index chunks of ``plan.train_batch``."""
    device = plan.device
    start = time.perf_counter()
    cache = build_uint8_cache(records, recipe.channel_order, path=None, workers=o.cache_workers)
    out["cache_build_seconds"] = time.perf_counter() - start
    out["cache_images_per_s"] = len(records) / out["cache_build_seconds"]
    config = AugmentConfig.from_recipe(recipe, input_order=recipe.channel_order)
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    generator = torch.Generator(device=gen_device).manual_seed(o.seed)
    batches = CachedBatches(cache, config, plan.train_batch, device, generator=generator)
    order = EpochSampler(len(cache), seed=o.seed)
    indices = torch.as_tensor(list(order), dtype=torch.long)
    chunks = [indices[i:i + plan.train_batch] for i in range(0, len(indices) - plan.train_batch + 1,
                                                               plan.train_batch)]
    return batches, chunks


def _fast_pipeline_images_per_s(batches: CachedBatches, chunks: list[torch.Tensor], plan: _Plan) -> float:
    """The input pipeline alone: gather + augment + normalise, on the device."""
    batches.batch(chunks[0])  # warm-up, untimed
    synchronize(plan.device)
    reps = max(3, len(chunks))
    start = time.perf_counter()
    for i in range(reps):
        batches.batch(chunks[i % len(chunks)])
    synchronize(plan.device)
    return reps * plan.train_batch / (time.perf_counter() - start)


def _fast_sam_steps(runner: nn.Module, optimizer, loss_fn, batches: CachedBatches, chunks: list[torch.Tensor],
                    plan: _Plan, out: dict[str, Any]) -> tuple[int, float]:
    """SAM steps over ``chunks``; the first ``plan.warmup`` are untimed.  Records the first step's
    seconds in ``out`` and returns (timed steps, their seconds)."""
    device = plan.device
    fmt = torch.channels_last if plan.channels_last else torch.contiguous_format
    t0 = None
    steps = 0
    for i, chunk in enumerate(chunks):
        if i == plan.warmup:
            synchronize(device)
            t0 = time.perf_counter()
        first = time.perf_counter()
        x, y = batches.batch(chunk)
        sam_train_step(runner, optimizer, loss_fn, x.contiguous(memory_format=fmt), y, bf16=plan.bf16)
        if i == 0:
            synchronize(device)
            out["first_step_seconds"] = time.perf_counter() - first
        if t0 is not None:
            steps += 1
    synchronize(device)
    return steps, (time.perf_counter() - t0 if t0 is not None else float("nan"))


def _train_fast(model: nn.Module, recipe: Recipe, records, plan: _Plan, o: BenchmarkOptions,
                mem: _Memory) -> dict[str, Any]:
    device = plan.device
    out: dict[str, Any] = {}
    batches, chunks = _fast_batches(records, recipe, plan, o, out)
    out["pipeline_images_per_s"] = _fast_pipeline_images_per_s(batches, chunks, plan)

    model.train()
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    runner: nn.Module = torch.compile(model) if o.compile else model
    optimizer = build_optimizer(model, recipe, fused=device.type == "cuda")
    loss_fn = build_loss(recipe.loss)
    old_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"
    mem.reset()
    try:
        steps, elapsed = _fast_sam_steps(runner, optimizer, loss_fn, batches, chunks, plan, out)
    finally:
        torch.backends.cudnn.benchmark = old_benchmark
    out["train_images_per_s"] = steps * plan.train_batch / elapsed
    out["train_steps_timed"] = steps
    out["peak_memory_mb_train"] = mem.peak_mb()
    if o.compile:
        out["compile_seconds_train"] = out["first_step_seconds"]
    return out


def _inference(model: nn.Module, plan: _Plan, o: BenchmarkOptions, mem: _Memory) -> tuple[dict, dict, dict]:
    """(reference, fast, extra) inference numbers."""
    device = plan.device
    model = model.eval()
    g = torch.Generator().manual_seed(o.seed + 1)
    largest = max(plan.batch_sizes + (1,))
    x_all = torch.randn(largest, 3, 224, 224, generator=g).to(device)

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    ref: dict[str, Any] = {"inference_images_per_s": {}, "inference_images_per_s_best": {}}
    fast_out: dict[str, Any] = {"inference_images_per_s": {}, "inference_images_per_s_best": {}}
    extra: dict[str, Any] = {}
    start = time.perf_counter()
    fast = prepare_inference(model, device, precision="bf16" if plan.bf16 else "fp32",
                             channels_last=plan.channels_last, compile=o.compile, fold_bn=True,
                             warmup_batch_sizes=plan.batch_sizes)
    fast_out["prepare_seconds"] = time.perf_counter() - start
    if o.compile:
        fast_out["compile_seconds_inference"] = fast.compile_seconds
    # peak memory of one call at the largest batch, each path on its own
    for out, fn in ((ref, eager), (fast_out, fast)):
        mem.reset()
        fn(x_all)
        synchronize(device)
        out["peak_memory_mb_inference"] = mem.peak_mb()
    # throughput, the two paths alternating
    for b in plan.batch_sizes:
        timed = _paired_seconds({"reference": (eager, x_all[:b]), "fast": (fast, x_all[:b])}, device,
                                2 * plan.min_time, calls_per_round=True)
        for out, name in ((ref, "reference"), (fast_out, "fast")):
            out["inference_images_per_s"][str(b)] = b / timed[name]["median"]
            out["inference_images_per_s_best"][str(b)] = b / timed[name]["min"]
    latency_fn: Callable[[torch.Tensor], Any] = fast
    fast_out["latency_path"] = "prepare_inference"
    if device.type == "cuda":
        try:
            graph = CudaGraphRunner.for_inference(fast, batch_size=1)
            latency_fn = lambda x: graph(fast.prepare_input(x))  # noqa: E731
            fast_out["latency_path"] = "prepare_inference + CUDA graph"
        except Exception as e:  # keep the other numbers when capture fails
            extra["cuda_graph_error"] = f"{type(e).__name__}: {e}"
    timed = _paired_seconds({"reference": (eager, x_all[:1]), "fast": (latency_fn, x_all[:1])}, device,
                            2 * plan.min_time, calls_per_round=False)
    for out, name in ((ref, "reference"), (fast_out, "fast")):
        out["latency_ms_batch1"] = 1000 * timed[name]["median"]
        out["latency_ms_batch1_min"] = 1000 * timed[name]["min"]
    with torch.inference_mode():
        probe = x_all[: min(2, largest)]
        reference_logits = model(probe).float()
        diff = (fast(probe) - reference_logits).abs().max().item()
    fast_out["max_abs_logit_diff"] = diff
    fast_out["max_abs_logit"] = reference_logits.abs().max().item()
    return ref, fast_out, extra


def _cpu_batch1(model: nn.Module, plan: _Plan, o: BenchmarkOptions, tmp: Path) -> dict[str, Any]:
    """Batch-1 CPU latency, measured in alternating rounds: eager fp32, BN-folded fp32 (NCHW and,
    unless quick, channels-last), BN-folded bf16 autocast channels-last where the CPU computes bf16
    natively, and ONNX Runtime on the 112 input (the pixels the model reads)."""
    cpu = torch.device("cpu")
    model = copy.deepcopy(model).to(cpu).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(o.seed + 2))
    out: dict[str, Any] = {"threads": torch.get_num_threads()}

    def eager(t: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(t)

    with torch.inference_mode():
        ref_logits = model(x)
    fns: dict[str, tuple[Callable[[Any], Any], Any]] = {"eager_fp32": (eager, x)}
    variants = [("folded_fp32", "fp32", False)] + ([] if o.quick else [("folded_fp32_channels_last", "fp32", True)])
    if cpu_has_native_bf16():  # AMX / AVX512-BF16: oneDNN runs bf16 convolutions and matmuls natively
        variants.append(("folded_bf16_channels_last", "bf16", True))
    if o.compile:
        variants.append(("compiled_" + variants[-1][0], variants[-1][1], variants[-1][2]))
    for name, dtype, cl in variants:
        start = time.perf_counter()
        fast = prepare_inference(model, cpu, dtype, channels_last=cl, fold_bn=True,
                                 compile=name.startswith("compiled_"), warmup_batch_sizes=(1,))
        if fast.compiled:
            out[name + "_compile_seconds"] = time.perf_counter() - start
        fns[name] = (fast, x)
        out[name + "_max_abs_diff"] = (fast(x) - ref_logits).abs().max().item()
    if o.onnx:
        try:
            from ..inference.export import export_onnx
            from ..inference.runtime import OnnxBackend

            n = int(getattr(model, "num_classes", 7))
            meta = ModelMeta(arch=o.model, num_classes=n, class_names=tuple(f"class_{i}" for i in range(n)),
                             input=InputConfig(input_size=112))
            start = time.perf_counter()
            path = export_onnx(model, tmp / "model.onnx", dynamic_batch=False, input_size=112, meta=meta)
            out["onnx_export_seconds"] = time.perf_counter() - start
            backend = OnnxBackend(path, threads=torch.get_num_threads())
            x112 = x[:, :, ::2, ::2].contiguous().numpy()  # exactly the pixels the model reads
            fns["onnxruntime"] = (backend, x112)
            out["onnxruntime_max_abs_diff"] = (backend(x112) - ref_logits).abs().max().item()
        except Exception as e:
            out["onnx_error"] = f"{type(e).__name__}: {e}"
    timed = _paired_seconds(fns, cpu, len(fns) * plan.min_time, calls_per_round=False)
    for name, t in timed.items():
        out[name + "_ms"] = 1000 * t["median"]
        out[name + "_min_ms"] = 1000 * t["min"]
    out["rounds"] = timed["eager_fp32"]["rounds"]
    out["max_abs_logit"] = ref_logits.abs().max().item()
    for name in fns:
        if name != "eager_fp32":
            out["speedup_" + name] = out["eager_fp32_ms"] / out[name + "_ms"]
    return out


# --------------------------------------------------------------------------- driver
def _report_skeleton(o: BenchmarkOptions, device: torch.device, recipe: Recipe, plan: _Plan) -> dict[str, Any]:
    """The report before any measurement: what runs where, and how."""
    return {
        "meta": {
            "model": o.model, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "recipe": recipe.name, "channel_order": recipe.channel_order, "loss": recipe.loss,
            "train_batch_size": plan.train_batch, "steps": plan.steps, "warmup_steps": plan.warmup,
            "inference_batch_sizes": list(plan.batch_sizes), "quick": o.quick, "images": plan.images,
            "fast_precision": "bf16" if plan.bf16 else "fp32", "fast_channels_last": plan.channels_last,
            "compile": o.compile, "reference_workers": o.workers, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "section_seconds": {},
        },
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(o).items()},
        "reference": {"description": "eager fp32, per-image CPU transforms at 224 (PIL), DataLoader with "
                                     f"{o.workers} workers"},
        "fast": {"description": "uint8 112 cache + on-device augmentation, "
                                f"{'bf16 autocast' if plan.bf16 else 'fp32'}"
                                f"{', channels-last' if plan.channels_last else ''}"
                                f"{', torch.compile' if o.compile else ''}, BN folded for inference"},
        "errors": {},
    }


def _synthetic_records(folder: Path, plan: _Plan, seed: int, num_classes: int) -> list[tuple[str, int]]:
    """``plan.images`` (path, label) records over at most 256 distinct synthetic JPEGs: enough
    variety for decoding to cost what it costs, without writing thousands of files."""
    unique = min(plan.images, 256)
    paths = make_synthetic_jpegs(folder, unique, seed=seed)
    rng = np.random.default_rng(seed)
    return [(str(paths[i % unique]), int(rng.integers(0, num_classes))) for i in range(plan.images)]


def _measure_sections(o: BenchmarkOptions, recipe: Recipe, plan: _Plan, report: dict[str, Any],
                      base: nn.Module, tmp: Path, t_start: float) -> None:
    """Training (both paths from the same initial weights), inference and the CPU comparison,
    filling ``report`` and its per-section seconds."""
    device, mem = plan.device, _Memory(plan.device)
    sections = report["meta"]["section_seconds"]
    initial = copy.deepcopy(base.state_dict())
    records = _synthetic_records(tmp / "images", plan, o.seed, base.num_classes)
    sections["setup"] = time.perf_counter() - t_start

    log.info("benchmark %s on %s: reference training (%d steps + %d warm-up, batch %d)", o.model, device,
             plan.steps, plan.warmup, plan.train_batch)
    t = time.perf_counter()
    report["reference"].update(_train_reference(copy.deepcopy(base).to(device), recipe, records, plan,
                                                o.workers, mem))
    sections["reference_training"] = time.perf_counter() - t
    log.info("fast training")
    t = time.perf_counter()
    report["fast"].update(_train_fast(copy.deepcopy(base).to(device), recipe, records, plan, o, mem))
    sections["fast_training"] = time.perf_counter() - t

    log.info("inference at batch sizes %s", list(plan.batch_sizes))
    t = time.perf_counter()
    base.load_state_dict(initial)
    model = base.to(device)
    ref_inf, fast_inf, extra = _inference(model, plan, o, mem)
    report["reference"].update(ref_inf)
    report["fast"].update(fast_inf)
    report["errors"].update(extra)
    sections["inference"] = time.perf_counter() - t
    if o.cpu_compare:
        log.info("CPU batch-1 comparison (%d threads)", torch.get_num_threads())
        t = time.perf_counter()
        report["cpu_batch1"] = _cpu_batch1(model, plan, o, tmp)
        sections["cpu_batch1"] = time.perf_counter() - t


def _ratios(report: dict[str, Any], plan: _Plan) -> dict[str, Any]:
    """fast/reference for rates, reference/fast for latency: above 1 means the fast path wins."""
    ref, fast = report["reference"], report["fast"]
    ratios: dict[str, Any] = {
        "train": _ratio(fast["train_images_per_s"], ref["train_images_per_s"]),
        "pipeline": _ratio(fast["pipeline_images_per_s"], ref["pipeline_images_per_s"]),
        "latency_batch1": _ratio(ref["latency_ms_batch1"], fast["latency_ms_batch1"]),
    }
    for b in plan.batch_sizes:
        ratios[f"inference_b{b}"] = _ratio(fast["inference_images_per_s"][str(b)],
                                           ref["inference_images_per_s"][str(b)])
    return ratios


def run_benchmark(o: BenchmarkOptions) -> dict[str, Any]:
    """Run both paths; returns the report (also written to ``o.json_path`` when given)."""
    device = resolve_device(o.device)
    recipe = recipe_for(o.model)
    plan = _plan(o, device, recipe)
    report = _report_skeleton(o, device, recipe, plan)
    t_start = time.perf_counter()
    torch.manual_seed(o.seed)
    base = create_model(o.model)
    with tempfile.TemporaryDirectory(prefix="poster-bench-") as tmp_name:
        _measure_sections(o, recipe, plan, report, base, Path(tmp_name), t_start)
    report["meta"]["section_seconds"]["total"] = time.perf_counter() - t_start
    report["ratios"] = _ratios(report, plan)
    if o.json_path:
        atomic_write_text(o.json_path, json.dumps(report, indent=2))
    return report


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:,.{digits}f}" if abs(v) >= 0.1 or v == 0 else f"{v:.3g}"
    return str(v)


def format_report(report: dict[str, Any]) -> str:
    """The table printed by ``poster benchmark``."""
    m, ref, fast, r = report["meta"], report["reference"], report["fast"], report["ratios"]
    rows: list[tuple[str, Any, Any, Any]] = [
        ("SAM training img/s (end to end)", ref["train_images_per_s"], fast["train_images_per_s"], r["train"]),
        ("input pipeline img/s", ref["pipeline_images_per_s"], fast["pipeline_images_per_s"], r["pipeline"]),
    ]
    for b in m["inference_batch_sizes"]:
        rows.append((f"inference img/s, batch {b}", ref["inference_images_per_s"][str(b)],
                     fast["inference_images_per_s"][str(b)], r[f"inference_b{b}"]))
    rows += [
        ("batch-1 latency ms", ref["latency_ms_batch1"], fast["latency_ms_batch1"], r["latency_batch1"]),
        ("peak memory MB, training", ref.get("peak_memory_mb_train"), fast.get("peak_memory_mb_train"), None),
        ("peak memory MB, inference", ref.get("peak_memory_mb_inference"), fast.get("peak_memory_mb_inference"),
         None),
        ("cache build s (one-off)", None, fast.get("cache_build_seconds"), None),
    ]
    if m["compile"]:
        rows.append(("compile s (train / inference)", None,
                     f"{_fmt(fast.get('compile_seconds_train'))} / {_fmt(fast.get('compile_seconds_inference'))}",
                     None))
    lines = [
        f"poster benchmark: {m['model']} on {m['device']} ({m['device_name']}), torch {m['torch']}, "
        f"{m['torch_threads']} threads",
        f"  training batch {m['train_batch_size']}, {m['steps']} timed SAM steps after {m['warmup_steps']} warm-up; "
        f"recipe {m['recipe']} ({m['channel_order']}, {m['loss']})",
        f"  reference: {ref['description']}",
        f"  fast:      {fast['description']}",
        "",
        f"  {'metric':<34}{'reference':>14}{'fast':>14}{'ratio':>9}",
    ]
    for name, a, b, ratio in rows:
        lines.append(f"  {name:<34}{_fmt(a):>14}{_fmt(b):>14}{(_fmt(ratio, 2) + 'x') if ratio else '':>9}")
    lines.append(f"  (ratio: fast/reference for rates, reference/fast for latency; fast inference max|dlogit| "
                 f"{_fmt(fast.get('max_abs_logit_diff'), 3)} of max|logit| {_fmt(fast.get('max_abs_logit'), 3)})")
    cpu = report.get("cpu_batch1")
    if cpu:
        lines += ["", f"  CPU batch 1, {cpu['threads']} threads ({m['cpu']}), median of {cpu.get('rounds')} "
                      "alternating calls:"]
        for key, label in (("eager_fp32_ms", "eager fp32"), ("folded_fp32_ms", "BN-folded fp32"),
                           ("folded_fp32_channels_last_ms", "BN-folded fp32, channels-last"),
                           ("folded_bf16_channels_last_ms", "BN-folded bf16, channels-last"),
                           ("compiled_folded_bf16_channels_last_ms", "compiled, BN-folded bf16, CL"),
                           ("compiled_folded_fp32_ms", "compiled, BN-folded fp32"),
                           ("compiled_folded_fp32_channels_last_ms", "compiled, BN-folded fp32, CL"),
                           ("onnxruntime_ms", "ONNX Runtime (112 input)")):
            if key in cpu:
                speed = cpu.get("speedup_" + key[:-3])
                diff = cpu.get(key.replace("_ms", "_max_abs_diff"))
                lines.append(f"    {label:<32}{_fmt(cpu[key]):>10} ms (min {_fmt(cpu.get(key[:-3] + '_min_ms'))})"
                             + (f"  {speed:.2f}x" if speed else "")
                             + (f"  max|dlogit| {diff:.2g}" if diff is not None else ""))
        if "onnx_error" in cpu:
            lines.append(f"    ONNX Runtime: {cpu['onnx_error']}")
    for key, msg in report.get("errors", {}).items():
        lines.append(f"  note: {key}: {msg}")
    return "\n".join(lines)
