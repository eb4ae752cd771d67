"""The one precision policy (poster.precision), pinned for each hardware class by faking it, and
every consumer (train, test, predict, serve, benchmark, the Recognizer) asking it."""

from __future__ import annotations

import pytest
import torch

import poster.precision as precision
from poster.errors import PosterError
from poster.precision import channels_last_for, native_bf16, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(params=["fp32_cpu", "bf16_cpu", "cuda_bf16", "cuda_no_bf16"])
def hardware(request, monkeypatch) -> str:
    """One hardware class, faked: the CPU's bf16 instructions and CUDA's presence and bf16 support."""
    kind = request.param
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1" if kind == "bf16_cpu" else "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: kind.startswith("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: kind == "cuda_bf16")
    return kind


# (hardware, device) -> what auto means for train/predict; evaluate is always fp32
AUTO = {("fp32_cpu", CPU): "fp32", ("bf16_cpu", CPU): "bf16", ("cuda_bf16", CUDA): "bf16",
        ("cuda_bf16", CPU): "fp32", ("cuda_no_bf16", CUDA): "fp32", ("cuda_no_bf16", CPU): "fp32"}


def test_auto_per_hardware_class_and_purpose(hardware):
    for (kind, device), expected in AUTO.items():
        if kind != hardware:
            continue
        assert resolve_precision("auto", device, "train") == expected
        assert resolve_precision("auto", device, "predict") == expected
        assert resolve_precision("auto", device, "evaluate") == "fp32"  # published numbers reproduce
        assert resolve_precision("fp32", device, "predict") == "fp32"
        assert native_bf16(device) == (expected == "bf16")


def test_explicit_bf16_runs_where_it_can_and_is_refused_on_a_gpu_without_it(hardware, caplog):
    if hardware == "cuda_no_bf16":
        with pytest.raises(PosterError, match="does not support bf16"):
            resolve_precision("bf16", CUDA, "train")
    precision._warn_emulated.cache_clear()
    with caplog.at_level("WARNING", logger="poster.precision"):
        assert resolve_precision("bf16", CPU, "predict") == "bf16"  # oneDNN emulates it where not native
    assert ("emulated" in caplog.text) == (hardware != "bf16_cpu")


def test_bad_requests_are_named():
    with pytest.raises(PosterError, match="auto, fp32 or bf16"):
        resolve_precision("fp16", CPU, "train")
    with pytest.raises(ValueError, match="purpose"):
        resolve_precision("auto", CPU, "serve-ish")
    assert channels_last_for("auto", "bf16") and not channels_last_for("auto", "fp32")
    assert channels_last_for(None, "bf16") and channels_last_for("on", "fp32") and not channels_last_for(False, "bf16")
    with pytest.raises(PosterError, match="channels_last"):
        channels_last_for("sometimes", "fp32")


def test_suite_runs_as_on_a_cpu_without_bf16():
    """conftest fakes the fp32-only class for every test and subprocess, whatever this machine has."""
    assert not precision.cpu_has_native_bf16()


@pytest.mark.parametrize("native", [False, True])
def test_recognizer_predict_and_serve_follow_the_policy(native, monkeypatch):
    from poster.inference.recognizer import Recognizer
    from poster.serve.engine import load_recognizer

    monkeypatch.setenv(precision.CPU_BF16_ENV, "1" if native else "0")
    want = "bf16" if native else "fp32"
    rec = Recognizer.open(None, device="cpu", detector="none")
    assert rec.precision == want and rec.fast_inference is not None and want in rec.engine
    served = load_recognizer(None, device="cpu")
    assert served.precision == want
    assert served.fast_inference.traced == (not native)  # the verified traced graph is an fp32 CPU path
    # the Python API's default stays the exact function; "auto" follows the policy
    assert Recognizer.from_checkpoint(None, detector="none").fast_inference is None
    assert Recognizer.from_checkpoint(None, detector="none", precision="auto").precision == want


@pytest.mark.parametrize("native", [False, True])
def test_trainer_and_benchmark_follow_the_training_policy(native, monkeypatch, tmp_path):
    from poster.benchmark.options import BenchmarkOptions
    from poster.benchmark.runner import _plan
    from poster.train.options import TrainOptions
    from poster.train.recipes import get_recipe
    from poster.train.trainer import Trainer

    monkeypatch.setenv(precision.CPU_BF16_ENV, "1" if native else "0")
    recipe = get_recipe("fer2013_default")
    trainer = Trainer(recipe, TrainOptions(dataset="folder", data=str(tmp_path), output_dir=str(tmp_path / "run"),
                                           device="cpu"))
    assert trainer.use_bf16 == native and trainer.channels_last == native
    plan = _plan(BenchmarkOptions(quick=True), CPU, recipe)
    assert plan.bf16 == native and plan.channels_last == native
    assert _plan(BenchmarkOptions(quick=True, precision="fp32"), CPU, recipe).bf16 is False


def test_test_command_evaluates_in_fp32_by_default_even_where_bf16_is_native(monkeypatch):
    from poster.inference.runtime import open_backend

    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    opened = open_backend(None, device="cpu", purpose="evaluate")
    assert opened.precision == "fp32" and opened.description.startswith("PyTorch fp32 fast path")
    assert open_backend(None, device="cpu", purpose="predict").precision == "bf16"


def test_open_backend_refuses_contradictions():
    from poster.inference.runtime import open_backend

    with pytest.raises(PosterError, match="eager.*bf16"):
        open_backend(None, device="cpu", eager=True, precision="bf16")
    with pytest.raises(PosterError, match="eager.*compile"):
        open_backend(None, device="cpu", eager=True, compile=True)
    eager = open_backend(None, device="cpu", eager=True)
    assert eager.fast is None and eager.description == "PyTorch eager fp32" and eager.precision == "fp32"
