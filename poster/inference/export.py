"""Export a POSTER model to ONNX or TorchScript, and check the export against PyTorch.

``export_onnx(model, "model.onnx")`` writes a self-describing file: input ``input``
[N,3,S,S] float32 (N dynamic), output ``logits`` [N,C], and the model's ``ModelMeta``
(class names, channel order, mean/std, input size) as JSON in the ONNX ``metadata_props``
under the key ``poster.meta``.  ``verify_onnx(model, "model.onnx")`` runs PyTorch and
onnxruntime on the same random normalised batches and raises when they disagree.

Files are written atomically: the export is built in memory and written through a temporary
file in the target folder that is renamed over the target, so a failed export never leaves a
partial (or any) file at the target path.

Tolerance of the checks: ``max|ours - torch| <= 1e-4 * max(1, max|torch logits|)``.
fp32 runs of the same graph differ by ~1e-6 on these models (kernel summation order), so the
bound leaves a wide margin while still catching any real mistake (a wrong op, a batch size
baked into the graph, a missing layer), which moves logits by far more.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .. import __version__
from ..errors import PosterError
from ..fileio import atomic_write_bytes
from ..meta import META_KEY, TORCHSCRIPT_META_FILE, ModelMeta, meta_from_props, model_meta
from .runtime import OnnxBackend, TorchScriptBackend

log = logging.getLogger(__name__)

#: Opset written by default.  18 is the lowest opset the torch.export-based exporter emits (it
#: ignores lower requests), within the TorchScript exporter's range (<= 20), and it is run by every
#: onnxruntime since 1.14 (so by the >= 1.17 this package requires).  Since 17 LayerNorm is one
#: ``LayerNormalization`` node instead of a chain of reductions.
DEFAULT_OPSET = 18
MIN_OPSET, MAX_OPSET = 13, 20

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

#: Relative tolerance of ``verify_*``: allowed max abs difference = RTOL * max(1, max|logits|).
RTOL = 1e-4

EXPORTERS = ("auto", "legacy", "dynamo")
_PROTOBUF_LIMIT = 2**31 - 1  # a single-file ONNX model must serialise below 2 GiB


# ---------------------------------------------------------------------------------------------
# Helpers


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_fp32(model: nn.Module) -> None:
    bad = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if bad:
        raise PosterError(f"export needs a float32 model; this one has {', '.join(bad)} parameters "
                          "(call model.float() first)")


class _EvalMode:
    """Puts a model in eval mode for the duration of a block and restores its previous mode."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        if self.was_training:
            self.model.train()


def _dummy_input(model: nn.Module, size: int, batch: int = 2) -> torch.Tensor:
    # batch 2, not 1: a size-1 dimension can get specialised (broadcast) by tracing.
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, size, size, generator=g).to(_model_device(model))


