"""Weight-file formats: recognise them, read them safely, and write them.

Recognised (all read through ``safe_load.read_checkpoint``, never a free unpickle):

* ours: ``{'format': 'poster-fer', 'format_version', 'meta', 'state_dict', ...}``;
* official V1 training checkpoint: ``{'iter', 'model_state_dict', 'optimizer_state_dict'}``;
* official V2 checkpoint: ``{'epoch', 'state_dict', 'best_acc', 'optimizer', 'recorder', 'recorder1'}``;
* a plain state dict (with or without the DataParallel ``module.`` prefix);
* backbone files: MobileFaceNet ``{'state_dict': ...}`` and a face.evoLVe IR-50 state dict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError
from ..fileio import atomic_torch_save
from ..meta import ModelMeta
from .safe_load import read_checkpoint

FORMAT_TAG = "poster-fer"
FORMAT_VERSION = 1


@dataclass
class WeightFile:
    """What a weights file holds once recognised: a prefix-free state dict and what we know of it."""

    path: str
    kind: str  # "poster", "official_v1", "official_v2", "state_dict", "landmark"
    state_dict: dict[str, torch.Tensor]
    meta: ModelMeta | None = None
    info: dict[str, Any] = field(default_factory=dict)  # epoch, best_acc, training state, ...


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the DataParallel/DDP ``module.`` prefix when every key has it."""
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _tensor_dict(obj: Any, path: str, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: {what} is not a non-empty dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {what} has {len(bad)} entries that are not tensors, e.g. {bad[:3]}")
    return strip_module_prefix(obj)


def _looks_like_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_weight_file(path: str | os.PathLike, map_location: Any = "cpu") -> WeightFile:
    """Read any supported weights file and say what it is."""
    path = str(path)
    obj = read_checkpoint(path, map_location=map_location)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_TAG:
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"{path}: poster checkpoint format version {version!r} is not supported "
                                  f"(this version reads <= {FORMAT_VERSION}); upgrade poster-fer")
        try:
            meta = ModelMeta.from_dict(obj["meta"])
        except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as e:
            raise CheckpointError(f"{path}: damaged metadata in poster checkpoint: {str(e)[:300]}") from None
        info = {k: v for k, v in obj.items() if k not in ("format", "format_version", "meta", "state_dict")}
        return WeightFile(path, "poster", _tensor_dict(obj.get("state_dict"), path, "'state_dict'"), meta, info)
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        info = {"epoch": obj.get("iter")}
        return WeightFile(path, "official_v1", _tensor_dict(obj["model_state_dict"], path, "'model_state_dict'"),
                          info=info)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        sd = obj["state_dict"]
        if isinstance(sd, Mapping) and "state" in sd and "param_groups" in sd:
            raise CheckpointError(
                f"{path}: holds only an optimizer state, no model weights (the original POSTER V2 "
                "save_checkpoint wrote the optimizer to '*model_best.pth'); use the per-epoch checkpoint")
        sd = _tensor_dict(sd, path, "'state_dict'")
        best = obj.get("best_acc")
        info = {"epoch": obj.get("epoch"),
                "best_acc": float(best) if isinstance(best, (torch.Tensor, int, float)) else None}
        kind = "landmark" if "conv_6_sep.conv.weight" in sd else "official_v2"
        return WeightFile(path, kind, sd, info=info)
    if _looks_like_state_dict(obj):
        return WeightFile(path, "state_dict", strip_module_prefix(obj))
    what = type(obj).__name__
    keys = list(obj)[:8] if isinstance(obj, Mapping) else []
    raise CheckpointError(f"{path}: not a recognised weights file (top level is a {what}"
                          + (f" with keys {keys}" if keys else "") + ")")


def _cpu_state(model: torch.nn.Module, prefix: str = "", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A contiguous CPU copy of the state dict (channels-last training leaves NHWC strides);
    ``dtype`` casts the floating-point entries (e.g. float16 to halve a shipped file)."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
        out[prefix + k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    return out


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, meta: ModelMeta,
                    dtype: torch.dtype | None = None, **extra: Any) -> Path:
    """Write our format atomically: weights (on CPU) + metadata + optional extra entries.

    ``dtype``: store floating-point weights in this type (``torch.float16`` halves the file;
    loading casts them back to the model's float32).  ``extra`` must itself be
    ``weights_only``-loadable (tensors, numbers, strings, lists, dicts).
    """
    state = _cpu_state(model, dtype=dtype)
    obj = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION, "meta": meta.to_dict(), "state_dict": state}
    clash = set(extra) & set(obj)
    if clash:
        raise ValueError(f"extra entries {sorted(clash)} would overwrite the checkpoint's own")
    obj.update(extra)
    return atomic_torch_save(obj, path)


def export_official(path: str | os.PathLike, model: torch.nn.Module, flavor: str) -> Path:
    """Write the original code's format, ``module.``-prefixed as DataParallel saved it.

    ``flavor='v1'``: ``{'iter', 'model_state_dict', 'optimizer_state_dict'}`` (read by ``test.py``).
    ``flavor='v2'``: ``{'epoch', 'state_dict', 'best_acc', 'optimizer'}`` (read by ``main.py --evaluate``;
    the pickled recorder objects are left out on purpose: they are not needed and not safe to read).
    """
    state = _cpu_state(model, prefix="module.")
    if flavor == "v1":
        obj = {"iter": 0, "model_state_dict": state, "optimizer_state_dict": {}}
    elif flavor == "v2":
        obj = {"epoch": 0, "state_dict": state, "best_acc": torch.tensor(0.0), "optimizer": {}}
    else:
        raise ValueError(f"flavor must be 'v1' or 'v2', got {flavor!r}")
    return atomic_torch_save(obj, path)
