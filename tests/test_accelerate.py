"""Inference fast paths (poster.accelerate) against the plain fp32 model.

fp32 paths (BN folding, channels-last) must stay within the golden tolerance
``1e-4 * max(1, max|ref|)``; bf16 autocast within 5e-2 * max(1, max|ref|) and the same arg-max
wherever the reference's top two logits are further apart than that tolerance.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from poster.inference.accelerate import (
    CudaGraphRunner,
    conv_bn_pairs,
    cuda_graphs_available,
    fold_batchnorm,
    prepare_inference,
)
from poster.models import create_model

BF16_RTOL = 5e-2


def golden_tol(ref: torch.Tensor, rtol: float = 1e-4) -> float:
    return rtol * max(1.0, float(ref.abs().max()))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics (the golden fill rule's), so folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(1.0 + 0.5 * torch.randn(n, generator=g).abs())
                m.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
    return model


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_batchnorm(create_model(name), seed).eval()


def inputs(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny():
    model = build("poster_v1_tiny")
    x = inputs(2)
    with torch.no_grad():
        ref = model(x)
    return model, x, ref


def test_fold_batchnorm_tiny(tiny):
    model, x, ref = tiny
    before = copy.deepcopy(model.state_dict())
    pairs = conv_bn_pairs(model)
    # IR stem, 5 units (second conv + BN), 2 shortcut convs (32->64, 64->128), all MobileFaceNet blocks
    assert ("ir_back.input_layer.0", "ir_back.input_layer.1") in pairs
    assert ("ir_back.body.0.res_layer.3", "ir_back.body.0.res_layer.4") in pairs
    assert ("ir_back.body.1.shortcut_layer.0", "ir_back.body.1.shortcut_layer.1") in pairs
    assert ("face_landback.conv1.conv", "face_landback.conv1.bn") in pairs
    assert not any(bn.endswith("res_layer.0") for _, bn in pairs)  # BN -> conv is not folded

    folded = fold_batchnorm(model)
    assert conv_bn_pairs(folded) == []
    remaining = [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert remaining == [f"ir_back.body.{i}.res_layer.0" for i in range(5)]  # only the BN -> conv ones
    with torch.no_grad():
        out = folded(x)
    assert (out - ref).abs().max() <= golden_tol(ref)
    # the original is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(conv_bn_pairs(model)) == len(pairs)


def test_channels_last_and_112_input_tiny(tiny):
    model, x, ref = tiny
    fast = prepare_inference(model, "cpu", fold_bn=False, channels_last=True)
    assert (fast(x) - ref).abs().max() <= golden_tol(ref)
    # the fast path feeds the model x[:, :, ::2, ::2]: a 112 input gives the same result
    assert torch.equal(fast(x), fast(x[:, :, ::2, ::2].contiguous()))
    both = prepare_inference(model, "cpu", fold_bn=True, channels_last=True)
    assert (both(x) - ref).abs().max() <= golden_tol(ref)
    assert next(model.parameters()).is_contiguous()  # original keeps its layout


def test_v1_token_reshape_sees_nchw_order_with_channels_last(tiny):
    """The V1 IR read-out reshapes the [B,C,14,14] map to [B,49,4C] in logical NCHW order; a
    channels-last map must give the same tokens (reshape is defined on the logical order)."""
    model, x, _ = tiny
    x112 = x[:, :, ::2, ::2].contiguous()
    cl_trunk = copy.deepcopy(model.ir_back).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref_map = model.ir_back(x112)
        cl_map = cl_trunk(x112.contiguous(memory_format=torch.channels_last))
    assert cl_map.is_contiguous(memory_format=torch.channels_last) and not cl_map.is_contiguous()
    b = ref_map.shape[0]
    ref_tokens = ref_map.reshape(b, 49, -1)
    cl_tokens = cl_map.reshape(b, 49, -1)
    assert (cl_tokens - ref_tokens).abs().max() <= golden_tol(ref_tokens)
    # and the reshape itself is layout-independent: bit-identical on the same values
    assert torch.equal(cl_map.contiguous().reshape(b, 49, -1), cl_map.reshape(b, 49, -1))


def test_bf16_autocast_tiny(tiny):
    model, x, ref = tiny
    fast = prepare_inference(model, "cpu", precision="bf16")
    out = fast(x)
    assert out.dtype == torch.float32
    tol = golden_tol(ref, BF16_RTOL)
    assert (out - ref).abs().max() <= tol
    top2 = ref.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tol
    assert torch.equal(out.argmax(1)[clear], ref.argmax(1)[clear])


def test_bf16_weights_cast_once_equal_per_call_autocast(tiny):
    """The bf16 path stores conv/linear weights in bf16 ahead of time; autocast would have cast them
    to exactly those values on every call, so the output is bit-identical to plain autocast."""
    model, x, _ = tiny
    fast = prepare_inference(model, "cpu", precision="bf16", channels_last=True)
    weights = {type(m).__name__: m.weight.dtype for m in fast.model.modules() if hasattr(m, "weight")}
    assert weights["Conv2d"] == weights["Linear"] == torch.bfloat16 and weights["LayerNorm"] == torch.float32
    folded = fold_batchnorm(model).to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        ref = folded(x[:, :, ::2, ::2].contiguous(memory_format=torch.channels_last)).float()
    assert torch.equal(fast(x), ref)
    assert next(model.parameters()).dtype == torch.float32  # the given model is left untouched


def test_compiled_path_matches_eager_on_a_small_network():
    """torch.compile (with weight freezing on the CPU) keeps the results: fp32 within the golden
    tolerance, bf16 within the bf16 one.  A small conv/BN/linear network keeps compile time short."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.PReLU(8), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(32, 7)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)
    fast = prepare_inference(net, "cpu", precision="fp32", channels_last=False, compile=True,
                             warmup_batch_sizes=(2,), input_size=16)
    assert fast.compiled and fast.compile_seconds > 0
    assert (fast(x) - ref).abs().max() <= golden_tol(ref)
    fast16 = prepare_inference(net, "cpu", precision="bf16", channels_last=True, compile=True,
                               warmup_batch_sizes=(2,), input_size=16)
    assert (fast16(x) - ref).abs().max() <= golden_tol(ref, BF16_RTOL)


