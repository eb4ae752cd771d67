"""Inference fast paths that keep the results of the plain fp32 model (issue 4).

* :func:`fold_batchnorm` folds every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d``
  into that convolution (a copy; the original model is untouched).
* :func:`prepare_inference` builds a :class:`FastInference` callable: BN folding, channels-last
  convolutions, bf16 autocast, optional ``torch.compile`` (compile time measured), and the input
  reduced to the 112x112 pixels the model really reads (docs/faithfulness.md#input) before it is moved to the device.
* :class:`CudaGraphRunner` replays a captured CUDA graph for one fixed batch shape (CUDA only).

Exactness (tests/test_accelerate.py): folding and channels-last stay within the golden tolerance
``1e-4 * max(1, max|ref|)`` of the plain fp32 model; bf16 autocast is a different precision and is
checked against a looser, stated tolerance (5e-2 of max|ref| and the same arg-max wherever the top
two logits are further apart than that).

Which batch norms are folded
----------------------------
``Conv2d -> BatchNorm2d`` (the second conv of every IR unit, the IR shortcut conv, the IR stem, and
every MobileFaceNet ``ConvBlock``/``LinearBlock``): exact up to float rounding, because the BN is an
affine map of the conv's output.  The IR unit's ``res_layer`` also *starts* with a BatchNorm that
feeds a zero-padded 3x3 conv (``BN -> Conv``).  That one is NOT folded: the conv pads the BN's output
with zeros, and a folded conv would instead pad the raw input, i.e. see ``BN(0) = beta - mean*scale``
instead of 0 along the border.  Making it exact would need a per-channel pad value, which costs as
much as the BN itself, so it stays a BatchNorm (``torch.compile`` fuses it into neighbouring ops).
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..precision import PRECISIONS, autocast

__all__ = [
    "conv_bn_pairs",
    "fold_batchnorm",
    "FastInference",
    "prepare_inference",
    "use_traced_graph",
    "CudaGraphRunner",
    "cuda_graphs_available",
]


def describe_inference(fast: "FastInference | None") -> str:
    """How the model runs, for the INFO lines: ``"bf16 fast path (BN folded, channels-last)"``,
    ``"fp32 fast path (...)"`` or ``"eager fp32"`` (``fast`` is None: the model as written)."""
    if fast is None:
        return "eager fp32"
    parts = [f"{fast.folded_pairs} BN folded" if fast.folded_pairs else "", "channels-last" if fast.channels_last else "",
             "compiled" if fast.compiled else "", "traced graph" if fast.traced else ""]
    return f"{fast.precision} fast path ({', '.join(p for p in parts if p) or 'plain'})"


# --------------------------------------------------------------------------- BN folding

def _attr_pair_types() -> tuple[type, ...]:
    """Modules whose ``forward`` applies ``self.bn(self.conv(x))`` (MobileFaceNet blocks)."""
    from ..models.mobilefacenet import ConvBlock, LinearBlock

    return (ConvBlock, LinearBlock)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None
            and bn.num_features == conv.out_channels)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Names ``(conv, bn)`` of every ``BatchNorm2d`` that directly follows a ``Conv2d``.

    "Directly follows" means: consecutive entries of an ``nn.Sequential``, or the ``conv``/``bn``
    pair of a MobileFaceNet ``ConvBlock``/``LinearBlock`` (whose forward is ``bn(conv(x))``).
    A BN that comes *before* a conv (the IR unit's ``res_layer.0``) is not listed.
    """
    pairs: list[tuple[str, str]] = []
    attr_types = _attr_pair_types()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (cname, conv), (bname, bn) in zip(children, children[1:]):
                if _foldable(conv, bn):
                    pairs.append((prefix + cname, prefix + bname))
        elif isinstance(module, attr_types):
            conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
            if conv is not None and bn is not None and _foldable(conv, bn):
                pairs.append((prefix + "conv", prefix + "bn"))
    return pairs


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``conv`` becomes ``bn(conv(.))`` with BN's running statistics (computed in float64)."""
    w = conv.weight.detach().double()
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(var)
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter((w * scale.view(-1, 1, 1, 1)).to(dtype), requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(((bias - mean) * scale + beta).to(dtype), requires_grad=conv.weight.requires_grad)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every Conv2d -> BatchNorm2d pair folded into the conv.

    The folded BN is replaced by ``nn.Identity`` (so the copy's ``state_dict`` keys differ from the
    original's: this is an inference-only model).  BatchNorms are folded with their *running*
    statistics, i.e. the model's eval-mode function is kept; the original module is not modified.
    """
    folded = copy.deepcopy(model).eval()
    modules = dict(folded.named_modules())
    for conv_name, bn_name in conv_bn_pairs(folded):
        conv, bn = modules[conv_name], modules[bn_name]
        _fold_into(conv, bn)
        parent_name, _, leaf = bn_name.rpartition(".")
        parent = modules[parent_name] if parent_name else folded
        if isinstance(parent, nn.Sequential):
            parent[int(leaf)] = nn.Identity()  # keeps the indices of the other entries
        else:
            setattr(parent, leaf, nn.Identity())
    return folded


# --------------------------------------------------------------------------- inference wrapper
def _is_poster(model: nn.Module) -> bool:
    """A network whose family record says it reads only the even pixels of a 224 input."""
    from ..models import family_of

    family = family_of(model)
    return family is not None and family.reads_even_pixels_only


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op elsewhere.  Timings need it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _cpu_freezing(enabled: bool) -> Iterator[None]:
    """Inductor's ``freezing`` while a compiled model (re)compiles on the CPU: weights become
    constants, so convolution and linear weights are pre-packed for oneDNN once instead of being
    reordered on every call (measured: most of the remaining batch-1 time in bf16)."""
    if not enabled:
        yield
        return
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):
        yield


class FastInference(nn.Module):
    """``fast(x) -> float32 logits``: an inference-only wrapper built by :func:`prepare_inference`.

    ``x`` is a normalised batch [B,3,S,S] on any device.  For a POSTER model given the usual 224
    input, only ``x[:, :, ::2, ::2]`` is kept *before* the copy to the device: the model reads
    exactly those pixels (docs/faithfulness.md#input, ``resize_to_112``), so this changes nothing but the transfer
    size.  A 112 input is used as it is.

    Attributes: ``model`` (the prepared copy), ``device``, ``precision`` ("fp32"/"bf16"),
    ``channels_last``, ``compiled``, ``compile_seconds`` (time of the first call at each warm-up
    shape when compiling, else 0), ``folded_pairs`` (number of folded Conv/BN pairs).
    """

    def __init__(self, model: nn.Module, device: torch.device, precision: str, channels_last: bool,
                 runner: Callable[[torch.Tensor], torch.Tensor], subsample: bool, folded_pairs: int,
                 compiled: bool):
        super().__init__()
        self.model = model
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.subsample = subsample
        self.folded_pairs = folded_pairs
        self.compiled = compiled
        self.compile_seconds = 0.0
        self.traced = False
        self._runner = runner

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """The device tensor handed to the model (subsampled, float32, memory format set)."""
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        if self.subsample and x.dim() == 4 and x.shape[-2:] == (224, 224):
            x = x[:, :, ::2, ::2]
        x = x.to(self.device, torch.float32, non_blocking=True)
        fmt = torch.channels_last if self.channels_last and x.dim() == 4 else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def run_prepared(self, x: torch.Tensor) -> torch.Tensor:
        """The model on an input already made by :meth:`prepare_input` (what CUDA graphs capture)."""
        with torch.inference_mode(), autocast(self.precision, self.device, cache_enabled=False), \
                _cpu_freezing(self.compiled and self.device.type == "cpu"):
            return self._runner(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.run_prepared(self.prepare_input(x))

    def warmup(self, batch_sizes: Iterable[int] = (1,), input_size: int = 224) -> float:
        """Run once per batch size (compiles when compiled); returns the seconds taken in all."""
        total = 0.0
        for b in batch_sizes:
            x = torch.zeros(int(b), 3, input_size, input_size)
            start = time.perf_counter()
            self(x)
            synchronize(self.device)
            total += time.perf_counter() - start
        if self.compiled:
            self.compile_seconds += total
        return total

    def extra_repr(self) -> str:
        return (f"device={self.device}, precision={self.precision}, channels_last={self.channels_last}, "
                f"compiled={self.compiled}, folded_pairs={self.folded_pairs}")


def cast_matmul_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the weights of the layers that autocast runs in ``dtype`` (linear, convolution) in
    ``dtype`` ahead of time; returns how many layers were cast.

    Autocast casts those weights on every call (with ``cache_enabled=False``, needed for inference
    mode and CUDA graphs): at batch 1 that was a quarter of the CPU time of V1 large (~770 casts a
    forward).  Autocast would produce exactly these bf16 values, so results are unchanged; layers
    autocast keeps in float32 (LayerNorm, softmax inputs) keep float32 parameters.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            module.to(dtype)
            count += 1
    return count


def prepare_inference(model: nn.Module, device: str | torch.device = "cpu", precision: str = "fp32",
                      channels_last: bool = True, compile: bool = False, fold_bn: bool = True, *,
                      compile_mode: str | None = None, warmup_batch_sizes: Sequence[int] = (1,),
                      input_size: int = 224) -> FastInference:
    """An inference callable for ``model`` (which is left untouched).

    Args:
        device: where to run.
        precision: ``"fp32"`` (results within the golden tolerance of the plain model) or ``"bf16"``
            (autocast; matmuls/convs in bfloat16 with their weights cast once here
            (:func:`cast_matmul_weights`), reductions such as LayerNorm/softmax in fp32).
        channels_last: convert conv weights and inputs to NHWC.  Legal for POSTER: the V1 token
            ``reshape`` of the stage-3 map is defined on the logical NCHW order whatever the memory
            layout, so it reads the same values (checked by tests/test_accelerate.py).
        compile: ``torch.compile`` the model (opt-in).  The first call at each of
            ``warmup_batch_sizes`` is made here and its time stored in ``compile_seconds``.
        fold_bn: fold Conv2d -> BatchNorm2d pairs (:func:`fold_batchnorm`).
        compile_mode: passed to ``torch.compile`` (e.g. ``"max-autotune"``).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    prepared = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    folded = len(conv_bn_pairs(model)) if fold_bn else 0
    prepared.requires_grad_(False)
    prepared = prepared.to(device)
    if precision == "bf16":
        cast_matmul_weights(prepared, torch.bfloat16)
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    runner: Callable[[torch.Tensor], torch.Tensor] = prepared
    if compile:
        kwargs: dict[str, Any] = {"dynamic": False}
        if compile_mode:
            kwargs["mode"] = compile_mode
        runner = torch.compile(prepared, **kwargs)
    fast = FastInference(prepared, device, precision, channels_last, runner, _is_poster(model), folded, compile)
    if compile:
        fast.warmup(warmup_batch_sizes, input_size)
    return fast


# --------------------------------------------------------------------------- traced graph (CPU serving)
def use_traced_graph(fast: FastInference, input_size: int = 224, check_batch_sizes: Sequence[int] = (1, 3),
                     seed: int = 0) -> bool:
    """Run ``fast``'s model as a traced, frozen TorchScript graph when that gives the same numbers.

    Why: an eager model dispatches every op from Python, holding the GIL between ops, so any other
    Python thread of the process (a server's event loop, its decoding threads) stalls it: measured on
    2 cores, batch 16, with one busy Python thread beside it, 80 ms per face eager against 49 ms
    traced (23 and 19 ms alone).  The traced graph runs its ops in C++ without the GIL.

    The graph is traced from our own in-memory model (no file is read; this is not the TorchScript
    loading that ``--runtime torchscript`` guards) at batch 2, then checked against the eager model
    at ``check_batch_sizes`` on seeded random inputs: it is used only if every output is within
    the golden tolerance ``1e-4 * max(1, max|ref|)``.  Anything a trace cannot follow (a branch on
    a size, an unsupported op, a failure) leaves ``fast`` as it was.  CPU, fp32, not compiled only.

    Returns True when ``fast`` now runs the traced graph (``fast.traced``).
    """
    if fast.device.type != "cpu" or fast.precision != "fp32" or fast.compiled or fast.traced:
        return False
    generator = torch.Generator().manual_seed(seed)

    def example(batch: int) -> torch.Tensor:
        return fast.prepare_input(torch.randn(batch, 3, input_size, input_size, generator=generator))

    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about sizes: the check below is what counts
            graph = torch.jit.freeze(torch.jit.trace(fast.model.eval(), example(2), check_trace=False))
            for batch in check_batch_sizes:
                x = example(batch)
                reference, traced = fast.model(x).float(), graph(x).float()
                if traced.shape != reference.shape or not torch.isfinite(traced).all():
                    return False
                if (traced - reference).abs().max() > 1e-4 * max(1.0, reference.abs().max().item()):
                    return False
    except Exception:  # noqa: BLE001 - a model the tracer cannot follow keeps running eagerly
        return False
    fast._runner, fast.traced = graph, True
    return True


# --------------------------------------------------------------------------- CUDA graphs
def cuda_graphs_available(device: str | torch.device | None = None) -> bool:
    """True when CUDA graphs can be captured on ``device`` (a CUDA device on a CUDA machine)."""
    if not torch.cuda.is_available():
        return False
    return device is None or torch.device(device).type == "cuda"


class CudaGraphRunner:
    """Replays one captured CUDA graph of ``fn`` for inputs shaped exactly like ``example``.

    ``fn`` must be a pure function of its tensor argument that launches only CUDA work (e.g.
    ``FastInference.run_prepared``).  Calling the runner copies the input into the captured
    static buffer, replays the graph and returns a *clone* of the static output, so results stay
    valid after the next call.  Other shapes fall back to calling ``fn`` directly.

    Raises ``RuntimeError`` on a machine or device without CUDA.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, warmup: int = 3):
        if not cuda_graphs_available(example.device) or example.device.type != "cuda":
            raise RuntimeError("CudaGraphRunner needs a CUDA device and a CUDA example input")
        self.fn = fn
        self.static_input = example.detach().clone()
        side = torch.cuda.Stream(device=example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):  # warm-up (cuDNN/cuBLAS workspaces) off the capture
            for _ in range(max(1, warmup)):
                fn(self.static_input)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = fn(self.static_input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.static_input.shape or x.dtype != self.static_input.dtype:
            return self.fn(x)
        self.static_input.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.static_output.clone()

    @classmethod
    def for_inference(cls, fast: FastInference, batch_size: int = 1, input_size: int = 224) -> "CudaGraphRunner":
        """A runner over ``fast.run_prepared`` for batches of ``batch_size`` (inputs made by
        ``fast.prepare_input``)."""
        example = fast.prepare_input(torch.zeros(batch_size, 3, input_size, input_size))
        return cls(fast.run_prepared, example)
