"""Inference backends: one calling convention for eager PyTorch, ONNX Runtime and TorchScript.

A backend is a callable ``backend(x) -> logits``: ``x`` is a float32 batch [B,3,S,S] already
preprocessed as ``backend.meta.input`` says (channel order, mean/std, size S), given as a torch
tensor (any device) or a numpy array; the result is a float32 CPU torch tensor [B,C].  Every
backend has ``.meta`` (``ModelMeta``), ``.runtime`` and ``.device``.

``load_backend(path, runtime="onnx")`` returns ``(backend, meta)`` for any of them;
:func:`open_backend` is what the commands use: it also sets how a PyTorch model runs (fast path,
precision policy, ``--eager``, ``--compile``) and says so in words.

Security: a checkpoint is data and is only ever read by the safe loader. A TorchScript file is a
*program* (its code runs when it is loaded and on every call, and can read and write files), so it
is never chosen automatically: it runs only when asked for by name (``runtime="torchscript"``,
``--runtime torchscript``, or :class:`TorchScriptBackend` itself); trust it as you would a script.
An ONNX file whose weights live in *external* files names paths that onnxruntime would open; such
files are refused unless ``allow_external_data=True``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..device import resolve_device
from ..errors import CheckpointError, PosterError, option
from ..meta import TORCHSCRIPT_META_FILE, ModelMeta, meta_from_props, model_meta

RUNTIMES = ("auto", "torch", "onnx", "torchscript")

_ORT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


def _check_batch(x: Any, input_size: int | None, where: str) -> None:
    shape = tuple(x.shape)
    if len(shape) != 4 or shape[1] != 3:
        raise PosterError(f"{where}: expected a batch [B,3,S,S], got shape {list(shape)}")
    if input_size is not None and (shape[2], shape[3]) != (input_size, input_size):
        raise PosterError(f"{where}: expected {input_size}x{input_size} inputs, got {shape[2]}x{shape[3]}")


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_tensor(x: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return x.to(device, torch.float32)


class OnnxBackend:
    """An ONNX file written by ``poster export`` run with onnxruntime.

    Args:
        path: the ``.onnx`` file; its ``poster.meta`` metadata becomes ``self.meta``.
        providers: onnxruntime execution providers (default ``["CPUExecutionProvider"]``).
        threads: intra-op threads (default: onnxruntime's choice, one per physical core).
        optimization: graph optimisation level ``all`` (default), ``extended``, ``basic``, ``disable``.
        spinning: let idle onnxruntime worker threads busy-wait for work (onnxruntime's default).
            Off by default: on a shared or small CPU, and in a process that also runs PyTorch (whose
            OpenMP threads spin too), spinning threads steal the cores the other threads need.
        allow_external_data: accept a file whose weights are stored in external files (it names
            paths that onnxruntime opens); off by default, ``poster export`` never writes such files.
    """

    runtime = "onnx"

    def __init__(self, path: str | os.PathLike, providers: Sequence[Any] | None = None, threads: int | None = None,
                 optimization: str = "all", spinning: bool = False, allow_external_data: bool = False):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise PosterError("the ONNX runtime needs onnxruntime: pip install 'poster-fer[onnx]'") from e

        self.path = Path(path)
        if not self.path.is_file():
            raise PosterError(f"ONNX file not found: {self.path}")
        if optimization not in _ORT_LEVELS:
            raise PosterError(f"unknown optimization level {optimization!r}; choose one of {', '.join(_ORT_LEVELS)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVELS[optimization])
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if not allow_external_data:
            _refuse_external_data(self.path)
        providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as e:
            raise PosterError(f"{self.path}: onnxruntime cannot load this file: {e}") from e
        self.meta: ModelMeta = meta_from_props(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        dims = list(inp.shape)
        self.fixed_batch = dims[0] if isinstance(dims[0], int) else None  # None: dynamic batch axis
        self.input_size = dims[2] if len(dims) == 4 and isinstance(dims[2], int) else self.meta.input.input_size
        self.providers = self.session.get_providers()
        self.device = torch.device("cuda" if "CUDAExecutionProvider" in self.providers else "cpu")

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        _check_batch(x, self.input_size, str(self.path))
        batch = _as_numpy(x)
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            if self.fixed_batch != 1:
                raise PosterError(f"{self.path} was exported for batches of exactly {self.fixed_batch}, "
                                  f"got {batch.shape[0]}")
            outs = [self.session.run([self.output_name], {self.input_name: batch[i:i + 1]})[0]
                    for i in range(batch.shape[0])]
            return torch.from_numpy(np.concatenate(outs, axis=0))
        return torch.from_numpy(self.session.run([self.output_name], {self.input_name: batch})[0])

    def __repr__(self) -> str:
        return f"OnnxBackend({str(self.path)!r}, providers={self.providers})"


def _refuse_external_data(path: Path) -> None:
    """Refuse ONNX files whose tensors point at other files (read without loading those files)."""
    try:
        import onnx
    except ImportError as e:
        raise PosterError("checking ONNX files needs the onnx package: pip install 'poster-fer[onnx]'") from e
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise PosterError(f"{path}: not a readable ONNX file: {str(e)[:300]}") from None
    external = [t.name for t in _onnx_tensors(proto) if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise PosterError(f"{path}: {len(external)} tensor(s) are stored in external files (e.g. {external[0]!r}); "
                          "refused: such a file makes onnxruntime open paths it names. Pass "
                          "allow_external_data=True only for a file you trust")


def _onnx_tensors(proto) -> Iterator[Any]:
    """Every initializer and constant tensor of the model, subgraphs included."""
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


class TorchBackend:
    """An eager PyTorch model (``model.meta`` required unless ``meta`` is given), run under inference mode."""

    runtime = "torch"

    def __init__(self, model: nn.Module, meta: ModelMeta | None = None):
        self.model = model.eval()
        self.meta: ModelMeta = model_meta(model, meta)
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        _check_batch(x, self.meta.input.input_size, self.meta.arch)
        with torch.inference_mode():
            return self.model(_as_tensor(x, self.device)).float().cpu()

    def __repr__(self) -> str:
        return f"TorchBackend({self.meta.arch}, device={self.device})"


class TorchScriptBackend:
    """A file written by ``export_torchscript`` (``torch.jit.load``), metadata from its extra files.

    A TorchScript file is a program: its code runs at load and at every call, with the rights of
    this process. Construct this only for files you trust like code; nothing in poster picks it on
    its own (``detect_runtime`` never answers ``torchscript``).
    """

    runtime = "torchscript"

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        self.path = Path(path)
        if not self.path.is_file():
            raise PosterError(f"TorchScript file not found: {self.path}")
        self.device = torch.device(device)
        extra = {TORCHSCRIPT_META_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit is deprecated
                self.module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra).eval()
        except Exception as e:
            raise PosterError(f"{self.path}: not a loadable TorchScript file: {e}") from e
        if not extra[TORCHSCRIPT_META_FILE]:
            raise PosterError(f"{self.path}: no {TORCHSCRIPT_META_FILE}: not written by poster export")
        try:
            self.meta: ModelMeta = ModelMeta.from_dict(json.loads(extra[TORCHSCRIPT_META_FILE]))
        except (ValueError, KeyError, TypeError) as e:
            raise PosterError(f"{self.path}: malformed {TORCHSCRIPT_META_FILE}: {e}") from e

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        _check_batch(x, self.meta.input.input_size, str(self.path))
        with torch.inference_mode():
            return self.module(_as_tensor(x, self.device)).float().cpu()

    def __repr__(self) -> str:
        return f"TorchScriptBackend({str(self.path)!r}, device={self.device})"


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``code/`` and ``constants.pkl``), read from the
    zip directory alone: nothing in it is loaded or run."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def detect_runtime(path: str | os.PathLike) -> str:
    """``onnx`` for ``*.onnx``, else ``torch`` (a checkpoint, read by the safe loader).

    Never ``torchscript``: a TorchScript file is code and runs only when asked for by name. A
    TorchScript file given as a checkpoint is refused by the safe loader, which says so.
    """
    return "onnx" if Path(path).suffix.lower() == ".onnx" else "torch"


def onnx_providers(device: str | torch.device) -> list[str]:
    """onnxruntime providers for ``device``: ``cpu``, ``cuda``/``cuda:N`` (an error if unavailable), ``auto``."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    dev = str(device)
    if dev == "auto":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available \
            else ["CPUExecutionProvider"]
    if dev.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise PosterError(f"device {dev}: this onnxruntime has no CUDA provider (available: {available}); "
                              f"install onnxruntime-gpu or use {option('device', 'cpu')}")
        index = int(dev.split(":")[1]) if ":" in dev else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    if dev == "cpu":
        return ["CPUExecutionProvider"]
    raise PosterError(f"device {dev!r} is not supported by the ONNX runtime (use cpu, cuda, cuda:N or auto)")


def load_backend(path_or_checkpoint: str | os.PathLike | nn.Module, runtime: str = "auto",
                 device: str | torch.device = "cpu", threads: int | None = None,
                 **load_options: Any) -> tuple[Any, ModelMeta]:
    """``(backend, meta)`` for a checkpoint / release name (``torch``), an ``.onnx`` file (``onnx``), a
    TorchScript file (``torchscript``) or an ``nn.Module`` with ``.meta``.

    ``runtime="auto"`` picks by the file (see ``detect_runtime``).  ``threads`` applies to onnxruntime
    only (PyTorch's thread count is process-wide: ``torch.set_num_threads``).  ``load_options``
    (``dataset``, ``channel_order``) go to ``poster.load_model`` for checkpoints.
    """
    if runtime not in RUNTIMES:
        raise PosterError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if isinstance(path_or_checkpoint, nn.Module):
        if runtime not in ("auto", "torch"):
            raise PosterError(f"a model object runs with the torch runtime, not {runtime}")
        backend = TorchBackend(path_or_checkpoint.to(device if str(device) != "auto" else "cpu"))
        return backend, backend.meta
    if runtime == "auto":
        runtime = detect_runtime(path_or_checkpoint)
    if runtime != "torch" and load_options:
        raise PosterError(f"{sorted(load_options)} only apply to checkpoints (runtime torch): the {runtime} "
                          "file carries its own metadata")
    if runtime == "onnx":
        backend = OnnxBackend(path_or_checkpoint, providers=onnx_providers(device), threads=threads)
    elif runtime == "torchscript":
        backend = TorchScriptBackend(path_or_checkpoint, device=resolve_device(device))
    else:
        from ..checkpoint.loading import load_model

        backend = TorchBackend(load_model(path_or_checkpoint, device=resolve_device(device), **load_options))
    return backend, backend.meta


# --------------------------------------------------------------------------- one way to open a model
_EXPORT_ENGINES = {"onnx": "ONNX Runtime", "torchscript": "TorchScript"}


@dataclass
class OpenedBackend:
    """What :func:`open_backend` made: ``backend(x) -> logits`` with the ``meta`` of its weights.

    ``runtime``: ``torch``, ``onnx`` or ``torchscript``.  ``precision``: what the backend computes in
    (``fp32``/``bf16``; exports are fp32).  ``description``: how it runs, in the words of the INFO
    lines and ``GET /v1/model`` (``"PyTorch bf16 fast path (112 BN folded, channels-last)"``,
    ``"PyTorch eager fp32"``, ``"ONNX Runtime"``).  ``model``: the PyTorch model as loaded (None for
    exports); ``fast``: its fast path (None when it runs as written).  ``source``: the name it was
    opened by."""

    backend: Callable[[Any], Any]
    meta: ModelMeta
    runtime: str
    precision: str
    description: str
    device: torch.device
    source: str
    model: nn.Module | None = None
    fast: Any = None


def open_backend(source: str | os.PathLike | nn.Module | None = None, *, runtime: str = "auto",
                 device: str | torch.device = "auto", precision: str = "auto", eager: bool = False,
                 compile: bool = False, trace: bool = False, purpose: str = "predict",
                 **load_options: Any) -> OpenedBackend:
    """The one way from a weights file, release name, export or model to a runnable backend, for
    ``predict``, ``serve``, ``test`` and ``Recognizer``.

    ``source``: a checkpoint or release name, an ``.onnx`` file, a TorchScript file (only with
    ``runtime="torchscript"``), an ``nn.Module`` with ``.meta``, or None for the bundled model.
    PyTorch models run their fast path (BN folded, channels-last, ``precision`` as
    ``poster.precision.resolve_precision`` reads it for ``purpose``) unless ``eager`` asks for the
    model exactly as written (fp32); ``compile`` adds ``torch.compile``; ``trace`` runs an fp32 CPU
    fast path as a traced graph where that is verified to give the same numbers
    (``accelerate.use_traced_graph``: a server's other threads no longer stall it at every op).
    ``load_options`` (``dataset``, ``channel_order``) go to ``poster.load_model``.
    """
    from ..precision import resolve_precision
    from .accelerate import describe_inference, prepare_inference, use_traced_graph

    if runtime not in RUNTIMES:
        raise PosterError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if source is None:
        from ..checkpoint.releases import bundled_model_path

        source = str(bundled_model_path())
    if runtime == "auto":
        runtime = "torch" if isinstance(source, nn.Module) else detect_runtime(source)
    name = str(getattr(getattr(source, "meta", None), "source", "") or type(source).__name__) \
        if isinstance(source, nn.Module) else str(source)
    if runtime != "torch":
        if precision != "auto" or eager or compile:
            raise PosterError(f"{option('precision')}, {option('eager')} and {option('compile')} apply to the "
                              f"PyTorch runtime, not {runtime}")
        backend, meta = load_backend(source, runtime, device=device, **load_options)
        return OpenedBackend(backend, meta, runtime, "fp32", _EXPORT_ENGINES[runtime], backend.device, name)
    if eager and precision == "bf16":
        raise PosterError(f"{option('eager')} runs the model as written in fp32; it cannot be combined with "
                          f"{option('precision', 'bf16')}")
    if eager and compile:
        raise PosterError(f"{option('eager')} runs the model as written; it cannot be combined with {option('compile')}")
    device = resolve_device(device)
    if isinstance(source, nn.Module):
        if not isinstance(getattr(source, "meta", None), ModelMeta):
            raise CheckpointError("the model has no .meta (class names, channel order, normalisation): load it "
                                  "with poster.load_model, or give a backend and its meta to Recognizer(backend, meta)")
        model = source.to(device).eval()
    else:
        from ..checkpoint.loading import load_model

        model = load_model(source, device=device, **load_options)
    meta = model_meta(model)
    if eager:
        return OpenedBackend(TorchBackend(model, meta), meta, "torch", "fp32", "PyTorch " + describe_inference(None),
                             device, name, model=model)
    resolved = resolve_precision(precision, device, purpose)
    fast = prepare_inference(model, device, resolved, channels_last=True, compile=compile, warmup_batch_sizes=())
    if trace:
        use_traced_graph(fast, meta.input.input_size)
    return OpenedBackend(fast, meta, "torch", resolved, "PyTorch " + describe_inference(fast), device, name,
                         model=model, fast=fast)