@pytest.mark.parametrize("name", ["poster_v1_large", "poster_v2"])
def test_fold_and_channels_last_full_models(name):
    model = build(name)
    x = inputs(1)
    with torch.no_grad():
        ref = model(x)
    fast = prepare_inference(model, "cpu", fold_bn=True, channels_last=True)
    assert fast.folded_pairs == len(conv_bn_pairs(model)) > 50
    assert conv_bn_pairs(fast.model) == []
    out = fast(x)
    assert (out - ref).abs().max() <= golden_tol(ref)


@pytest.mark.parametrize("name", ["poster_v1_tiny", "poster_v1_small", "poster_v2"])
def test_traced_graph_matches_the_plain_model(name):
    """The serving path's traced, frozen graph: used where it gives the plain fp32 model's numbers at
    batch sizes other than the traced one, and described as such."""
    from poster.inference.accelerate import describe_inference, use_traced_graph

    model = build(name)
    fast = prepare_inference(model, "cpu", fold_bn=True, channels_last=True)
    assert use_traced_graph(fast) and fast.traced and "traced graph" in describe_inference(fast)
    assert not use_traced_graph(fast)  # once is enough
    for batch in (1, 5):
        x = inputs(batch, seed=batch)
        with torch.no_grad():
            ref = model(x)
        out = fast(x)
        assert out.shape == ref.shape and (out - ref).abs().max() <= golden_tol(ref)


class _BatchTwoOnly(nn.Module):
    """Branches on the batch size: a trace at batch 2 bakes in the wrong branch for other sizes."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, x):
        pooled = x.mean(dim=(2, 3))
        return self.linear(pooled) * (2.0 if x.shape[0] == 2 else 3.0)


def test_traced_graph_is_refused_when_it_differs_or_does_not_apply(tiny):
    from poster.inference.accelerate import use_traced_graph

    fast = prepare_inference(_BatchTwoOnly().eval(), "cpu", fold_bn=False, channels_last=False)
    x = inputs(3)
    before = fast(x)
    assert not use_traced_graph(fast) and not fast.traced  # the check at batch 1 and 3 catches the trace
    assert torch.equal(fast(x), before)  # still the eager model
    # the refusal came from the check, not from a failed trace: checked only at the traced size, it passes
    assert use_traced_graph(fast, check_batch_sizes=(2,)) and fast.traced
    assert not use_traced_graph(prepare_inference(tiny[0], "cpu", precision="bf16"))  # fp32 only


def test_prepare_inference_rejects_unknown_precision(tiny):
    with pytest.raises(ValueError):
        prepare_inference(tiny[0], "cpu", precision="fp16")


def test_cuda_graph_runner_needs_cuda(tiny):
    if cuda_graphs_available():
        pytest.skip("CUDA present: covered by the CUDA test")
    with pytest.raises(RuntimeError):
        CudaGraphRunner(lambda t: t * 2, torch.zeros(1, 3))


@pytest.mark.skipif(not cuda_graphs_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_runner_matches_eager(tiny):  # pragma: no cover - runs on GPU machines only
    model, x, _ = tiny
    fast = prepare_inference(model, "cuda", fold_bn=True, channels_last=True)
    runner = CudaGraphRunner.for_inference(fast, batch_size=1)
    x1 = x[:1]
    eager = fast(x1)
    graphed = runner(fast.prepare_input(x1)).cpu()
    assert torch.equal(graphed, eager.cpu())
    other = runner(fast.prepare_input(x[1:2])).cpu()  # replay with new data
    assert torch.equal(other, fast(x[1:2]).cpu())