@contextlib.contextmanager
def _quiet_export():
    """Silence the expected exporter chatter (legacy-exporter / jit deprecations, tracer shape warnings).

    The tracer warnings are about the ``h == 224`` test of ``resize_to_112`` and tuple unpacking of
    fixed-size dimensions: the spatial size is fixed by the export, the batch axis stays symbolic.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def format_size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} GB"


# ---------------------------------------------------------------------------------------------
# ONNX


def _export_legacy(model: nn.Module, dummy: torch.Tensor, opset: int, dynamic_batch: bool) -> bytes:
    """The TorchScript-based exporter (``dynamo=False``): fast, needs only ``onnx``."""
    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(model, (dummy,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    return buffer.getvalue()


def _export_dynamo(model: nn.Module, dummy: torch.Tensor, opset: int, dynamic_batch: bool) -> bytes:
    """The torch.export-based exporter (``dynamo=True``): needs ``onnxscript``; slower on CPU."""
    try:
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise PosterError("the dynamo ONNX exporter needs onnxscript: pip install onnxscript") from e
    shapes = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    # ``x`` is the name of the forward argument of PosterV1/PosterV2; other models are given positionally.
    import inspect

    params = list(inspect.signature(model.forward).parameters)
    if shapes is not None and params and params[0] != "x":
        shapes = {params[0]: shapes["x"]}
    program = torch.onnx.export(model, (dummy,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes=shapes, opset_version=opset, dynamo=True,
                                external_data=False, optimize=True, verbose=False)
    return program.model_proto.SerializeToString()


def _export_proto_bytes(model: nn.Module, dummy: torch.Tensor, opset: int, dynamic_batch: bool,
                        exporter: str) -> bytes:
    """Serialised ONNX model from one exporter, or ``auto``: legacy, then dynamo if legacy fails."""
    if exporter == "legacy":
        return _export_legacy(model, dummy, opset, dynamic_batch)
    if exporter == "dynamo":
        return _export_dynamo(model, dummy, opset, dynamic_batch)
    try:
        return _export_legacy(model, dummy, opset, dynamic_batch)
    except Exception as first:  # e.g. a torch version without the TorchScript exporter
        log.warning("TorchScript-based ONNX export failed (%s); trying the torch.export-based exporter", first)
        try:
            return _export_dynamo(model, dummy, opset, dynamic_batch)
        except Exception as second:
            raise PosterError(f"ONNX export failed with both exporters: legacy: {first}; dynamo: {second}") from second


def _require_onnx():
    try:
        import onnx
    except ImportError as e:
        raise PosterError("ONNX export needs the onnx package: pip install 'poster-fer[onnx]'") from e
    return onnx



def _export_meta(model: nn.Module, meta: ModelMeta | None, input_size: int | None) -> tuple[ModelMeta, int]:
    """The metadata to store with an export, its input size set to the size actually exported."""
    meta = model_meta(model, meta)
    size = int(input_size if input_size is not None else meta.input.input_size)
    if size != meta.input.input_size:
        meta = meta.with_input(input_size=size)
    return meta, size

def _checked_opset(opset: int | None, exporter: str) -> int:
    """The opset to export with; refuses an unknown exporter or an opset outside what we test."""
    if exporter not in EXPORTERS:
        raise PosterError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise PosterError(f"opset {opset} is not supported here; use {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    return opset


def _describe_proto(proto, meta: ModelMeta, size: int) -> None:
    """Record ``meta`` (and who wrote the file) in the model's metadata, replacing earlier values,
    so the file describes itself to ``read_onnx_meta`` and to other tools."""
    props = {
        META_KEY: json.dumps(meta.to_dict(), sort_keys=True),
        "poster.version": __version__,
        "poster.input_name": INPUT_NAME,
        "poster.output_name": OUTPUT_NAME,
    }
    for entry in list(proto.metadata_props):
        if entry.key in props:
            proto.metadata_props.remove(entry)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "poster-fer"
    proto.producer_version = __version__
    proto.doc_string = (f"{meta.arch} facial expression recognition, {meta.num_classes} classes "
                        f"{list(meta.class_names)}; input {INPUT_NAME} [N,3,{size},{size}] "
                        f"{meta.input.channel_order} normalised with mean {list(meta.input.mean)} std "
                        f"{list(meta.input.std)}; output {OUTPUT_NAME} [N,{meta.num_classes}]")


def _check_proto(onnx, proto, meta: ModelMeta) -> None:
    """Refuse a graph that cannot be saved as one file or that the ONNX checker rejects."""
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise PosterError(f"{meta.arch} is too large for a single-file ONNX model (2 GiB protobuf limit)")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise PosterError(f"the exported ONNX graph of {meta.arch} is invalid: {e}") from e


@contextlib.contextmanager
def _exporting(model: nn.Module, kind: str, arch: str) -> Iterator[None]:
    """Eval mode, no grad, exporter chatter silenced; any failure becomes one PosterError naming it."""
    with _EvalMode(model), torch.no_grad():
        try:
            with _quiet_export():
                yield
        except PosterError:
            raise
        except Exception as e:
            raise PosterError(f"{kind} export of {arch} failed: {type(e).__name__}: {e}") from e


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int | None = None, dynamic_batch: bool = True,
                input_size: int | None = None, *, meta: ModelMeta | None = None, exporter: str = "auto") -> Path:
    """Export ``model`` to a self-describing ONNX file at ``path`` (written atomically).

    Args:
        model: a POSTER model (float32).  It is exported in eval mode; its mode is restored after.
        path: target file; its folder is created.  Nothing is written there if the export fails.
        opset: ONNX opset (default ``DEFAULT_OPSET`` = 18, supported by onnxruntime >= 1.14).
        dynamic_batch: batch axis ``batch`` symbolic (True) or fixed to 1 (False).
        input_size: image side S; default ``meta.input.input_size`` (224 without metadata).
        meta: metadata to record; default ``model.meta``.
        exporter: ``"legacy"`` (TorchScript-based, fast), ``"dynamo"`` (torch.export-based, needs
            onnxscript) or ``"auto"`` (legacy while torch provides it, dynamo otherwise).

    The graph has input ``input`` [N,3,S,S] float32 and output ``logits`` [N,C]; the metadata is
    ``metadata_props['poster.meta']`` (``ModelMeta.to_dict()`` as JSON), read back by
    ``read_onnx_meta`` / ``poster.inference.runtime.OnnxBackend``.
    """
    onnx = _require_onnx()
    opset = _checked_opset(opset, exporter)
    _check_fp32(model)
    meta, size = _export_meta(model, meta, input_size)
    path = Path(path)

    with _exporting(model, "ONNX", meta.arch):
        data = _export_proto_bytes(model, _dummy_input(model, size, 2 if dynamic_batch else 1), opset,
                                   dynamic_batch, exporter)

    proto = onnx.load_from_string(data)
    del data  # the serialised graph can be large; keep one copy, not two
    _describe_proto(proto, meta, size)
    _check_proto(onnx, proto, meta)
    atomic_write_bytes(path, proto.SerializeToString())
    log.debug("wrote %s (%s, opset %d)", path, format_size(path.stat().st_size), opset)
    return path


def read_onnx_meta(path: str | os.PathLike) -> ModelMeta:
    """The ``ModelMeta`` stored in an ONNX file written by ``export_onnx`` (weights are not loaded)."""
    onnx = _require_onnx()
    path = Path(path)
    if not path.is_file():
        raise PosterError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise PosterError(f"{path}: not a readable ONNX file: {e}") from e
    return meta_from_props({p.key: p.value for p in proto.metadata_props}, str(path))


# ---------------------------------------------------------------------------------------------
# TorchScript


def export_torchscript(model: nn.Module, path: str | os.PathLike, input_size: int | None = None, *,
                       meta: ModelMeta | None = None) -> Path:
    """Trace ``model`` with ``torch.jit.trace`` and save it atomically, metadata in the extra files.

    The traced module takes [N,3,S,S] float32 (any N) and returns logits [N,C]; it runs without
    this package (``torch.jit.load``).  ``poster.inference.runtime.TorchScriptBackend`` reads the metadata back.
    """
    _check_fp32(model)
    meta, size = _export_meta(model, meta, input_size)
    path = Path(path)
    with _exporting(model, "TorchScript", meta.arch):
        traced = torch.jit.trace(model, (_dummy_input(model, size),), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_META_FILE: json.dumps(meta.to_dict())})
    atomic_write_bytes(path, buffer.getvalue())
    log.debug("wrote %s (%s)", path, format_size(path.stat().st_size))
    return path


# ---------------------------------------------------------------------------------------------
# Verification


def random_inputs(meta: ModelMeta, batch_size: int, seed: int = 0) -> torch.Tensor:
    """A batch like the eval transform makes: uniform [0,1] pixels, normalised with meta's mean/std."""
    g = torch.Generator().manual_seed(seed)
    s = int(meta.input.input_size)
    pixels = torch.rand(batch_size, 3, s, s, generator=g)
    mean = torch.tensor(meta.input.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.input.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def tolerance(reference: torch.Tensor) -> float:
    """Allowed max abs difference for logits ``reference``: ``RTOL * max(1, max|reference|)``."""
    return RTOL * max(1.0, float(reference.abs().max()))


def compare_with_torch(model: nn.Module, backend: Callable[[torch.Tensor], torch.Tensor], meta: ModelMeta,
                       batch_sizes: Sequence[int] = (1, 3), seed: int = 0, what: str = "export") -> float:
    """Max abs logit difference between ``model`` (fp32, eval) and ``backend`` over several batches.

    Raises ``PosterError`` when a batch's difference exceeds ``tolerance`` or shapes differ.
    """
    if not batch_sizes:
        raise PosterError("no batch sizes to verify")
    device = _model_device(model)
    worst = 0.0
    with _EvalMode(model), torch.no_grad():
        for i, n in enumerate(batch_sizes):
            if int(n) < 1:
                raise PosterError(f"batch sizes must be >= 1, got {n}")
            x = random_inputs(meta, int(n), seed + i)
            ref = model(x.to(device)).float().cpu()
            out = torch.as_tensor(backend(x)).float().cpu()
            if out.shape != ref.shape:
                raise PosterError(f"{what}: output shape {tuple(out.shape)} at batch {n}, PyTorch gives "
                                  f"{tuple(ref.shape)}")
            diff = float((out - ref).abs().max())
            tol = tolerance(ref)
            if not diff <= tol:  # also catches NaN
                raise PosterError(f"{what} disagrees with PyTorch at batch {n}: max |difference| {diff:.3g} > "
                                  f"tolerance {tol:.3g}")
            worst = max(worst, diff)
    return worst


def verify_onnx(model: nn.Module, path: str | os.PathLike, batch_sizes: Sequence[int] = (1, 3), seed: int = 0,
                threads: int | None = None) -> float:
    """Max abs logit difference, PyTorch vs onnxruntime (CPU), over ``batch_sizes`` random batches.

    Raises ``PosterError`` above ``1e-4 * max(1, max|logits|)`` (see ``tolerance``).
    """
    backend = OnnxBackend(path, providers=["CPUExecutionProvider"], threads=threads)
    return compare_with_torch(model, backend, backend.meta, batch_sizes, seed, what=f"ONNX file {path}")


def verify_torchscript(model: nn.Module, path: str | os.PathLike, batch_sizes: Sequence[int] = (1, 3),
                       seed: int = 0) -> float:
    """Like ``verify_onnx`` for a file written by ``export_torchscript``."""
    backend = TorchScriptBackend(path, device=_model_device(model))
    return compare_with_torch(model, backend, backend.meta, batch_sizes, seed, what=f"TorchScript file {path}")
