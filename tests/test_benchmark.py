"""``poster benchmark --quick`` on the CPU: it completes and reports both paths with ratios.

No timing assertions: a benchmark is never a timed test.  One intra-op thread keeps the run
robust on a shared CPU (two OpenMP threads stall badly when other processes hold the cores).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from poster.precision import cpu_has_native_bf16
from poster.cli import main


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_quick_cpu_benchmark(tmp_path, capsys, one_thread):
    out = tmp_path / "bench.json"
    rc = main(["benchmark", "--quick", "--model", "poster_v1_tiny", "--device", "cpu", "--threads", "1",
               "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "SAM training img/s" in printed and "reference" in printed and "ONNX Runtime" in printed
    report = json.loads(out.read_text())
    assert report["meta"]["model"] == "poster_v1_tiny" and report["meta"]["device"] == "cpu"
    sizes = report["meta"]["inference_batch_sizes"]
    for path in ("reference", "fast"):
        r = report[path]
        for key in ("train_images_per_s", "pipeline_images_per_s", "latency_ms_batch1",
                    "peak_memory_mb_train", "peak_memory_mb_inference"):
            assert _positive(r[key]), (path, key, r[key])
        assert set(r["inference_images_per_s"]) == {str(b) for b in sizes}
        assert all(_positive(v) for v in r["inference_images_per_s"].values())
    assert _positive(report["fast"]["cache_build_seconds"])
    ratios = report["ratios"]
    assert {"train", "pipeline", "latency_batch1"} | {f"inference_b{b}" for b in sizes} <= set(ratios)
    assert all(_positive(v) for v in ratios.values())
    # the fast inference path keeps the results: golden tolerance in fp32, the stated bf16 tolerance
    # (test_accelerate) where the fast path runs bf16 (CUDA, or a CPU with bf16 instructions)
    fast = report["fast"]
    tolerance = {"fp32": 1e-4, "bf16": 5e-2}[report["meta"]["fast_precision"]]
    assert report["meta"]["fast_precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert fast["max_abs_logit_diff"] <= tolerance * max(1.0, fast["max_abs_logit"])
    cpu = report["cpu_batch1"]
    assert cpu["threads"] == 1 and _positive(cpu["eager_fp32_ms"]) and _positive(cpu["folded_fp32_ms"])
    assert "onnx_error" not in cpu, cpu.get("onnx_error")
    assert _positive(cpu["onnxruntime_ms"]) and _positive(cpu["speedup_onnxruntime"])
    assert cpu["onnxruntime_max_abs_diff"] <= 1e-4 * max(1.0, cpu["max_abs_logit"])
    if cpu_has_native_bf16():
        assert _positive(cpu["folded_bf16_channels_last_ms"]) and "BN-folded bf16" in printed
        assert cpu["folded_bf16_channels_last_max_abs_diff"] <= 5e-2 * max(1.0, cpu["max_abs_logit"])
    assert report["errors"] == {}


def test_benchmark_rejects_bad_options():
    from poster.benchmark import BenchmarkOptions
    from poster.errors import PosterError

    with pytest.raises(PosterError):
        BenchmarkOptions(model="resnet50")
    with pytest.raises(PosterError):
        BenchmarkOptions(precision="fp16")
    with pytest.raises(SystemExit):
        main(["benchmark", "--batch-sizes", "0,4"])
    with pytest.raises(PosterError):
        BenchmarkOptions(channels_last="on")  # the library takes prepare_inference's bool (None: auto)


def test_benchmark_flags_default_to_the_options_fields():
    import argparse
    import dataclasses

    from poster.benchmark import BenchmarkOptions
    from poster.commands import benchmark as command

    parser = argparse.ArgumentParser().add_subparsers()
    command.add_parser(parser)
    args = vars(parser.choices["benchmark"].parse_args([]))
    for field in dataclasses.fields(BenchmarkOptions):
        if field.name == "cache_workers":  # library only: no flag
            continue
        expected = field.default
        if field.name == "channels_last":
            expected = command.CHANNELS_LAST_WORD[expected]
        assert args[field.name] == expected, field.name
    for word, value in (("auto", None), ("on", True), ("off", False)):
        chosen = parser.choices["benchmark"].parse_args(["--channels-last", word]).channels_last
        assert command.CHANNELS_LAST[chosen] is value
